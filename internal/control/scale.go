package control

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/deadletter"
)

// ScaleArgs changes a projection's segment count without a replay (see
// ScaleCheckpoints).
type ScaleArgs struct {
	Projection string `json:"projection" river:"unique"`
	Segments   int    `json:"segments"`
}

// Kind implements river.JobArgs.
func (ScaleArgs) Kind() string { return "readside_scale" }

// InsertOpts implements river.JobArgsWithInsertOpts: one scale per
// projection at a time.
func (ScaleArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: Queue, UniqueOpts: uniqueByProjection()}
}

// ErrScaleSplit refuses a segment count a projection cannot be scaled from
// or to.
var ErrScaleSplit = checkpoint.ErrScaleSplit

type scaleWorker struct {
	river.WorkerDefaults[ScaleArgs]
	c *Control
}

func (w *scaleWorker) Work(ctx context.Context, job *river.Job[ScaleArgs]) error {
	res, err := ScaleCheckpoints(ctx, w.c.db, job.Args.Projection, job.Args.Segments)
	if errors.Is(err, ErrRebuildRunning) || errors.Is(err, checkpoint.ErrUnknownProjection) || errors.Is(err, ErrScaleSplit) {
		return river.JobCancel(err)
	}
	if err != nil {
		return err
	}
	w.c.log.Info("control: projection scaled", "projection", job.Args.Projection, "from", res.From, "to", res.To, "job", job.ID)
	return nil
}

// CheckScale refuses, without changing anything, a scale the fleet would
// refuse: of a projection not registered or being rebuilt, or from or to a
// segment count that does not divide 64.
func CheckScale(ctx context.Context, db checkpoint.DB, name string, segments int) error {
	if !checkpoint.CanScale(segments) {
		return fmt.Errorf("scale %s to %d: %w", name, segments, ErrScaleSplit)
	}
	regs, err := checkpoint.Registry(ctx, db)
	if err != nil {
		return err
	}
	for _, r := range regs {
		if r.Name == name && !checkpoint.CanScale(r.Segments) {
			return fmt.Errorf("scale %s from %d: %w (a reset is the way out)", name, r.Segments, ErrScaleSplit)
		}
	}
	return nil
}

// ScaleCheckpoints changes projection name's segment count to n in one
// transaction (checkpoint.Scale): it locks every checkpoint of the
// projection (waiting for batches in flight), writes the new split with
// each bucket's floor, so that nothing is applied twice and nothing is
// replayed, fences every lease of the old split, and moves the dead
// letters to their new segments. Workers claim the new segments at their
// next lease renewal. Refused while a rebuild of the projection runs (its
// copy reads by the old split).
func ScaleCheckpoints(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, name string, n int) (checkpoint.ScaleResult, error) {
	var res checkpoint.ScaleResult
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if err := checkpoint.Exists(ctx, tx, name); err != nil {
			return err
		}
		// Before looking for a rebuild: one starting waits for this lock
		// (RegisterShadow), or has committed and is seen.
		if err := checkpoint.LockProjection(ctx, tx, name); err != nil {
			return err
		}
		rebuilding, err := checkpoint.Rebuilding(ctx, tx, name)
		if err != nil {
			return err
		}
		if rebuilding {
			return fmt.Errorf("scale %s: %w (wait for it or cancel it first)", name, ErrRebuildRunning)
		}
		if res, err = checkpoint.Scale(ctx, tx, name, n); err != nil {
			return err
		}
		return deadletter.Resegment(ctx, tx, name, n)
	})
	return res, err
}
