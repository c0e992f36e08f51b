package deadletter

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/outbox"
)

// Aggregate is an aggregate with parked dead letters, and the segment its
// events belong to.
type Aggregate struct {
	Type, ID string
	Segment  int
}

// ParkedAggregates returns the aggregates that have parked dead letters of
// projection, ordered by type and id: of aggregateType ("" for any), with
// one of the listed dead letters (none listed: any).
func ParkedAggregates(ctx context.Context, db DB, projection, aggregateType string, ids []int64) ([]Aggregate, error) {
	rows, err := db.Query(ctx, `SELECT DISTINCT aggregate_type, aggregate_id, segment FROM readside.dead_letters
		WHERE projection = $1 AND status = 'parked' AND ($2 = '' OR aggregate_type = $2)
		  AND (cardinality($3::bigint[]) = 0 OR id = ANY ($3::bigint[]))
		ORDER BY 1, 2`, projection, aggregateType, nonNil(ids))
	if err != nil {
		return nil, fmt.Errorf("parked aggregates of %s: %w", projection, err)
	}
	aggs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Aggregate, error) {
		var a Aggregate
		return a, r.Scan(&a.Type, &a.ID, &a.Segment)
	})
	if err != nil {
		return nil, fmt.Errorf("parked aggregates of %s: %w", projection, err)
	}
	return aggs, nil
}

// ParkedEvent is a parked dead letter with its event.
type ParkedEvent struct {
	ID     int64 // the dead letter's
	Replay bool  // the projection applied the event once before, side effects included
	Event  outbox.Event
}

// LockParked returns every parked event of one aggregate of projection, in
// version order, locking their dead letters in the caller's transaction, so
// that a discard racing a retry of them either comes first (they are not
// read) or finds them retried.
func LockParked(ctx context.Context, tx DB, projection, aggregateType, aggregateID string) ([]ParkedEvent, error) {
	rows, err := tx.Query(ctx, `
SELECT d.id, d.replay, e.txid, e.id, e.aggregate_type, e.aggregate_id, e.event_type, e.version, e.schema_version,
       e.event_data, e.metadata, e.occurred_at
  FROM readside.dead_letters d JOIN readside.events e ON e.id = d.event_id
 WHERE d.projection = $1 AND d.aggregate_type = $2 AND d.aggregate_id = $3 AND d.status = 'parked'
 ORDER BY e.version
   FOR UPDATE OF d`, projection, aggregateType, aggregateID)
	if err != nil {
		return nil, fmt.Errorf("parked events of %s %s/%s: %w", projection, aggregateType, aggregateID, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (ParkedEvent, error) {
		var p ParkedEvent
		e := &p.Event
		err := r.Scan(&p.ID, &p.Replay, &e.Cursor.TxID, &e.Cursor.Position, &e.AggregateType, &e.AggregateID, &e.Type, &e.Version,
			&e.SchemaVersion, &e.Data, &e.Metadata, &e.OccurredAt)
		return p, err
	})
}

// MarkRetried marks a dead letter retried: a retry applied its event.
func MarkRetried(ctx context.Context, tx DB, id int64) error {
	if _, err := tx.Exec(ctx, `UPDATE readside.dead_letters SET status = 'retried', resolved_at = now() WHERE id = $1`, id); err != nil {
		return fmt.Errorf("mark dead letter %d retried: %w", id, err)
	}
	return nil
}

// MarkEventsRetried marks projection's parked dead letters of the given
// events retried: a repair applied them.
func MarkEventsRetried(ctx context.Context, tx DB, projection string, eventIDs []int64) error {
	if _, err := tx.Exec(ctx, `UPDATE readside.dead_letters SET status = 'retried', resolved_at = now()
		WHERE projection = $1 AND event_id = ANY ($2::bigint[]) AND status = 'parked'`, projection, nonNil(eventIDs)); err != nil {
		return fmt.Errorf("mark dead letters of %s retried: %w", projection, err)
	}
	return nil
}

// Refail records that a retry of a parked dead letter failed again: it
// stays parked, as failed, with the new error and one more attempt.
func Refail(ctx context.Context, tx DB, id int64, msg string) error {
	if _, err := tx.Exec(ctx, `UPDATE readside.dead_letters SET reason = 'failed', error = $2, attempts = attempts + 1,
		last_failed_at = now() WHERE id = $1`, id, msg); err != nil {
		return fmt.Errorf("dead letter %d: %w", id, err)
	}
	return nil
}
