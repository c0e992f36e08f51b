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
// checkpoints.
func CheckXIDs(ctx context.Context, q Querier) error {
	var next, stored uint64
	err := q.QueryRow(ctx, `
SELECT pg_snapshot_xmax(pg_current_snapshot()),
       greatest(
         (SELECT coalesce(max(txid), '0') FROM readside.outbox),
         (SELECT coalesce(max(cursor_txid), '0') FROM readside.checkpoints),
         (SELECT coalesce(max(txid), '0') FROM readside.outbox_horizon))`).Scan(&next, &stored)
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

// Holder is the oldest transaction holding the read window back: until it
// ends, no row from a newer transaction is read.
type Holder struct {
	PID      int
	Database string
	TxID     uint64
	Age      time.Duration // since the transaction started
	State    string
	Query    string // truncated
	Prepared bool   // a prepared (two-phase) transaction
}

// WindowHolder returns the oldest in-progress transaction with an xid, in
// any database of the cluster, or nil when there is none. Callers show it
// when lag grows while the outbox has rows waiting.
func WindowHolder(ctx context.Context, q Querier) (*Holder, error) {
	var h Holder
	var ageSeconds float64
	// backend_xid is the 32-bit xid; age() orders them correctly across
	// wraparound. Only transactions that have an xid hold the window.
	err := q.QueryRow(ctx, `
SELECT pid, database, txid, extract(epoch FROM now() - started)::float8, state, query, prepared FROM (
    SELECT a.pid, coalesce(a.datname, '') AS database, a.backend_xid::text::bigint AS txid,
           coalesce(a.xact_start, now()) AS started, coalesce(a.state, '') AS state,
           left(coalesce(a.query, ''), 200) AS query, false AS prepared, age(a.backend_xid) AS xid_age
      FROM pg_stat_activity a
     WHERE a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid()
    UNION ALL
    SELECT 0, p.database, p.transaction::text::bigint, p.prepared, 'prepared', p.gid, true, age(p.transaction)
      FROM pg_prepared_xacts p
) t ORDER BY xid_age DESC LIMIT 1`).Scan(&h.PID, &h.Database, &h.TxID, &ageSeconds, &h.State, &h.Query, &h.Prepared)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("window holder: %w", err)
	}
	h.Age = time.Duration(ageSeconds * float64(time.Second))
	return &h, nil
}
