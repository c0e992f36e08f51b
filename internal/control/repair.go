package control

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/internal/backoff"
	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/internal/deadletter"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// ErrRepairUnsupported is returned by Repair for a projection that does not
// implement projectors.Forgetter: re-applying events over rows it cannot remove would
// count them twice.
var ErrRepairUnsupported = errors.New("projection cannot repair single aggregates (it does not implement projectors.Forgetter)")

// ErrNothingToRepair is returned by Repair when no aggregate was named and
// AllParked found none.
var ErrNothingToRepair = errors.New("no aggregate to repair")

// RepairOptions names the aggregates to repair.
type RepairOptions struct {
	// AggregateType of AggregateIDs. Empty means the projection's only
	// aggregate type (projectors.Spec.AggregateTypes); a projection with several, or
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
// in batches flagged Replay; parked events of the aggregate (dead letters)
// in batches not flagged, and their dead letters are marked retried. Side
// effects fire for an event whose first application this is, whatever the
// flag (the side-effect ledger, projectors.Batch.SideEffectsDue); discarded ones stay unapplied. An apply error
// rolls the whole repair back. Events after the checkpoint are the fleet's:
// it applies them as usual once the repair commits. It works while the
// fleet runs.
func Repair(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, p projectors.Projection, o RepairOptions) ([]RepairedAggregate, error) {
	spec := p.Spec()
	f, ok := p.(projectors.Forgetter)
	if !ok {
		return nil, fmt.Errorf("repair %s: %w", spec.Name, ErrRepairUnsupported)
	}
	o, err := o.resolve(spec)
	if err != nil {
		return nil, fmt.Errorf("repair %s: %w", spec.Name, err)
	}
	for attempt := 1; ; attempt++ {
		out, err := repairTx(ctx, db, p, f, o)
		if err == nil || transient(err) == "" || attempt == 5 {
			return out, err
		}
		if err := backoff.Sleep(ctx, backoff.Delay(attempt, projectors.RetryBackoffDefault, projectors.MaxRetryBackoffDefault)); err != nil {
			return nil, err
		}
	}
}

// resolve checks o against the projection's aggregate types and fills in
// the only one when o names aggregates without their type.
func (o RepairOptions) resolve(spec projectors.Spec) (RepairOptions, error) {
	types := spec.AggregateTypes
	if o.AggregateType == "" && len(o.AggregateIDs) > 0 {
		if len(types) != 1 {
			return o, fmt.Errorf("the projection takes %s aggregate types: name one (--aggregate-type)", typesList(types))
		}
		o.AggregateType = types[0]
	}
	if o.AggregateType != "" && len(types) > 0 && !slices.Contains(types, o.AggregateType) {
		return o, fmt.Errorf("aggregate type %q is not one the projection takes (%s)", o.AggregateType, typesList(types))
	}
	if len(o.AggregateIDs) == 0 && !o.AllParked {
		return o, fmt.Errorf("%w (name aggregates or ask for all parked ones)", ErrNothingToRepair)
	}
	return o, nil
}

func typesList(types []string) string {
	if len(types) == 0 {
		return "all"
	}
	return strings.Join(types, ", ")
}

// repairTx is one attempt at a repair, in one transaction: lock, forget and
// re-apply each aggregate type's aggregates.
func repairTx(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, p projectors.Projection, f projectors.Forgetter, o RepairOptions) ([]RepairedAggregate, error) {
	spec := p.Spec()
	var out []RepairedAggregate
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if err := lockForRepair(ctx, tx, spec.Name); err != nil {
			return err
		}
		byType, err := aggregatesToRepair(ctx, tx, spec.Name, o)
		if err != nil {
			return err
		}
		for _, typ := range slices.Sorted(maps.Keys(byType)) {
			ids := byType[typ]
			ptx, err := dbschema.Projection(ctx, tx, "")
			if err != nil {
				return err
			}
			if err := f.Forget(ctx, ptx, typ, ids); err != nil {
				return fmt.Errorf("forget %s %s: %w", typ, strings.Join(ids, ", "), err)
			}
			done, err := reapply(ctx, tx, p, typ, ids)
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

// lockForRepair locks every checkpoint of the projection (batches in
// flight finish first; new ones wait) and refuses while a rebuild runs.
func lockForRepair(ctx context.Context, tx pgx.Tx, name string) error {
	if err := checkpoint.Exists(ctx, tx, name); err != nil {
		return err
	}
	if _, err := checkpoint.LockForOperation(ctx, tx, name); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	rebuilding, err := checkpoint.Rebuilding(ctx, tx, name)
	if err != nil {
		return err
	}
	if rebuilding {
		return fmt.Errorf("%w (the rebuilt copy replaces the live tables when it switches; wait for it)", ErrRebuildRunning)
	}
	return nil
}

// aggregatesToRepair returns the ids to repair by aggregate type, sorted
// and without repeats: the named ones, and the parked ones if asked.
func aggregatesToRepair(ctx context.Context, tx pgx.Tx, name string, o RepairOptions) (map[string][]string, error) {
	byType := map[string][]string{}
	if len(o.AggregateIDs) > 0 {
		byType[o.AggregateType] = slices.Clone(o.AggregateIDs)
	}
	if o.AllParked {
		aggs, err := deadletter.ParkedAggregates(ctx, tx, name, o.AggregateType, nil)
		if err != nil {
			return nil, err
		}
		for _, a := range aggs {
			byType[a.Type] = append(byType[a.Type], a.ID)
		}
	}
	if len(byType) == 0 {
		return nil, ErrNothingToRepair
	}
	for typ, ids := range byType {
		slices.Sort(ids)
		byType[typ] = slices.Compact(ids)
	}
	return byType, nil
}

// repairEventsSQL reads the events of some aggregates of one type that the
// projection has passed: at or before their segment's checkpoint or their
// bucket's floor (left by a scale), of the projection's event types, not
// discarded; with whether each is parked.
const repairEventsSQL = `
SELECT e.txid, e.id, e.aggregate_type, e.aggregate_id, e.event_type, e.version, e.schema_version,
       e.event_data, e.metadata, e.occurred_at, c.segment, d.status IS NOT NULL AS parked
  FROM readside.events e
  JOIN readside.projections p ON p.name = $1
  JOIN readside.checkpoints c ON c.projection = p.name AND c.segment = readside.readside_segment(e.aggregate_id, p.segments)
  LEFT JOIN readside.dead_letters d ON d.projection = p.name AND d.event_id = e.id AND d.status = 'parked'
  LEFT JOIN readside.checkpoint_buckets b ON b.projection = p.name AND b.bucket = readside.readside_segment(e.aggregate_id, 64)
 WHERE e.aggregate_type = $2 AND e.aggregate_id = ANY ($3::text[])
   AND ((e.txid, e.id) <= (c.cursor_txid, c.cursor_position) OR (e.txid, e.id) <= (b.floor_txid, b.floor_position))
   AND (cardinality($4::text[]) = 0 OR e.event_type = ANY ($4::text[]))
   AND NOT EXISTS (SELECT 1 FROM readside.dead_letters x WHERE x.projection = p.name AND x.event_id = e.id AND x.status = 'discarded')
 ORDER BY c.segment, e.aggregate_id, e.version`

// passedEvent is an event a repair re-applies.
type passedEvent struct {
	ev      outbox.Event
	segment int
	parked  bool // a dead letter: applied for the first time
}

// passedEvents reads the events of the aggregates the projection has passed
// (repairEventsSQL).
func passedEvents(ctx context.Context, tx pgx.Tx, spec projectors.Spec, typ string, ids []string) ([]passedEvent, error) {
	eventTypes := spec.EventTypes
	if eventTypes == nil {
		eventTypes = []string{}
	}
	rows, err := tx.Query(ctx, repairEventsSQL, spec.Name, typ, ids, eventTypes)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (passedEvent, error) {
		var x passedEvent
		e := &x.ev
		err := r.Scan(&e.Cursor.TxID, &e.Cursor.Position, &e.AggregateType, &e.AggregateID, &e.Type, &e.Version,
			&e.SchemaVersion, &e.Data, &e.Metadata, &e.OccurredAt, &x.segment, &x.parked)
		return x, err
	})
}

// reapply applies the passed events of the aggregates, segment by segment,
// in runs of consecutive events with the same Replay flag, marks the parked
// ones' dead letters retried, and says what it did per aggregate.
func reapply(ctx context.Context, tx pgx.Tx, p projectors.Projection, typ string, ids []string) ([]RepairedAggregate, error) {
	spec := p.Spec()
	events, err := passedEvents(ctx, tx, spec, typ, ids)
	if err != nil {
		return nil, err
	}
	var unparked []int64
	for run := range runs(events) {
		batch := &projectors.Batch{Segment: run[0].segment, Replay: !run[0].parked}
		for _, e := range run {
			batch.Events = append(batch.Events, e.ev)
			if e.parked {
				unparked = append(unparked, e.ev.ID())
			}
		}
		if err := projectors.ApplyTx(ctx, tx, p, batch); err != nil {
			return nil, err
		}
	}
	if len(unparked) > 0 {
		if err := deadletter.MarkEventsRetried(ctx, tx, spec.Name, unparked); err != nil {
			return nil, err
		}
	}
	return summarise(typ, ids, events), nil
}

// runs yields the longest runs of consecutive events with the same segment
// and the same parked flag.
func runs(events []passedEvent) iter.Seq[[]passedEvent] {
	return func(yield func([]passedEvent) bool) {
		for i := 0; i < len(events); {
			j := i + 1
			for j < len(events) && events[j].segment == events[i].segment && events[j].parked == events[i].parked {
				j++
			}
			if !yield(events[i:j]) {
				return
			}
			i = j
		}
	}
}

// summarise counts, per aggregate in the order of ids, the events replayed
// and unparked; Segment -1 for an aggregate without a passed event.
func summarise(typ string, ids []string, events []passedEvent) []RepairedAggregate {
	done := map[string]*RepairedAggregate{}
	for _, e := range events {
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
	out := make([]RepairedAggregate, 0, len(ids))
	for _, id := range ids {
		if a := done[id]; a != nil {
			out = append(out, *a)
		} else {
			out = append(out, RepairedAggregate{Type: typ, ID: id, Segment: -1})
		}
	}
	return out
}
