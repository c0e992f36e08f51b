package readside

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/readside/readside/adopt"
	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/deadletter"
	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// Errors operations return; errors.Is finds them in what they return.
var (
	// ErrRebuildRunning refuses a reset, a repair or a second rebuild while
	// a rebuild of the projection is in progress.
	ErrRebuildRunning = control.ErrRebuildRunning
	// ErrBeyondHead refuses a reset target past the last event of the log.
	ErrBeyondHead = outbox.ErrBeyondHead
	// ErrNothingToRetry: no parked dead letter matches a retry.
	ErrNothingToRetry = control.ErrNothingToRetry
	// ErrNothingToDiscard: no parked dead letter matches a discard.
	ErrNothingToDiscard = deadletter.ErrNothingToDiscard
	// ErrRepairUnsupported: the projection does not implement
	// projectors.Forgetter, so single aggregates cannot be repaired.
	ErrRepairUnsupported = control.ErrRepairUnsupported
	// ErrNothingToRepair: no aggregate was named and none is parked.
	ErrNothingToRepair = control.ErrNothingToRepair
	// ErrDependents refuses a rebuild of a projection whose tables other
	// objects depend on (views, foreign keys), which the switch would drop.
	ErrDependents = control.ErrDependents
	// ErrScaleSplit refuses a scale from or to a segment count that does
	// not divide 64 (outbox rows carry one of 64 hash buckets).
	ErrScaleSplit = control.ErrScaleSplit
	// ErrNoTables: the projection lists no Spec.Tables, so it cannot be
	// rebuilt in a copy.
	ErrNoTables = errors.New("the projection lists no tables to rebuild (projectors.Spec.Tables)")
)

// Job is a control operation queued for the fleet (a River job on queue
// readside_control), which any running member executes.
type Job struct {
	ID         int64
	Kind       string // readside_reset, readside_rebuild, readside_scale, readside_dead_letters_retry
	Projection string
	// Duplicate: the same operation was already queued; this is that job.
	Duplicate bool
	// State is River's state of the job when it was queued or found.
	State string
}

// ResetTarget is where Reset moves a projection's checkpoints.
type ResetTarget struct{ to string }

// ResetToStart empties the read model (the projection's Reset) and replays
// every event.
func ResetToStart() ResetTarget { return ResetTarget{"start"} }

// ResetToCursor moves the checkpoints to c without emptying the read model:
// idempotent projections converge, counters would count twice. A cursor at
// or after a transaction still running is clamped to the end of the read
// window; one beyond the head of the log is refused (ErrBeyondHead).
func ResetToCursor(c outbox.Cursor) ResetTarget { return ResetTarget{"cursor:" + c.String()} }

// ResetToTime moves the checkpoints to just before the first event that
// occurred at or after t, without emptying the read model. A time after
// the last event is refused.
func ResetToTime(t time.Time) ResetTarget {
	return ResetTarget{"time:" + t.UTC().Format(time.RFC3339Nano)}
}

func (t ResetTarget) String() string { return t.to }

// Reset queues a reset of projection name to target. It checks first, so
// that nothing is queued that the fleet would refuse: the projection is
// one of the client's and registered (a worker has run it), no rebuild of
// it is in progress, and the target is not beyond the head of the log.
// Follow it with Wait.
func (c *Client) Reset(ctx context.Context, name string, to ResetTarget) (*Job, error) {
	if to.to == "" {
		return nil, errors.New("reset: no target (ResetToStart, ResetToCursor or ResetToTime)")
	}
	if _, err := c.projection(name); err != nil {
		return nil, err
	}
	if err := c.controllable(ctx, name); err != nil {
		return nil, err
	}
	if err := control.CheckResetTarget(ctx, c.db, to.String()); err != nil {
		return nil, fmt.Errorf("reset %s: %w", name, err)
	}
	return c.enqueue(ctx, control.ResetArgs{Projection: name, To: to.String()}, name)
}

// Rebuild queues a blue/green rebuild of projection name: the fleet builds
// a copy of its tables from the first event beside the live ones, then
// swaps them in one transaction. Readers never see an empty model.
func (c *Client) Rebuild(ctx context.Context, name string) (*Job, error) {
	p, err := c.projection(name)
	if err != nil {
		return nil, err
	}
	if len(p.Spec().Tables) == 0 {
		return nil, fmt.Errorf("rebuild %s: %w", name, ErrNoTables)
	}
	if err := c.controllable(ctx, name); err != nil {
		return nil, err
	}
	if err := control.CheckRebuild(ctx, c.db, p); err != nil {
		return nil, err
	}
	return c.enqueue(ctx, control.RebuildArgs{Projection: name}, name)
}

