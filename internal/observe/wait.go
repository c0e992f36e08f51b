package observe

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/printable"
	"github.com/readside/readside/outbox"
)

// Polling of WaitFor: short at first, since a projector that is keeping up
// applies a write within milliseconds, then backing off so that many waiting
// requests do not hammer the checkpoints table.
const (
	waitPollMin = 5 * time.Millisecond
	waitPollMax = 50 * time.Millisecond
)

// NotCaughtUpError is returned by WaitFor when ctx ends before every
// projection has passed the token. It names the first projection, in the
// order given, that has not.
type NotCaughtUpError struct {
	Token      outbox.Cursor
	Projection string
	// Registered is false when no projector has ever run the projection:
	// it has no checkpoints to wait on.
	Registered bool
	// Behind are the projection's segments whose cursor is before Token.
	Behind []SegmentLag
	// Uncommitted is true when the token's transaction had not committed
	// yet when the wait ended: a token is for after its transaction
	// commits (a writer that waits for its own write before committing
	// waits for ever).
	Uncommitted bool
	// Err is why the wait ended: ctx.Err(), or the database error of the
	// last poll.
	Err error
}

// SegmentLag is a segment that has not passed the token.
type SegmentLag struct {
	Segment   int
	Cursor    outbox.Cursor
	Status    checkpoint.Status
	LastError string
}

// Status is the worst status among the lagging segments (failed, then
// paused, then running), or "unregistered".
func (e *NotCaughtUpError) Status() string {
	if !e.Registered {
		return "unregistered"
	}
	worst := checkpoint.Running
	for _, s := range e.Behind {
		switch {
		case s.Status == checkpoint.Failed:
			worst = checkpoint.Failed
		case s.Status == checkpoint.Paused && worst == checkpoint.Running:
			worst = checkpoint.Paused
		}
	}
	return string(worst)
}

// Stuck reports whether the projection will not catch up on its own: it is
// not registered, or a lagging segment is paused or failed and needs an
// operator.
func (e *NotCaughtUpError) Stuck() bool { return e.Status() != string(checkpoint.Running) }

func (e *NotCaughtUpError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "projection %s has not caught up with consistency token %s", e.Projection, e.Token)
	sep := ": "
	if e.Uncommitted {
		b.WriteString(sep + "the transaction that wrote it has not committed (a token is for after the commit: a writer that waits for its own write before committing waits for ever)")
		sep = "; "
	}
	if !e.Registered {
		b.WriteString(sep + "it is not registered (no projector has run it yet), so it will not catch up until one does")
		return b.String()
	}
	for _, s := range e.Behind {
		b.WriteString(sep)
		sep = "; "
		fmt.Fprintf(&b, "segment %d is at %s, %s", s.Segment, s.Cursor, s.Status)
		switch s.Status {
		case checkpoint.Paused:
			b.WriteString(" (it will not catch up until resumed)")
		case checkpoint.Failed:
			fmt.Fprintf(&b, " (halted by a failing event, it will not catch up until an operator resumes it: %s)", printable.Cap(s.LastError, 200))
		}
	}
	return b.String()
}

func (e *NotCaughtUpError) Unwrap() error { return e.Err }

// lagSQL lists, for each projection in $1, the segments that have not
// passed the token ($2, $3), plus one row with a NULL segment for a
// projection that is not registered. No rows: every projection has passed
// the token. A segment has passed it when its cursor is at or after the
// token, or when it would be had it read up to the token: the read window
// has passed the token (every transaction that may write events below it
// has ended, readside_read_bound) and none of the segment's own buckets
// (migration 016: b % segments = segment; every bucket when the count does
// not divide 64) holds a row between its cursor and the token. Workers run
// a segment when a notification names one of its buckets, and the others
// only at the poll, so most segments of a projection stand behind the
// head with nothing of their own to read. (A cursor behind the pruning
// horizon is not passed that way: the rows after it are in the events
// table.)
// segmentBucketsSQL is the array of the outbox buckets segment c.segment
// of projection p reads (outbox.SegmentBuckets): b % segments = segment,
// every bucket when the count does not divide 64.
const segmentBucketsSQL = `ARRAY(SELECT b::smallint FROM generate_series(0, 63) b
                                WHERE 64 % p.segments <> 0 OR b % p.segments = c.segment)`

