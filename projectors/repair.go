package projectors

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/checkpoint"
	"github.com/readside/readside/deadletter"
	"github.com/readside/readside/internal/backoff"
	"github.com/readside/readside/outbox"
)

// Forgetter is implemented by a projection that can repair single
// aggregates (Repair): Forget removes everything the read model holds for
// the given aggregates, as if none of their events had been applied, so
// that re-applying them rebuilds exactly their fold. A table of rows per
// aggregate deletes them; a counter subtracts what the aggregates added.
// Repair calls it inside its transaction with every checkpoint row of the
// projection locked, so no batch of the projection runs meanwhile.
type Forgetter interface {
	Forget(ctx context.Context, tx pgx.Tx, aggregateType string, aggregateIDs []string) error
}

// ErrRepairUnsupported is returned by Repair for a projection that does not
// implement Forgetter: re-applying events over rows it cannot remove would
// count them twice.
var ErrRepairUnsupported = errors.New("projection cannot repair single aggregates (it does not implement projectors.Forgetter)")

// ErrNothingToRepair is returned by Repair when no aggregate was named and
// AllParked found none.
var ErrNothingToRepair = errors.New("no aggregate to repair")

// RepairOptions names the aggregates to repair.
type RepairOptions struct {
	// AggregateType of AggregateIDs. Empty means the projection's only
	// aggregate type (Spec.AggregateTypes); a projection with several, or
	// none, needs it.
	AggregateType string
	// AggregateIDs to repair.
	AggregateIDs []string
	// AllParked adds every aggregate (of AggregateType, or of any type when
	// it is empty) that has parked dead letters of the projection.
	AllParked bool
}

// RepairedAggregate is what Repair did for one aggregate.
type RepairedAggregate struct {
	Type, ID string
	Segment  int // -1 when it has no event up to the checkpoint
	// Replayed events, applied before and applied again as a replay (no
	// side effects), and Unparked events: parked ones applied for the
	// first time, their dead letters marked retried.
	Replayed, Unparked int
}

// Repair rebuilds the part of p's read model that belongs to some
// aggregates, in one transaction: it locks every checkpoint row of the
// projection (batches in flight finish first; new ones wait, as for a
// reset), refuses while a rebuild runs, calls p.Forget, and re-applies each
// aggregate's events up to its segment's checkpoint, in version order, read
// from the events table (the outbox may be pruned). Events applied before go
// in batches flagged Replay, so side effects do not fire again; parked
// events of the aggregate (dead letters) are applied as new and their dead
// letters marked retried; discarded ones stay unapplied. An apply error
// rolls the whole repair back. Events after the checkpoint are the fleet's:
// it applies them as usual once the repair commits. It works while the
// fleet runs.
func Repair(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, p Projection, o RepairOptions) ([]RepairedAggregate, error) {
	spec := p.Spec().withDefaults()
	f, ok := p.(Forgetter)
	if !ok {
		return nil, fmt.Errorf("repair %s: %w", spec.Name, ErrRepairUnsupported)
	}
	if o.AggregateType == "" && len(o.AggregateIDs) > 0 {
		if len(spec.AggregateTypes) != 1 {
			return nil, fmt.Errorf("repair %s: the projection takes %s aggregate types: name one (--aggregate-type)", spec.Name, typesList(spec.AggregateTypes))
		}
		o.AggregateType = spec.AggregateTypes[0]
	}
	if o.AggregateType != "" && len(spec.AggregateTypes) > 0 && !slices.Contains(spec.AggregateTypes, o.AggregateType) {
		return nil, fmt.Errorf("repair %s: aggregate type %q is not one the projection takes (%s)", spec.Name, o.AggregateType, typesList(spec.AggregateTypes))
	}
	if len(o.AggregateIDs) == 0 && !o.AllParked {
		return nil, fmt.Errorf("repair %s: %w (name aggregates or ask for all parked ones)", spec.Name, ErrNothingToRepair)
	}
	var out []RepairedAggregate
	for attempt := 1; ; attempt++ {
		var err error
		out, err = repairTx(ctx, db, p, f, spec, o)
		if err == nil || retryReason(err) == "" || attempt == 5 {
			return out, err
		}
		if err := backoff.Sleep(ctx, backoff.Delay(attempt, RetryBackoffDefault, MaxRetryBackoffDefault)); err != nil {
			return nil, err
		}
	}
}

func typesList(types []string) string {
	if len(types) == 0 {
		return "all"
	}
	return strings.Join(types, ", ")
}

