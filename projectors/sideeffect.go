package projectors

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/outbox"
)

// ledger says where a batch's side effects are recorded: the side-effect
// ledger (readside.side_effects) of readside's schema, under the live
// projection's name, which a rebuild's copy shares.
type ledger struct {
	schema     dbschema.Name
	projection string
}

// ledgerOf is the ledger of p's batches applied in tx, a transaction that
// readside opened on its own handle.
func ledgerOf(tx pgx.Tx, p Projection) ledger {
	return ledger{schema: dbschema.Of(tx), projection: p.Spec().Name}
}

// claimSQL records events' side effects as fired and returns the events
// whose rows it inserted: those whose side effects had not fired before.
// Every name is qualified (the projection's search_path is in force); a
// concurrent claim of the same event waits for the first to commit or roll
// back.
const claimSQL = `INSERT INTO readside.side_effects (projection, event_id)
SELECT $1::pg_catalog.text, e FROM pg_catalog.unnest($2::pg_catalog.int8[]) AS e
ON CONFLICT (projection, event_id) DO NOTHING RETURNING event_id`

// SideEffectsDue records, in tx (the transaction Apply was given), that
// the side effects of events (some of b.Events, or nil for all of them)
// fire now, and returns, in order, those whose side effects had not fired
// before: Apply fires side effects (enqueues River jobs with InsertTx on
// tx) for these and only these. The record is readside's side-effect
// ledger, keyed by projection and event id, and commits or rolls back with
// the apply: every path that applies an event (the runner, a replay after
// a reset, a rebuild's copy, repair, dead-letter retry) asks it the same
// question, so an event's side effects fire once, the first time the event
// is applied, whichever path that is.
//
// A Batch that the runtime did not build (a test's) has no ledger: its
// events are due unless b.Replay.
func (b *Batch) SideEffectsDue(ctx context.Context, tx pgx.Tx, events []outbox.Event) ([]outbox.Event, error) {
	if events == nil {
		events = b.Events
	}
	if len(events) == 0 {
		return nil, nil
	}
	if b.ledger.projection == "" {
		if b.Replay {
			return nil, nil
		}
		return events, nil
	}
	ids := make([]int64, len(events))
	for i, e := range events {
		ids[i] = e.ID()
	}
	rows, err := tx.Query(ctx, b.ledger.schema.SQL(claimSQL), b.ledger.projection, ids)
	if err != nil {
		return nil, fmt.Errorf("side-effect ledger: %w", err)
	}
	claimed, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("side-effect ledger: %w", err)
	}
	if len(claimed) == len(events) {
		return events, nil
	}
	fire := make(map[int64]bool, len(claimed))
	for _, id := range claimed {
		fire[id] = true
	}
	due := make([]outbox.Event, 0, len(claimed))
	for _, e := range events {
		if fire[e.ID()] {
			due = append(due, e)
		}
	}
	return due, nil
}

// ApplyTx hands b to p.Apply in tx, a transaction that readside opened on
// its own handle (internal/dbschema), under the search_path of a
// projection's code with the live tables, its side effects recorded in
// the ledger of tx's schema under p's name (Batch.SideEffectsDue). The
// control plane's repair and dead-letter retry apply through it.
func ApplyTx(ctx context.Context, tx pgx.Tx, p Projection, b *Batch) error {
	b.ledger = ledgerOf(tx, p)
	ptx, err := dbschema.Projection(ctx, tx, "")
	if err != nil {
		return err
	}
	return ApplyBatch(ctx, ptx, p, b)
}

// ApplyBatch calls p.Apply(ctx, tx, b) as the runtime does: what Apply
// queues (Batch.Queue) is sent in tx after Apply returns. It is for code
// that applies batches itself, such as a projection's tests
// (projectortest uses it), so that they see the order the runtime gives.
func ApplyBatch(ctx context.Context, tx pgx.Tx, p Projection, b *Batch) error {
	if err := p.Apply(ctx, tx, b.deferring(tx)); err != nil {
		return err
	}
	return b.flush(ctx, tx)
}
