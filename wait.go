package readside

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/riverqueue/river/rivertype"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/outbox"
)

// WaitPollDefault is how often Wait reads the job and the replay.
const WaitPollDefault = 500 * time.Millisecond

// Phase is where a followed operation is.
type Phase string

const (
	PhaseQueued Phase = "queued" // no fleet member has taken the job yet
	PhaseReplay Phase = "replay" // the projection replays (a rebuild: its copy builds)
	PhaseSwitch Phase = "switch" // a rebuild's copy caught up; the tables switch
	PhaseDone   Phase = "done"
)

// Progress is one reading of a followed operation.
type Progress struct {
	Job   *Job
	Phase Phase
	// State is River's state of the job.
	State string
	// Replaying is the projection that replays: the projection itself, or
	// a rebuild's copy.
	Replaying string
	// Lag is how many events Replaying still has to pass (all segments).
	Lag int64
	// Attempt is the job's attempts so far, and LastError the error of
	// the last failed one ("" when none failed): River retries it.
	Attempt   int
	LastError string
}

// BlockedError ends a wait when nothing can replay until an operator acts:
// the replaying projection is paused, or halted by a failing event.
type BlockedError struct {
	Job        *Job
	State      string // River's state of the job
	Projection string
	Status     checkpoint.Status // Paused or Failed
	LastError  string            // why it halted (Failed)
}

func (e *BlockedError) Error() string {
	what := "paused"
	if e.Status == checkpoint.Failed {
		what = "halted by a failing event (" + e.LastError + ")"
	}
	return fmt.Sprintf("%s is %s: nothing replays until it is resumed; job %d carries on", e.Projection, what, e.Job.ID)
}

// JobFailedError ends a wait when the fleet gave the job up (cancelled:
// the operation was refused, discarded: it failed every attempt).
type JobFailedError struct {
	Job       *Job
	State     string
	LastError string
}

func (e *JobFailedError) Error() string {
	return fmt.Sprintf("%s of %s: job %d %s: %s", e.Job.Kind, e.Job.Projection, e.Job.ID, e.State, e.LastError)
}

// Wait follows a queued operation until it is done: a reset until its job
// completed and the projection replayed up to the head, a rebuild until
// its tables are switched in, a dead-letter retry or a scale until its job
// completed.
// progress, when not nil, is called with each reading (every
// WaitPollDefault). It returns *BlockedError when the replaying projection
// is paused or halted, *JobFailedError when the fleet gave the job up, and
// ctx's error when ctx ends first; the operation itself carries on in the
// fleet in every case.
func (c *Client) Wait(ctx context.Context, job *Job, progress func(Progress)) error {
	replaying := job.Projection
	rebuild := job.Kind == (control.RebuildArgs{}).Kind()
	if rebuild {
		replaying = control.ShadowName(job.Projection)
	}
	f := &follower{rebuild: rebuild}
	tick := time.NewTicker(WaitPollDefault)
	defer tick.Stop()
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
			}
		}
		p, err := c.readProgress(ctx, job, replaying, f)
		if err != nil {
			return err
		}
		if progress != nil {
			progress(p)
		}
		if p.Phase == PhaseDone {
			return nil
		}
	}
}

func (c *Client) readProgress(ctx context.Context, job *Job, replaying string, f *follower) (Progress, error) {
	j, err := c.ctl.Client().JobGet(ctx, job.ID)
	if err != nil {
		return Progress{}, fmt.Errorf("job %d: %w", job.ID, err)
	}
	var args struct {
		Projection string `json:"projection"`
	}
	if err := json.Unmarshal(j.EncodedArgs, &args); err != nil || j.Kind != job.Kind || args.Projection != job.Projection {
		return Progress{}, fmt.Errorf("job %d is a %s of %q, not the %s of %q given", job.ID, j.Kind, args.Projection, job.Kind, job.Projection)
	}
	p := Progress{Job: job, State: string(j.State), Replaying: replaying, Attempt: j.Attempt}
	if n := len(j.Errors); n > 0 {
		p.LastError = j.Errors[n-1].Error
	}
	if j.State == rivertype.JobStateCancelled || j.State == rivertype.JobStateDiscarded {
		return p, &JobFailedError{Job: job, State: string(j.State), LastError: p.LastError}
	}
	if job.Kind == (control.RetryDeadLettersArgs{}).Kind() || job.Kind == (control.ScaleArgs{}).Kind() {
		p.Phase = PhaseQueued
		if j.State == rivertype.JobStateCompleted {
			p.Phase = PhaseDone
		}
		return p, nil
	}
	segs, err := observe.Status(ctx, c.db, replaying)
	if err != nil {
		return p, err
	}
	for _, s := range segs {
		if s.Status == checkpoint.Paused || s.Status == checkpoint.Failed {
			return p, &BlockedError{Job: job, State: p.State, Projection: s.Projection, Status: s.Status, LastError: s.LastError}
		}
		p.Lag += s.LagEvents
	}
	p.Phase = f.next(j.State == rivertype.JobStateCompleted, len(segs), p.Lag)
	return p, nil
}

// follower remembers the phase a rebuild was in: its copy's segments
// disappear when it switches.
type follower struct {
	rebuild bool
	phase   Phase
}

// next is the phase the operation is in: a reset is done when its job
// completed and the replay caught up (the job only moves the checkpoints);
// a rebuild when its job completed (the job waits for the copy and
// switches the tables).
func (f *follower) next(completed bool, segs int, lag int64) Phase {
	switch {
	case !f.rebuild && completed && lag == 0:
		f.phase = PhaseDone
	case !f.rebuild && completed:
		f.phase = PhaseReplay
	case !f.rebuild:
		f.phase = PhaseQueued
	case completed:
		f.phase = PhaseDone
	case segs > 0 && lag == 0 && f.phase == PhaseReplay,
		segs == 0 && (f.phase == PhaseReplay || f.phase == PhaseSwitch):
		// Caught up (or the copy is already gone): the control job
		// switches the tables in at its next check.
		f.phase = PhaseSwitch
	case segs > 0:
		f.phase = PhaseReplay
	default:
		f.phase = PhaseQueued
	}
	return f.phase
}

// WaitFor returns nil once every segment of each named projection has
// passed token (a consistency token: the cursor of a write,
// outbox.AppendResult.Cursor): its checkpoint is at or after the token, or
// the read window has passed the token and none of the segment's buckets
// holds a row between its checkpoint and the token (workers run a segment
// when an event of its buckets is announced). That means the write has
// been applied to their read models (or parked as a dead letter). It polls
// until ctx ends, then returns a *NotCaughtUpError naming the first
// projection behind (Uncommitted when the token's transaction was still
// open). A token of a transaction that rolled back, or that no transaction
// had, is refused at once with an error wrapping ErrTokenRolledBack or
// ErrTokenBeyondHead.
func (c *Client) WaitFor(ctx context.Context, token outbox.Cursor, projections ...string) error {
	return observe.WaitFor(ctx, c.db, token, projections...)
}

// WaitCaughtUp returns nil once the named projections (all of the
// client's when none) have applied every event committed when it was
// called; a *NotCaughtUpError when ctx ends first.
func (c *Client) WaitCaughtUp(ctx context.Context, projections ...string) error {
	if len(projections) == 0 {
		projections = c.names()
	}
	head, err := outbox.ReadHead(ctx, c.db)
	if err != nil {
		return err
	}
	return c.WaitFor(ctx, head.Latest, projections...)
}
