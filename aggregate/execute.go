package aggregate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/backoff"
	"github.com/readside/readside/outbox"
)

// Result describes what Execute did.
type Result struct {
	// Version is the aggregate's version after the command.
	Version int
	// Append is what was appended; nil when the decision produced no events
	// (nothing was written).
	Append *outbox.AppendResult
	// Snapshot is true when a snapshot was written.
	Snapshot bool
	// Attempts is the number of transactions tried: 1 plus the number of
	// concurrency conflicts retried.
	Attempts int
}

// Cursor is the consistency token of the write: once a projection's
// checkpoint has passed it, the projection reflects this command. It is the
// zero Cursor when nothing was written.
func (r *Result) Cursor() outbox.Cursor {
	if r.Append == nil {
		return outbox.Cursor{}
	}
	return r.Append.Cursor()
}

// Execute runs one command on aggregate id of type P in one transaction:
// load (snapshot and newer events), decide, save. decide gets the current
// state and returns the new events, or an error (typically a domain error)
// that is returned as is; it must not change the state, and it may run more
// than once. No events means nothing to write.
//
// A concurrency conflict (another writer appended first) rolls back, waits a
// short jittered backoff and retries with a fresh load, up to
// Config.MaxConflictRetries times; then the error wraps
// outbox.ErrConcurrencyConflict. A transaction that holds the aggregate's
// next version without committing is not waited for beyond
// Config.LockTimeout: the error is then a *pgconn.PgError with SQLSTATE
// 55P03, not retried.
func Execute[S any, P StatePtr[S]](ctx context.Context, r *Repository, id string, meta outbox.Metadata, decide func(P) ([]domain.Event, error)) (*Result, error) {
	start := time.Now()
	aggType := P(new(S)).AggregateType()
	retries := max(r.cfg.MaxConflictRetries, 0)
	for attempt := 1; ; attempt++ {
		res, err := executeOnce(ctx, r, id, meta, decide)
		if err == nil {
			res.Attempts = attempt
			if res.Append != nil {
				r.metrics.appended(aggType, len(res.Append.Positions), time.Since(start))
			}
			return res, nil
		}
		if !errors.Is(err, outbox.ErrConcurrencyConflict) {
			return nil, err
		}
		r.metrics.conflict(aggType, err)
		if attempt > retries {
			return nil, fmt.Errorf("%s %s: gave up after %d attempts: %w", aggType, id, attempt, err)
		}
		if err := backoff.Sleep(ctx, backoff.Delay(attempt, r.cfg.RetryBackoff, r.cfg.MaxRetryBackoff)); err != nil {
			return nil, err
		}
	}
}

func executeOnce[S any, P StatePtr[S]](ctx context.Context, r *Repository, id string, meta outbox.Metadata, decide func(P) ([]domain.Event, error)) (*Result, error) {
	var res *Result
	err := pgx.BeginTxFunc(ctx, r.db, r.begin, func(tx pgx.Tx) error {
		l, err := Load[S, P](ctx, tx, id)
		if err != nil {
			return err
		}
		events, err := decide(l.State)
		if err != nil {
			return err
		}
		res = &Result{Version: l.Version}
		if len(events) == 0 {
			return nil
		}
		saved, err := r.Save(ctx, tx, id, l.Version, l.State, meta, events)
		if err != nil {
			return err
		}
		res.Version, res.Append, res.Snapshot = saved.Version, saved.AppendResult, saved.Snapshot
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}
