package projectors

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/readside/readside/checkpoint"
	"github.com/readside/readside/outbox"
)

// DeadLetter is a parked event.
type DeadLetter struct {
	ID            int64
	Projection    string
	Segment       int
	EventID       int64
	AggregateType string
	AggregateID   string
	EventType     string
	Version       int
	Reason        string // failed or blocked
	Error         string
	Attempts      int
	Status        string // parked, retrying, retried, discarded
	FirstFailedAt time.Time
	LastFailedAt  time.Time
}

// DeadLetterFilter selects dead letters; zero fields match all.
type DeadLetterFilter struct {
	Projection string
	IDs        []int64
	Status     string // "" means parked
	Limit      int    // 0 means 1000
}

// ListDeadLetters returns dead letters in apply order (per projection,
// aggregate, version).
func ListDeadLetters(ctx context.Context, db checkpoint.DB, f DeadLetterFilter) ([]DeadLetter, error) {
	if f.Status == "" {
		f.Status = "parked"
	}
	if f.Limit <= 0 {
		f.Limit = 1000
	}
	if f.IDs == nil {
		f.IDs = []int64{}
	}
	rows, err := db.Query(ctx, `
SELECT id, projection, segment, event_id, aggregate_type, aggregate_id, event_type, version, reason, error, attempts, status,
       first_failed_at, last_failed_at
  FROM dead_letters
 WHERE ($1 = '' OR projection = $1) AND (cardinality($2::bigint[]) = 0 OR id = ANY ($2::bigint[]))
   AND ($3 = 'all' OR status = $3)
 ORDER BY projection, aggregate_type, aggregate_id, version
 LIMIT $4`, f.Projection, f.IDs, f.Status, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (DeadLetter, error) {
		var d DeadLetter
		err := r.Scan(&d.ID, &d.Projection, &d.Segment, &d.EventID, &d.AggregateType, &d.AggregateID, &d.EventType, &d.Version,
			&d.Reason, &d.Error, &d.Attempts, &d.Status, &d.FirstFailedAt, &d.LastFailedAt)
		return d, err
	})
}

// DiscardDeadLetters marks parked dead letters discarded: the projection
// will never apply them. Discarding an aggregate's failed event but not the
// events blocked behind it keeps the aggregate parked; discard or retry those
// too. It returns how many changed, or ErrNothingToRetry (wrapped) if none.
func DiscardDeadLetters(ctx context.Context, db checkpoint.DB, projection string, ids []int64) (int, error) {
	if ids == nil {
		ids = []int64{}
	}
	tag, err := db.Exec(ctx, `UPDATE dead_letters SET status = 'discarded', resolved_at = now()
		WHERE status = 'parked' AND ($1 = '' OR projection = $1) AND (cardinality($2::bigint[]) = 0 OR id = ANY ($2::bigint[]))`,
		projection, ids)
	if err != nil {
		return 0, fmt.Errorf("discard: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return 0, fmt.Errorf("discard: %w", ErrNothingToRetry)
	}
	return int(tag.RowsAffected()), nil
}

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
	return river.InsertOpts{Queue: ControlQueue, UniqueOpts: uniqueByProjection()}
}

type retryWorker struct {
	river.WorkerDefaults[RetryDeadLettersArgs]
	c *Control
}

func (w *retryWorker) Work(ctx context.Context, job *river.Job[RetryDeadLettersArgs]) error {
	p, err := w.c.projection(job.Args.Projection, job.CreatedAt)
	if err != nil {
		return err
	}
	res, err := RetryDeadLetters(ctx, w.c.cfg.Pool, p, job.Args.IDs)
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

// RetryDeadLetters re-applies parked events. Each aggregate is retried in
// its own transaction that first locks its segment's checkpoint row, so the
// segment's runner cannot park or pass events of that aggregate meanwhile;
// its events are applied one at a time in version order, each in a
// savepoint. The first one that fails again stays parked (with the new
// error and attempt count), and so does everything after it: order survives.
func RetryDeadLetters(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, p Projection, ids []int64) (RetryResult, error) {
	spec := p.Spec().withDefaults()
	var res RetryResult
	if ids == nil {
		ids = []int64{}
	}
	type aggregate struct {
		typ, id string
		segment int
	}
	var aggs []aggregate
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT DISTINCT aggregate_type, aggregate_id, segment FROM dead_letters
			WHERE projection = $1 AND status = 'parked' AND (cardinality($2::bigint[]) = 0 OR id = ANY ($2::bigint[]))
			ORDER BY 1, 2`, spec.Name, ids)
		if err != nil {
			return err
		}
		aggs, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (aggregate, error) {
			var a aggregate
			return a, r.Scan(&a.typ, &a.id, &a.segment)
		})
		return err
	})
	if err != nil {
		return res, fmt.Errorf("retry %s: %w", spec.Name, err)
	}
	if len(aggs) == 0 {
		return res, fmt.Errorf("retry %s: %w", spec.Name, ErrNothingToRetry)
	}
	for _, a := range aggs {
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			if err := checkpoint.LockSegment(ctx, tx, spec.Name, a.segment); err != nil {
				return err
			}
			// Every parked event of the aggregate, not only the listed ids:
			// applying a later one before an earlier one would break order.
			// Locked, so that a discard of them racing this retry either
			// comes first (they are not read) or finds them retried.
			rows, err := tx.Query(ctx, `
SELECT d.id, d.replay, e.txid, e.id, e.aggregate_type, e.aggregate_id, e.event_type, e.version, e.schema_version,
       e.event_data, e.metadata, e.occurred_at
  FROM dead_letters d JOIN events e ON e.id = d.event_id
 WHERE d.projection = $1 AND d.aggregate_type = $2 AND d.aggregate_id = $3 AND d.status = 'parked'
 ORDER BY e.version
   FOR UPDATE OF d`, spec.Name, a.typ, a.id)
			if err != nil {
				return err
			}
			type parked struct {
				dl     int64
				replay bool // applied once before, side effects included
				ev     outbox.Event
			}
			events, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (parked, error) {
				var p parked
				e := &p.ev
				err := r.Scan(&p.dl, &p.replay, &e.Cursor.TxID, &e.Cursor.Position, &e.AggregateType, &e.AggregateID, &e.Type, &e.Version,
					&e.SchemaVersion, &e.Data, &e.Metadata, &e.OccurredAt)
				return p, err
			})
			if err != nil {
				return err
			}
			for i, pe := range events {
				sp, err := tx.Begin(ctx)
				if err != nil {
					return err
				}
				applyErr := p.Apply(ctx, sp, &Batch{Events: []outbox.Event{pe.ev}, Segment: a.segment, Replay: pe.replay})
				if applyErr == nil {
					if err := sp.Commit(ctx); err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `UPDATE dead_letters SET status = 'retried', resolved_at = now() WHERE id = $1`, pe.dl); err != nil {
						return err
					}
					res.Applied++
					continue
				}
				if err := sp.Rollback(ctx); err != nil {
					return err
				}
				if retryReason(applyErr) != "" {
					return applyErr
				}
				if _, err := tx.Exec(ctx, `UPDATE dead_letters SET reason = 'failed', error = $2, attempts = attempts + 1,
					last_failed_at = now() WHERE id = $1`, pe.dl, applyErr.Error()); err != nil {
					return err
				}
				res.StillParked += len(events) - i
				break
			}
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("retry %s %s/%s: %w", spec.Name, a.typ, a.id, err)
		}
	}
	return res, nil
}
