package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrXIDRegression means the cluster's transaction ids are below ids already
// stored in the outbox or in checkpoints: the database was dump/restored into
// a new cluster. New rows would sort before old checkpoints and never be
// read, so readers refuse to run.
var ErrXIDRegression = errors.New("transaction id regression")

// CheckXIDs returns an error wrapping ErrXIDRegression when the cluster's
// next transaction id is not above every txid stored in the outbox and the
// checkpoints, and above the read fence (which refuses every writer below
// it).
func CheckXIDs(ctx context.Context, q Querier) error {
	var next, stored uint64
	// The fence is an xmax readers saw: it may equal the next xid, so the
	// last xid it fences off is fence - 1.
	err := q.QueryRow(ctx, `
SELECT pg_snapshot_xmax(pg_current_snapshot()),
       greatest(
         (SELECT coalesce(max(txid), '0') FROM readside.outbox),
         (SELECT coalesce(max(cursor_txid), '0') FROM readside.checkpoints),
         (SELECT coalesce(max(txid), '0') FROM readside.outbox_horizon),
         (SELECT greatest(coalesce(pg_sequence_last_value('readside.read_fence'), 0) - 1, 0)::text::xid8))`).Scan(&next, &stored)
	if err != nil {
		return fmt.Errorf("check xids: %w", err)
	}
	if stored >= next {
		return fmt.Errorf("%w: this cluster's next transaction id is %d but txid %d is already stored; "+
			"the database was probably restored into a new cluster. Re-point the checkpoints "+
			"(projector reset --to-start) after moving the xid counter past %d (pg_resetwal -x), or rebuild",
			ErrXIDRegression, next, stored, stored)
	}
	return nil
}

// ErrBeyondHead means a cursor lies past the last row of the log.
var ErrBeyondHead = errors.New("cursor beyond the head of the log")

// ClampToWindow returns where a checkpoint may be moved to go to c: c
// itself inside the read window, or the end of the window (Head.Window)
// when c lies past it, that is at or after a transaction that was still
// running: a checkpoint there would put that transaction's rows behind it
// for good once it commits. A cursor past the last committed row (the
// head) returns an error wrapping ErrBeyondHead. Call it in the transaction
// that moves the checkpoint: the window only moves forward, so the result
// stays safe until the commit.
func ClampToWindow(ctx context.Context, q Querier, c Cursor) (Cursor, error) {
	h, err := ReadHead(ctx, q)
	if err != nil {
		return c, err
	}
	if h.Latest.Less(c) {
		return c, fmt.Errorf("%w: %s is past the last event, %s", ErrBeyondHead, c, h.Latest)
	}
	if h.Window.Less(c) {
		return h.Window, nil
	}
	return c, nil
}

// Holder is the oldest event-writing transaction of the database: until it
// ends, no row from a newer transaction is read. Only transactions the
// events trigger registered (they inserted an event, or called
// readside_register()) hold the window; others are never named.
type Holder struct {
	PID      int // 0 for a prepared transaction
	Database string
	TxID     uint64
	// Age is how long the transaction has been open (prepared: since its
	// PREPARE); 0 when AgeUnknown.
	Age time.Duration
	// AgeUnknown means pg_stat_activity hides the transaction's start,
	// state and query from this role: it belongs to another role, and this
	// one lacks pg_read_all_stats (or pg_monitor, which includes it).
	AgeUnknown bool
	State      string
	Query      string // truncated
	Prepared   bool   // a prepared (two-phase) transaction
}

// WindowHolder returns the oldest registered event-writing transaction of
// this database, or nil when there is none. Callers show it when lag grows
// while the outbox has rows waiting. Registrations are read from pg_locks,
// which any role may read; the age, state and query come from
// pg_stat_activity, which shows other roles' sessions only to members of
// pg_read_all_stats (AgeUnknown otherwise).
func WindowHolder(ctx context.Context, q Querier) (*Holder, error) {
	var h Holder
	var ageSeconds *float64
	err := q.QueryRow(ctx, `
SELECT coalesce(w.pid, 0), current_database(), w.txid::text::bigint,
       extract(epoch FROM clock_timestamp() - CASE WHEN w.prepared THEN p.prepared ELSE a.xact_start END)::float8,
       CASE WHEN w.prepared THEN 'prepared' ELSE coalesce(a.state, '') END,
       left(coalesce(CASE WHEN w.prepared THEN p.gid ELSE a.query END, ''), 200), w.prepared
  FROM readside.readside_event_writers() w
  LEFT JOIN pg_stat_activity a ON NOT w.prepared AND a.pid = w.pid
  LEFT JOIN pg_prepared_xacts p ON w.prepared AND p.transaction::text::bigint = w.txid::text::bigint % 4294967296
 ORDER BY w.txid LIMIT 1`).Scan(&h.PID, &h.Database, &h.TxID, &ageSeconds, &h.State, &h.Query, &h.Prepared)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("window holder: %w", err)
	}
	if ageSeconds == nil {
		h.AgeUnknown, h.State, h.Query = true, "", ""
	} else {
		// (A transaction that began after this statement: not negative.)
		h.Age = time.Duration(max(*ageSeconds, 0) * float64(time.Second))
	}
	return &h, nil
}