// Scale queues a change of projection name's segment count to segments,
// without a reset and without replaying anything: the fleet keeps running,
// and the job regroups the 64 buckets the outbox rows carry into the new
// segments, each bucket keeping where it stands (README, Operations). It
// checks first: the projection is one of the client's, registered and not
// being rebuilt, and both its segment count and segments divide 64
// (ErrScaleSplit). Follow it with Wait: it is done when the job completed.
func (c *Client) Scale(ctx context.Context, name string, segments int) (*Job, error) {
	if _, err := c.projection(name); err != nil {
		return nil, err
	}
	if err := c.controllable(ctx, name); err != nil {
		return nil, err
	}
	if err := control.CheckScale(ctx, c.db, name, segments); err != nil {
		return nil, err
	}
	return c.enqueue(ctx, control.ScaleArgs{Projection: name, Segments: segments}, name)
}

// controllable checks that name is registered and not being rebuilt.
func (c *Client) controllable(ctx context.Context, name string) error {
	if err := checkpoint.Exists(ctx, c.db, name); err != nil {
		return fmt.Errorf("%w (has a projector run it yet?)", err)
	}
	rebuilding, err := checkpoint.Rebuilding(ctx, c.db, name)
	if err != nil {
		return err
	}
	if rebuilding {
		return fmt.Errorf("%s: %w; wait for it to switch (its copy is %s)", name, ErrRebuildRunning, control.ShadowName(name))
	}
	return nil
}

func (c *Client) enqueue(ctx context.Context, args river.JobArgs, projection string) (*Job, error) {
	res, err := c.ctl.Client().Insert(ctx, args, nil)
	if err != nil {
		return nil, fmt.Errorf("queue %s: %w", args.Kind(), err)
	}
	return &Job{ID: res.Job.ID, Kind: args.Kind(), Projection: projection, Duplicate: res.UniqueSkippedAsDuplicate,
		State: string(res.Job.State)}, nil
}

// Pause stops the fleet applying projection name: workers let go of its
// segments. It returns the number of segments paused.
func (c *Client) Pause(ctx context.Context, name string) (int, error) {
	return c.setStatus(ctx, name, checkpoint.Paused)
}

// Resume restarts a paused projection, or one halted by a failing event
// (OnError Halt). It returns the number of segments resumed.
func (c *Client) Resume(ctx context.Context, name string) (int, error) {
	return c.setStatus(ctx, name, checkpoint.Running)
}

func (c *Client) setStatus(ctx context.Context, name string, s checkpoint.Status) (int, error) {
	if err := c.known(ctx, name); err != nil {
		return 0, err
	}
	return checkpoint.SetStatus(ctx, c.db, name, s)
}

// DeadLetters lists dead letters in apply order. A named projection must
// be known (the client's or registered).
func (c *Client) DeadLetters(ctx context.Context, f DeadLetterFilter) ([]DeadLetter, error) {
	if f.Projection != "" {
		if err := c.known(ctx, f.Projection); err != nil {
			return nil, err
		}
	}
	return deadletter.List(ctx, c.db, f)
}

// RetryDeadLetters queues a retry of projection name's parked dead letters
// (ids; none means all of them): each parked aggregate is re-applied in
// version order, in its own transaction; one that fails again stays parked
// with everything after it. ErrNothingToRetry when none matches.
func (c *Client) RetryDeadLetters(ctx context.Context, name string, ids []int64) (*Job, error) {
	if err := c.known(ctx, name); err != nil {
		return nil, err
	}
	dls, err := deadletter.List(ctx, c.db, deadletter.Filter{Projection: name, IDs: ids})
	if err != nil {
		return nil, err
	}
	if len(dls) == 0 {
		return nil, fmt.Errorf("retry %s: %w", name, ErrNothingToRetry)
	}
	return c.enqueue(ctx, control.RetryDeadLettersArgs{Projection: name, IDs: ids}, name)
}

// DiscardDeadLetters gives parked dead letters up (ids, of projection
// name, or of any projection when name is empty): the projection never
// applies them, also when a reset replays them. It returns how many it
// discarded; ErrNothingToDiscard when none matched. ids must not be empty
// (DiscardAllDeadLetters gives up every one).
func (c *Client) DiscardDeadLetters(ctx context.Context, name string, ids []int64) (int, error) {
	if len(ids) == 0 {
		return 0, errors.New("discard: no dead-letter ids given (DiscardAllDeadLetters discards every one)")
	}
	return c.discard(ctx, name, ids)
}

// DiscardAllDeadLetters gives up every parked dead letter of projection
// name, or of every projection when name is empty.
func (c *Client) DiscardAllDeadLetters(ctx context.Context, name string) (int, error) {
	return c.discard(ctx, name, nil)
}

func (c *Client) discard(ctx context.Context, name string, ids []int64) (int, error) {
	if name != "" {
		if err := c.known(ctx, name); err != nil {
			return 0, err
		}
	}
	return control.DiscardDeadLetters(ctx, c.db, name, ids)
}

