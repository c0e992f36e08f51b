package readmodel

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// Spec is the Spec of a read model fed by one aggregate type, with tables.
//
// It subscribes to every event of the aggregate type, not to a list of known
// types: an event type the read model does not know (a newer writer's, or a
// bad one) fails and is parked with its reason instead of being skipped
// silently. It is split in DefaultSegments segments.
func Spec(name, aggregateType string, tables ...string) projectors.Spec {
	return projectors.Spec{Name: name, AggregateTypes: []string{aggregateType}, Tables: tables, Segments: DefaultSegments}
}

// DefaultSegments is the segment count a shipped read model registers
// with. Chosen by measurement (README, "Throughput at the defaults"): on
// the 200,000-event backlog of `writer load` on 2 cores, order_summary at
// the default concurrency (4) drained fastest at 8 of 1, 2, 4 and 8
// segments. More segments let more of the work run at once, and a
// segment reads only its own buckets, BatchSize rows per segment (up to
// 16,000): 8 segments fold 8,000 events per transaction, so an order's
// events meet in one upsert more often. A registered projection keeps its
// count; `projector scale` changes it.
const DefaultSegments = 8

// Truncate empties tables in one statement: the Reset of a read model whose
// tables hold nothing but what its events wrote.
func Truncate(ctx context.Context, tx pgx.Tx, projection string, tables ...string) error {
	if _, err := tx.Exec(ctx, "TRUNCATE "+strings.Join(tables, ", ")); err != nil {
		return fmt.Errorf("%s: reset: %w", projection, err)
	}
	return nil
}

// Delete deletes the rows of tables whose column is one of ids, table by
// table in the order given: the Forget of a read model keyed by aggregate
// id, after which projector repair re-applies the aggregates' events.
func Delete(ctx context.Context, tx pgx.Tx, projection, column string, ids []string, tables ...string) error {
	for _, table := range tables {
		if _, err := tx.Exec(ctx, "DELETE FROM "+table+" WHERE "+column+" = ANY ($1::text[])", ids); err != nil {
			return fmt.Errorf("%s: forget: %w", projection, err)
		}
	}
	return nil
}

// EventError names the event that projection could not apply, so that
// operators (and the dead-letter table) can find it.
func EventError(projection string, e *outbox.Event, err error) error {
	return fmt.Errorf("%s: event %d (%s %s %s v%d): %w", projection, e.ID(), e.AggregateType, e.AggregateID, e.Type, e.Version, err)
}
