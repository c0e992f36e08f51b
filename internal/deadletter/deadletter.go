package deadletter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Status of a dead letter.
type Status string

const (
	// Parked waits for an operator; the projection skips its aggregate.
	Parked Status = "parked"
	// Retried was applied by a retry or a repair.
	Retried Status = "retried"
	// Discarded was given up by an operator: the projection never applies
	// it.
	Discarded Status = "discarded"
)

// AnyStatus in a Filter matches dead letters in every status.
const AnyStatus Status = "all"

// Statuses are the values a Filter's Status takes, AnyStatus included.
var Statuses = []Status{Parked, Retried, Discarded, AnyStatus}

// Reason a dead letter was parked.
type Reason string

const (
	// Failed: this event's apply failed on its last attempt.
	Failed Reason = "failed"
	// Blocked: parked behind an earlier failed event of the same aggregate,
	// to keep its order.
	Blocked Reason = "blocked"
)

// ErrNothingToDiscard is returned by Discard when no parked dead letter
// matches.
var ErrNothingToDiscard = errors.New("no parked dead letters to discard")

// DB is what this package needs: *pgxpool.Pool, *pgx.Conn and pgx.Tx.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Letter is a parked event and what became of it.
type Letter struct {
	ID            int64
	Projection    string
	Segment       int
	EventID       int64
	AggregateType string
	AggregateID   string
	EventType     string
	Version       int
	Reason        Reason
	Error         string
	Attempts      int
	Status        Status
	FirstFailedAt time.Time
	LastFailedAt  time.Time
}

// Filter selects dead letters; zero fields match all.
type Filter struct {
	Projection string
	IDs        []int64
	Status     Status // "" means Parked; AnyStatus means every status
	Limit      int    // 0 means 1000
}

// List returns dead letters in apply order (per projection, aggregate,
// version).
func List(ctx context.Context, db DB, f Filter) ([]Letter, error) {
	if f.Status == "" {
		f.Status = Parked
	}
	if f.Limit <= 0 {
		f.Limit = 1000
	}
	rows, err := db.Query(ctx, `
SELECT id, projection, segment, event_id, aggregate_type, aggregate_id, event_type, version, reason, error, attempts, status,
       first_failed_at, last_failed_at
  FROM readside.dead_letters
 WHERE ($1 = '' OR projection = $1) AND (cardinality($2::bigint[]) = 0 OR id = ANY ($2::bigint[]))
   AND ($3 = 'all' OR status = $3)
 ORDER BY projection, aggregate_type, aggregate_id, version
 LIMIT $4`, f.Projection, nonNil(f.IDs), f.Status, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Letter, error) {
		var d Letter
		err := r.Scan(&d.ID, &d.Projection, &d.Segment, &d.EventID, &d.AggregateType, &d.AggregateID, &d.EventType, &d.Version,
			&d.Reason, &d.Error, &d.Attempts, &d.Status, &d.FirstFailedAt, &d.LastFailedAt)
		return d, err
	})
}

// Discard marks parked dead letters (of projection, or of all when it is
// empty; the listed ids, or all when none) discarded: the projection will
// never apply them. Discarding an aggregate's failed event but not the
// events blocked behind it keeps the aggregate parked; discard or retry
// those too. It returns how many changed, or ErrNothingToDiscard (wrapped)
// if none. Call it in a transaction that holds the checkpoints of the
// projections concerned (control.DiscardDeadLetters), as every writer of
// dead letters does.
func Discard(ctx context.Context, db DB, projection string, ids []int64) (int, error) {
	tag, err := db.Exec(ctx, `UPDATE readside.dead_letters SET status = 'discarded', resolved_at = now()
		WHERE status = 'parked' AND ($1 = '' OR projection = $1) AND (cardinality($2::bigint[]) = 0 OR id = ANY ($2::bigint[]))`,
		projection, nonNil(ids))
	if err != nil {
		return 0, fmt.Errorf("discard: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return 0, fmt.Errorf("discard: %w", ErrNothingToDiscard)
	}
	return int(tag.RowsAffected()), nil
}

// Clear deletes every dead letter of projection, in the transaction of a
// reset to the start: the projection applies their events again, from
// scratch.
func Clear(ctx context.Context, tx DB, projection string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM readside.dead_letters WHERE projection = $1`, projection); err != nil {
		return fmt.Errorf("clear dead letters of %s: %w", projection, err)
	}
	return nil
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
