package control

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/deadletter"
)

// DiscardDeadLetters marks parked dead letters discarded (of projection,
// or of every projection when it is empty; the listed ids, or all when
// none: deadletter.Discard) in a transaction that first locks the
// checkpoints of the projections concerned, projection by projection in
// name order and each in segment order, as every other writer of dead
// letters does before it touches one (a batch, a retry, a repair, a reset,
// a scale, a switch). A discard therefore waits for a batch in flight of
// those projections instead of deadlocking with it: a batch that reads
// parked events again (a reset moved its cursor back) parks them again in
// log order, locking their dead letters, and a repair marks them one
// aggregate type at a time, while a discard's UPDATE locks them in the
// order its scan meets them (TestDiscardWhileABatchReparks,
// TestDiscardWhileARepairWorks).
func DiscardDeadLetters(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, projection string, ids []int64) (int, error) {
	var n int
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		names := []string{projection}
		if projection == "" {
			regs, err := checkpoint.Registry(ctx, tx)
			if err != nil {
				return err
			}
			names = names[:0]
			for _, r := range regs {
				names = append(names, r.Name)
			}
		}
		for _, name := range names {
			if _, err := checkpoint.LockForOperation(ctx, tx, name); err != nil {
				return err
			}
		}
		var err error
		n, err = deadletter.Discard(ctx, tx, projection, ids)
		return err
	})
	return n, err
}