const lagSQL = `
SELECT n.name, p.name IS NOT NULL, c.segment, c.cursor_txid, c.cursor_position, c.status, coalesce(c.last_error, '')
  FROM unnest($1::text[]) WITH ORDINALITY AS n (name, ord)
  LEFT JOIN readside.projections p ON p.name = n.name
  LEFT JOIN readside.checkpoints c ON c.projection = n.name
        AND (c.cursor_txid, c.cursor_position) < ($2::xid8, $3::bigint)
        AND NOT ($2::xid8 < (SELECT readside.readside_read_bound(pg_current_snapshot()))
             AND NOT EXISTS (SELECT 1 FROM readside.outbox_horizon h
                              WHERE (h.txid, h.position) > (c.cursor_txid, c.cursor_position))
             AND NOT EXISTS (SELECT 1 FROM readside.outbox o
                              WHERE o.bucket = ANY (` + segmentBucketsSQL + `)
                                AND (o.txid, o.position) > (c.cursor_txid, c.cursor_position)
                                AND (o.txid, o.position) <= ($2::xid8, $3::bigint)))
 WHERE p.name IS NULL OR c.segment IS NOT NULL
 ORDER BY n.ord, c.segment`

// ErrTokenBeyondHead is WaitFor refusing a token that no write of the
// database can have been given: its transaction id has not been assigned
// yet (a forged token, or one from another cluster).
var ErrTokenBeyondHead = errors.New("beyond the log's head: no write of this database was given it")

// ErrTokenRolledBack is WaitFor refusing a token whose transaction rolled
// back: the write it was given for never happened, and no projection will
// ever apply it.
var ErrTokenRolledBack = errors.New("from a transaction that rolled back: the write it was given for never happened")

// headSQL tells whether a transaction id is one not assigned yet (at or
// above the xmax of a current snapshot) and, when it is not, its
// transaction's status.
const headSQL = `SELECT $1::xid8 >= pg_snapshot_xmax(pg_current_snapshot()),
       CASE WHEN $1::xid8 < pg_snapshot_xmax(pg_current_snapshot()) THEN ` + statusSQL + ` END`

// statusSQL is the status of the transaction whose id is $1: in progress,
// committed or aborted; NULL when it is too old to tell (committed or
// aborted long ago: the wait then goes by the checkpoints alone) or
// invalid.
const statusSQL = `pg_xact_status($1::xid8)`

// inProgress is statusSQL's status of a transaction not ended yet.
const inProgress = "in progress"

// txStatus is the status of the token's transaction (statusSQL).
func txStatus(ctx context.Context, db outbox.Querier, token outbox.Cursor) (string, error) {
	var status *string
	err := db.QueryRow(ctx, `SELECT `+statusSQL, token.TxID).Scan(&status)
	if status == nil {
		return "", err
	}
	return *status, err
}

// lockSQL tells whether the transaction whose id is $1 is open: every
// transaction that has an id holds the lock on it until it ends. The lock
// names the 32-bit xid, without the epoch: only ids within 2^31 of the
// snapshot's xmax can be running, and among those the low 32 bits are
// unique (a token one epoch ahead of an open transaction is no
// transaction's).
const lockSQL = `SELECT $1::xid8::text::numeric < pg_snapshot_xmax(pg_current_snapshot())::text::numeric + 2147483648
                  AND EXISTS (SELECT 1 FROM pg_catalog.pg_locks
                 WHERE locktype = 'transactionid' AND transactionid = pg_catalog.xid($1::xid8))`

// assigned looks again at a token that headSQL found at or above the
// snapshot's xmax: it returns inProgress when its transaction holds its
// lock, "" when no transaction has ever had that id, and otherwise
// (ended between the two looks) the status it ended with.
func assigned(ctx context.Context, db outbox.Querier, token outbox.Cursor) (string, error) {
	var open bool
	if err := db.QueryRow(ctx, lockSQL, token.TxID).Scan(&open); err != nil || open {
		return inProgress, err
	}
	// Not open after the first look: either it has ended since, and a
	// new snapshot's xmax is past it, or it never was.
	var beyond bool
	var status *string
	if err := db.QueryRow(ctx, headSQL, token.TxID).Scan(&beyond, &status); err != nil || beyond || status == nil {
		return "", err
	}
	return *status, nil
}

// rolledBack is the error for a token whose transaction rolled back.
func rolledBack(token outbox.Cursor) error {
	return fmt.Errorf("consistency token %s is %w", token, ErrTokenRolledBack)
}