// repairEventsSQL reads the events of some aggregates of one type that the
// projection has passed: at or before their segment's checkpoint, of the
// projection's event types, not discarded; with whether each is parked.
const repairEventsSQL = `
SELECT e.txid, e.id, e.aggregate_type, e.aggregate_id, e.event_type, e.version, e.schema_version,
       e.event_data, e.metadata, e.occurred_at, c.segment, d.status IS NOT NULL AS parked
  FROM events e
  JOIN projections p ON p.name = $1
  JOIN checkpoints c ON c.projection = p.name AND c.segment = readside_segment(e.aggregate_id, p.segments)
  LEFT JOIN dead_letters d ON d.projection = p.name AND d.event_id = e.id AND d.status = 'parked'
 WHERE e.aggregate_type = $2 AND e.aggregate_id = ANY ($3::text[])
   AND (e.txid, e.id) <= (c.cursor_txid, c.cursor_position)
   AND (cardinality($4::text[]) = 0 OR e.event_type = ANY ($4::text[]))
   AND NOT EXISTS (SELECT 1 FROM dead_letters x WHERE x.projection = p.name AND x.event_id = e.id AND x.status = 'discarded')
 ORDER BY c.segment, e.aggregate_id, e.version`

func repairTx(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, p Projection, f Forgetter, spec Spec, o RepairOptions) ([]RepairedAggregate, error) {
	var out []RepairedAggregate
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if err := checkpoint.Exists(ctx, tx, spec.Name); err != nil {
			return err
		}
		if _, err := checkpoint.LockForOperation(ctx, tx, spec.Name); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		rebuilding, err := checkpoint.Rebuilding(ctx, tx, spec.Name)
		if err != nil {
			return err
		}
		if rebuilding {
			return fmt.Errorf("%w (the rebuilt copy replaces the live tables when it switches; wait for it)", ErrRebuildRunning)
		}
		byType := map[string][]string{}
		if len(o.AggregateIDs) > 0 {
			byType[o.AggregateType] = slices.Clone(o.AggregateIDs)
		}
		if o.AllParked {
			aggs, err := deadletter.ParkedAggregates(ctx, tx, spec.Name, o.AggregateType, nil)
			if err != nil {
				return err
			}
			for _, a := range aggs {
				byType[a.Type] = append(byType[a.Type], a.ID)
			}
		}
		types := make([]string, 0, len(byType))
		for typ, ids := range byType {
			slices.Sort(ids)
			byType[typ] = slices.Compact(ids)
			types = append(types, typ)
		}
		slices.Sort(types)
		if len(types) == 0 {
			return ErrNothingToRepair
		}
		for _, typ := range types {
			ids := byType[typ]
			if err := f.Forget(ctx, tx, typ, ids); err != nil {
				return fmt.Errorf("forget %s %s: %w", typ, strings.Join(ids, ", "), err)
			}
			done, err := reapply(ctx, tx, p, spec, typ, ids)
			if err != nil {
				return err
			}
			out = append(out, done...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("repair %s: %w", spec.Name, err)
	}
	return out, nil
}

// reapply applies the passed events of the aggregates, segment by segment,
// in runs of consecutive events with the same Replay flag.
func reapply(ctx context.Context, tx pgx.Tx, p Projection, spec Spec, typ string, ids []string) ([]RepairedAggregate, error) {
	rows, err := tx.Query(ctx, repairEventsSQL, spec.Name, typ, ids, nonNilStrings(spec.EventTypes))
	if err != nil {
		return nil, err
	}
	type row struct {
		ev      outbox.Event
		segment int
		parked  bool
	}
	events, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		e := &x.ev
		err := r.Scan(&e.Cursor.TxID, &e.Cursor.Position, &e.AggregateType, &e.AggregateID, &e.Type, &e.Version,
			&e.SchemaVersion, &e.Data, &e.Metadata, &e.OccurredAt, &x.segment, &x.parked)
		return x, err
	})
	if err != nil {
		return nil, err
	}
	done := map[string]*RepairedAggregate{}
	out := make([]RepairedAggregate, 0, len(ids))
	var unparked []int64
	for i := 0; i < len(events); {
		j := i
		batch := &Batch{Segment: events[i].segment, Replay: !events[i].parked}
		for ; j < len(events) && events[j].segment == batch.Segment && events[j].parked == events[i].parked; j++ {
			batch.Events = append(batch.Events, events[j].ev)
			if events[j].parked {
				unparked = append(unparked, events[j].ev.ID())
			}
		}
		if err := p.Apply(ctx, tx, batch); err != nil {
			return nil, err
		}
		for _, e := range events[i:j] {
			a := done[e.ev.AggregateID]
			if a == nil {
				a = &RepairedAggregate{Type: typ, ID: e.ev.AggregateID, Segment: e.segment}
				done[e.ev.AggregateID] = a
			}
			if e.parked {
				a.Unparked++
			} else {
				a.Replayed++
			}
		}
		i = j
	}
	if len(unparked) > 0 {
		if err := deadletter.MarkEventsRetried(ctx, tx, spec.Name, unparked); err != nil {
			return nil, err
		}
	}
	for _, id := range ids {
		if a := done[id]; a != nil {
			out = append(out, *a)
		} else {
			out = append(out, RepairedAggregate{Type: typ, ID: id, Segment: -1})
		}
	}
	return out, nil
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
