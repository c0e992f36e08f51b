package control

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/readside/readside/outbox"
)

// PruneOutboxArgs prunes outbox rows that every projection (and every
// rebuild in progress) has passed and that are older than the retention.
// Pruned history stays replayable: readers read it from the events table up
// to the recorded horizon.
type PruneOutboxArgs struct{}

// Kind implements river.JobArgs.
func (PruneOutboxArgs) Kind() string { return "readside_prune_outbox" }

// InsertOpts implements river.JobArgsWithInsertOpts: at most one queued.
func (PruneOutboxArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: Queue, UniqueOpts: uniqueByProjection()}
}

type pruneWorker struct {
	river.WorkerDefaults[PruneOutboxArgs]
	c *Control
}

func (w *pruneWorker) Work(ctx context.Context, _ *river.Job[PruneOutboxArgs]) error {
	n, h, err := PruneOutbox(ctx, w.c.db, w.c.cfg.Retention)
	if err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	w.c.log.Info("control: outbox pruned", "rows", n, "horizon", h.String())
	// Reclaim the space now rather than relying on autovacuum (which may be
	// off or slow to reach a small, hot table): the outbox stays the size of
	// what is in flight, and its index stays shallow.
	if _, err := w.c.db.Exec(ctx, `VACUUM (SKIP_LOCKED) readside.outbox, readside.outbox_horizon`); err != nil {
		w.c.log.Warn("control: VACUUM outbox failed; relying on autovacuum", "err", err)
	}
	return nil
}

// PruneOutbox deletes, in chunks of pruneChunk rows (one transaction each,
// which also records the new horizon), the outbox rows at or below every
// checkpoint and older than retention (negative: no age limit), and inside
// the read window (below every event writer still running). A paused or
// stuck projection holds pruning back. It returns the rows deleted and the
// horizon.
func PruneOutbox(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, retention time.Duration) (int64, outbox.Cursor, error) {
	var total int64
	var horizon outbox.Cursor
	for {
		var n int64
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			var limit outbox.Cursor
			err := tx.QueryRow(ctx, `SELECT cursor_txid, cursor_position FROM readside.checkpoints
				ORDER BY cursor_txid, cursor_position LIMIT 1`).Scan(&limit.TxID, &limit.Position)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil // no projection registered: nothing is known to be passed
			}
			if err != nil {
				return err
			}
			var last outbox.Cursor
			n, last, err = outbox.PruneChunk(ctx, tx, limit, pruneChunk, retention)
			if err != nil || n == 0 {
				return err
			}
			horizon = last
			return nil
		})
		if err != nil {
			return total, horizon, fmt.Errorf("prune outbox: %w", err)
		}
		if n == 0 {
			return total, horizon, nil
		}
		total += n
		if n < pruneChunk {
			return total, horizon, nil
		}
	}
}