// WaitFor returns nil once every segment of each named projection has
// passed token (see lagSQL: its checkpoint is at or after the token, or it
// has no row of its own before the token), which means the write the token
// was issued for has been applied to their read models (or parked as a
// dead letter).
// It polls until ctx ends, then returns a *NotCaughtUpError; ctx bounds the
// wait. A projection being reset and replayed has moved its cursor back, so
// tokens wait for the replay to pass them again rather than read a half-built
// model. A token beyond the log's head, or of a transaction that rolled
// back, is refused at once with an error wrapping ErrTokenBeyondHead or
// ErrTokenRolledBack: no wait would ever see it passed. A token of a
// transaction still open is waited for until that transaction ends (the
// NotCaughtUpError of a wait that ends first says Uncommitted).
func WaitFor(ctx context.Context, db outbox.Querier, token outbox.Cursor, projections ...string) error {
	if len(projections) == 0 {
		return nil
	}
	var beyond bool
	var status *string
	if err := db.QueryRow(ctx, headSQL, token.TxID).Scan(&beyond, &status); err != nil {
		if ctx.Err() != nil {
			return notCaughtUp(nil, token, projections[0], ctx.Err())
		}
		return fmt.Errorf("wait for %s: %w", strings.Join(projections, ", "), err)
	}
	if beyond {
		// Not completed when the snapshot was taken: a transaction still
		// open (newer than every one that has ended), or no transaction.
		st, err := assigned(ctx, db, token)
		if err != nil {
			if ctx.Err() != nil {
				return notCaughtUp(nil, token, projections[0], ctx.Err())
			}
			return fmt.Errorf("wait for %s: %w", strings.Join(projections, ", "), err)
		}
		if st == "" {
			return fmt.Errorf("consistency token %s is %w", token, ErrTokenBeyondHead)
		}
		status = &st
	}
	if status != nil && *status == "aborted" {
		return rolledBack(token)
	}
	// A token read before its transaction committed: the wait passes only
	// once it has ended (the read window stops at it; a write rolled back
	// to a savepoint no longer holds the window, so the status decides),
	// and then it asks how, since a rollback leaves nothing for any
	// projection to read.
	open := status != nil && *status == inProgress
	// passed reports whether the wait is over once the projections have
	// passed the token: the poll saw them passed, so one more bounded
	// look, even after ctx has ended.
	passed := func() (bool, error) {
		if !open {
			return true, nil
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		status, err := txStatus(sctx, db, token)
		switch {
		case err != nil:
			return true, fmt.Errorf("wait for %s: %w", strings.Join(projections, ", "), err)
		case status == "aborted":
			return true, rolledBack(token)
		case status == inProgress:
			// Passed by the read window while still open: its write was
			// rolled back to a savepoint (its registration with it).
			// Wait for the transaction itself.
			return false, nil
		}
		return true, nil
	}
	var last *NotCaughtUpError
	// When the wait ends before any poll finished (a busy server), one
	// more, briefly, says why rather than a guess.
	final := func(cause error) error {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		if last == nil {
			lag, err := lagging(fctx, db, token, projections)
			if err == nil && lag == nil {
				if done, err := passed(); done {
					return err // caught up after all
				}
			}
			last = lag
		}
		if open {
			switch status, err := txStatus(fctx, db, token); {
			case err == nil && status == "aborted":
				return rolledBack(token)
			case err == nil && status == inProgress:
				if last == nil {
					last = &NotCaughtUpError{Token: token, Projection: projections[0], Registered: true}
				}
				last.Uncommitted = true
			}
		}
		return notCaughtUp(last, token, projections[0], cause)
	}
	interval := waitPollMin
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return final(ctx.Err())
		case <-timer.C:
		}
		lag, err := lagging(ctx, db, token, projections)
		switch {
		case err != nil && ctx.Err() != nil:
			return final(ctx.Err())
		case err != nil:
			return fmt.Errorf("wait for %s: %w", strings.Join(projections, ", "), err)
		case lag == nil:
			if done, err := passed(); done {
				return err
			}
			lag = &NotCaughtUpError{Token: token, Projection: projections[0], Registered: true}
		}
		last = lag
		timer.Reset(interval)
		interval = min(2*interval, waitPollMax)
	}
}

// notCaughtUp is the error at the end of the wait: what the last poll saw,
// or, if none finished, the first projection with nothing known about it.
func notCaughtUp(last *NotCaughtUpError, token outbox.Cursor, first string, cause error) error {
	if last == nil {
		last = &NotCaughtUpError{Token: token, Projection: first, Registered: true}
	}
	last.Err = cause
	return last
}

// lagging returns the first projection that has not passed token, or nil.
func lagging(ctx context.Context, db outbox.Querier, token outbox.Cursor, projections []string) (*NotCaughtUpError, error) {
	rows, err := db.Query(ctx, lagSQL, projections, token.TxID, token.Position)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var lag *NotCaughtUpError
	for rows.Next() {
		var (
			name       string
			registered bool
			segment    *int32
			txid       *uint64
			position   *int64
			status     *string
			lastError  string
		)
		if err := rows.Scan(&name, &registered, &segment, &txid, &position, &status, &lastError); err != nil {
			return nil, err
		}
		if lag == nil {
			lag = &NotCaughtUpError{Token: token, Projection: name, Registered: registered}
		}
		if name != lag.Projection || segment == nil {
			continue // only the first lagging projection is reported
		}
		lag.Behind = append(lag.Behind, SegmentLag{
			Segment:   int(*segment),
			Cursor:    outbox.Cursor{TxID: *txid, Position: *position},
			Status:    checkpoint.Status(*status),
			LastError: lastError,
		})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return lag, nil
}