// Event reads one event of the log (a dead letter's, for instance).
func (c *Client) Event(ctx context.Context, id int64) (*outbox.Event, error) {
	var e outbox.Event
	err := c.db.QueryRow(ctx, `SELECT txid, id, aggregate_type, aggregate_id, event_type, event_data, metadata, schema_version, version, occurred_at
		FROM readside.events WHERE id = $1`, id).Scan(&e.Cursor.TxID, &e.Cursor.Position, &e.AggregateType, &e.AggregateID,
		&e.Type, &e.Data, &e.Metadata, &e.SchemaVersion, &e.Version, &e.OccurredAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("event %d: %w", id, ErrNoEvent)
	}
	if err != nil {
		return nil, fmt.Errorf("event %d: %w", id, err)
	}
	return &e, nil
}

// ErrNoEvent: no event has the id.
var ErrNoEvent = errors.New("no such event")

// Repair rebuilds what projection name holds for a few aggregates from
// their events, while the fleet runs, in one transaction: it locks the
// projection's checkpoints (batches in flight finish first), calls the
// projection's Forget for them and re-applies their events up to the
// checkpoints, as replays (no side effect fires again), parked ones as new.
// The projection must implement projectors.Forgetter.
func (c *Client) Repair(ctx context.Context, name string, o RepairOptions) ([]RepairedAggregate, error) {
	p, err := c.projection(name)
	if err != nil {
		return nil, err
	}
	if _, ok := p.(projectors.Forgetter); !ok {
		return nil, fmt.Errorf("repair %s: %w; reset or rebuild it instead", name, ErrRepairUnsupported)
	}
	if err := c.controllable(ctx, name); err != nil {
		return nil, err
	}
	return control.Repair(ctx, c.db, p, o)
}

// Report is what Status found.
type Report struct {
	// Segments of the registered projections asked for (all when none).
	Segments []SegmentStatus
	// NeverRun are the client's projections (of those asked for) that no
	// worker has registered: their lag is the whole outbox, NeverRunLag.
	NeverRun    []string
	NeverRunLag Lag
	// WindowHolder is the oldest event-writing transaction holding the
	// read window back, nil when none is older than a second. When this
	// role cannot see its age (Holder.AgeUnknown: another role's session,
	// and this role lacks pg_read_all_stats), it is reported while a
	// segment lags by more than a second.
	WindowHolder *outbox.Holder
	// Unsubscribed are the aggregate types in the log that none of the
	// client's projections takes.
	Unsubscribed []UnsubscribedType
	// Adoptions are the application tables readside copies (projector
	// adopt): the backfill's state and the UPDATEs, DELETEs and TRUNCATEs
	// of them that readside's append-only log does not mirror.
	Adoptions []adopt.Status
}

// Lag is how far behind the log something is.
type Lag struct {
	Events  int64   // up to LagCountCap exactly
	Seconds float64 // age of the oldest event waiting
}

// LagCountCap is up to where lag counts are exact.
const LagCountCap = observe.LagCountCap

// Status reports every segment of the named projections (all registered
// ones when none), the client's projections never run, the read window's
// holder and unsubscribed aggregate types, read from the database.
func (c *Client) Status(ctx context.Context, names ...string) (*Report, error) {
	segs, err := observe.Status(ctx, c.db, names...)
	if err != nil {
		return nil, err
	}
	r := &Report{Segments: segs}
	if r.Unsubscribed, err = observe.UnsubscribedEvents(ctx, c.db, c.cfg.Projections...); err != nil {
		return nil, err
	}
	if r.Adoptions, err = adopt.List(ctx, c.db); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	seen := map[string]bool{}
	for _, s := range segs {
		seen[s.Projection] = true
	}
	for _, p := range c.cfg.Projections {
		name := p.Spec().Name
		if !seen[name] && (len(names) == 0 || contains(names, name)) {
			r.NeverRun = append(r.NeverRun, name)
		}
	}
	if len(r.NeverRun) > 0 {
		if err := c.db.QueryRow(ctx, `SELECT (SELECT count(*) FROM (SELECT 1 FROM readside.outbox LIMIT $1) x),
			coalesce((SELECT extract(epoch FROM now() - min(created_at)) FROM readside.outbox), 0)::float8`, LagCountCap).
			Scan(&r.NeverRunLag.Events, &r.NeverRunLag.Seconds); err != nil {
			return nil, fmt.Errorf("status: %w", err)
		}
	}
	if r.WindowHolder, err = outbox.WindowHolder(ctx, c.db); err != nil {
		return nil, err
	}
	if h := r.WindowHolder; h != nil && !(h.Age > time.Second || h.AgeUnknown && r.lagging()) {
		r.WindowHolder = nil
	}
	return r, nil
}

// lagging reports whether a segment, or a projection never run, is more
// than a second behind: a holder whose age this role cannot see is
// reported only then.
func (r *Report) lagging() bool {
	for _, s := range r.Segments {
		if s.LagSeconds > 1 {
			return true
		}
	}
	return len(r.NeverRun) > 0 && r.NeverRunLag.Seconds > 1
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
