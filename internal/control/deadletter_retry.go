package control

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/deadletter"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// RetryDeadLettersArgs re-applies a projection's parked events (all, or the
// listed dead-letter ids), aggregate by aggregate in version order.
type RetryDeadLettersArgs struct {
	Projection string  `json:"projection" river:"unique"`
	IDs        []int64 `json:"ids,omitempty"`
}

// Kind implements river.JobArgs.
func (RetryDeadLettersArgs) Kind() string { return "readside_dead_letters_retry" }

// InsertOpts implements river.JobArgsWithInsertOpts.
func (RetryDeadLettersArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: Queue, UniqueOpts: uniqueByProjection()}
}

type deadLetterRetryWorker struct {
	river.WorkerDefaults[RetryDeadLettersArgs]
	c *Control
}

func (w *deadLetterRetryWorker) Work(ctx context.Context, job *river.Job[RetryDeadLettersArgs]) error {
	p, err := w.c.projection(job.Args.Projection, job.CreatedAt)
	if err != nil {
		return err
	}
	res, err := RetryDeadLetters(ctx, w.c.db, p, job.Args.IDs)
	if errors.Is(err, ErrNothingToRetry) {
		return river.JobCancel(err)
	}
	if err != nil {
		return err
	}
	w.c.log.Info("control: dead letters retried", "projection", job.Args.Projection, "applied", res.Applied, "still_parked", res.StillParked)
	return nil
}

// RetryResult says what a retry did.
type RetryResult struct {
	Applied     int // events applied and marked retried
	StillParked int // events that failed again (and those blocked behind them)
}

// RetryDeadLetters re-applies parked events (the listed dead letters, or
// all of p's when none are listed). Each aggregate is retried in its own
// transaction that first locks its segment's checkpoint row, so the
// segment's runner cannot park or pass events of that aggregate meanwhile;
// its events are applied one at a time in version order, each in a
// savepoint. The first one that fails again stays parked (with the new
// error and attempt count), and so does everything after it: order survives.
func RetryDeadLetters(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, p projectors.Projection, ids []int64) (RetryResult, error) {
	name := p.Spec().Name
	var res RetryResult
	var aggs []deadletter.Aggregate
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		var err error
		aggs, err = deadletter.ParkedAggregates(ctx, tx, name, "", ids)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("retry %s: %w", name, err)
	}
	if len(aggs) == 0 {
		return res, fmt.Errorf("retry %s: %w", name, ErrNothingToRetry)
	}
	for _, a := range aggs {
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			r, err := retryAggregate(ctx, tx, p, name, a)
			res.Applied += r.Applied
			res.StillParked += r.StillParked
			return err
		})
		if err != nil {
			return res, fmt.Errorf("retry %s %s/%s: %w", name, a.Type, a.ID, err)
		}
	}
	return res, nil
}

// retryAggregate re-applies one aggregate's parked events in tx, in
// version order, until one fails again. Every parked event of the aggregate
// is retried, not only the listed ones: applying a later one before an
// earlier one would break order. A transient error aborts the transaction.
func retryAggregate(ctx context.Context, tx pgx.Tx, p projectors.Projection, name string, a deadletter.Aggregate) (RetryResult, error) {
	var res RetryResult
	// The aggregate's segment now: a scale may have moved it since a was read.
	seg, err := checkpoint.LockAggregateSegment(ctx, tx, name, a.ID)
	if err != nil {
		return res, err
	}
	a.Segment = seg
	events, err := deadletter.LockParked(ctx, tx, name, a.Type, a.ID)
	if err != nil {
		return res, err
	}
	for i, pe := range events {
		applyErr, err := applyInSavepoint(ctx, tx, p, &projectors.Batch{Events: []outbox.Event{pe.Event}, Segment: a.Segment, Replay: pe.Replay})
		if err != nil {
			return res, err
		}
		if applyErr == nil {
			if err := deadletter.MarkRetried(ctx, tx, pe.ID); err != nil {
				return res, err
			}
			res.Applied++
			continue
		}
		if transient(applyErr) != "" {
			return res, applyErr
		}
		if err := deadletter.Refail(ctx, tx, pe.ID, applyErr.Error()); err != nil {
			return res, err
		}
		res.StillParked += len(events) - i
		break
	}
	return res, nil
}

// applyInSavepoint applies b in a savepoint of tx, rolled back if the
// projection fails: it returns the projection's error, and an error of the
// savepoint itself.
func applyInSavepoint(ctx context.Context, tx pgx.Tx, p projectors.Projection, b *projectors.Batch) (applyErr, err error) {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return nil, err
	}
	if applyErr = projectors.ApplyTx(ctx, sp, p, b); applyErr != nil {
		return applyErr, sp.Rollback(ctx)
	}
	return nil, sp.Commit(ctx)
}
