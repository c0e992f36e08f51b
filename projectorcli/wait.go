package projectorcli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/riverqueue/river/rivertype"

	"github.com/readside/readside/checkpoint"
	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/projectors/control"
	"github.com/readside/readside/projectors/observe"
)

// Polling and reporting periods of --wait.
const (
	waitPoll       = 500 * time.Millisecond
	plainEvery     = 5 * time.Second  // a plain progress line at most this often off a terminal
	queuedHintTime = 10 * time.Second // after this long queued, ask whether a projector runs
)

// waitOptions are the --wait flags of reset and rebuild.
type waitOptions struct {
	wait    bool
	timeout time.Duration
}

func (w *waitOptions) flags(fs *cli.Flags, help string) {
	fs.FlagSet().BoolVar(&w.wait, "wait", false, help)
	fs.FlagSet().DurationVar(&w.timeout, "timeout", 0, "with --wait, stop waiting after this long and exit 1 (the job carries on); 0 means no limit")
}

// follow waits for a reset or rebuild: the job queued, the replay (a bar
// whose 0% is where the replay started), and for a rebuild the switch of
// the tables as its own step. A paused or halted projection, a cancelled
// job, --timeout and Ctrl-C end the wait with a reason; the job itself
// carries on in the fleet.
func (a *app) follow(ctx context.Context, pool *dbschema.Pool, jobs *control.Jobs, stdout, _ io.Writer, jobID int64, kind, name, follow string, o waitOptions) error {
	w := &waiter{bin: a.name, pool: pool, jobs: jobs, jobID: jobID, name: name, follow: follow, timeout: o.timeout,
		rebuild: kind == (control.RebuildArgs{}).Kind(), r: newReporter(stdout), start: time.Now()}
	wctx := ctx
	if o.timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	tick := time.NewTicker(waitPoll)
	defer tick.Stop()
	for first := true; ; first = false {
		if !first {
			select {
			case <-wctx.Done():
				w.r.interrupt()
				return w.stopped(ctx, wctx, wctx.Err())
			case <-tick.C:
			}
		}
		done, err := w.check(ctx, wctx)
		if err != nil || done {
			return err
		}
	}
}

// phase is where a followed job is.
type phase string

const (
	phaseQueued phase = "queued" // no projector has taken the job yet
	phaseReplay phase = "replay" // the projection replays (a rebuild: its shadow)
	phaseSwitch phase = "switch" // a rebuild's shadow caught up; the tables switch
	phaseDone   phase = "done"
)

// waiter is one --wait: the job it follows and what it has shown so far.
type waiter struct {
	bin     string // the binary's name, in hints
	pool    *dbschema.Pool
	jobs    *control.Jobs
	jobID   int64
	name    string // the projection reset or rebuilt
	follow  string // the projection that replays (a rebuild's shadow)
	rebuild bool
	timeout time.Duration

	r      *reporter
	start  time.Time
	phase  phase
	maxLag int64 // the bar's 100%: the most lag seen since the replay began
}

func (w *waiter) op() string {
	if w.rebuild {
		return "rebuild"
	}
	return "reset"
}

// stopped says why the wait ended when ctx (Ctrl-C) or wctx (--timeout)
// did, and is err otherwise.
func (w *waiter) stopped(ctx, wctx context.Context, err error) error {
	watch := fmt.Sprintf("%s status %s", w.bin, w.name)
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted: the %s of %s carries on in the fleet (job %d); watch it with `%s`", w.op(), w.name, w.jobID, watch)
	case wctx.Err() != nil:
		return fmt.Errorf("--timeout %s reached: the %s of %s carries on in the fleet (job %d); watch it with `%s`", w.timeout, w.op(), w.name, w.jobID, watch)
	}
	return err
}

// check reads the job and the replay once and shows where they are; done
// when the job has finished its work.
func (w *waiter) check(ctx, wctx context.Context) (done bool, err error) {
	state, lastErr, err := w.jobs.State(wctx, w.jobID)
	if err != nil {
		w.r.interrupt()
		return false, w.stopped(ctx, wctx, err)
	}
	if state == rivertype.JobStateCancelled || state == rivertype.JobStateDiscarded {
		w.r.interrupt()
		return false, fmt.Errorf("%s of %s: job %d %s: %s", w.op(), w.name, w.jobID, state, lastErr)
	}
	segs, err := observe.Status(wctx, w.pool, w.follow)
	if err != nil {
		w.r.interrupt()
		return false, w.stopped(ctx, wctx, err)
	}
	if err := w.blocked(segs, state); err != nil {
		w.r.interrupt()
		return false, err
	}
	var lag int64
	for _, s := range segs {
		lag += s.LagEvents
	}
	switch w.next(state == rivertype.JobStateCompleted, len(segs), lag) {
	case phaseDone:
		w.showDone()
		return true, nil
	case phaseSwitch:
		w.showSwitch(state)
	case phaseReplay:
		w.showReplay(lag)
	default:
		w.showQueued(state)
	}
	return false, nil
}

// blocked is the reason nothing replays when a segment of the followed
// projection is paused or halted by a failing event.
func (w *waiter) blocked(segs []observe.SegmentStatus, state rivertype.JobState) error {
	for _, s := range segs {
		if s.Status != checkpoint.Paused && s.Status != checkpoint.Failed {
			continue
		}
		what := "paused"
		hint := fmt.Sprintf("`%s resume %s`", w.bin, s.Projection)
		if s.Status == checkpoint.Failed {
			what = "halted by a failing event (" + firstLine(s.LastError, 60) + ")"
			hint = fmt.Sprintf("`%s dead-letters list --projection %s`, then `%s resume %s`", w.bin, s.Projection, w.bin, s.Projection)
		}
		return fmt.Errorf("%s is %s: nothing replays until %s; the %s job %d is %s", s.Projection, what, hint, w.op(), w.jobID, state)
	}
	return nil
}

// next is the phase the job is in: a reset is done when its job completed
// and the replay caught up (the job only moves the checkpoints).
func (w *waiter) next(completed bool, segs int, lag int64) phase {
	if w.rebuild {
		return w.nextRebuild(completed, segs, lag)
	}
	switch {
	case completed && lag == 0:
		return phaseDone
	case completed:
		return phaseReplay
	}
	return phaseQueued
}

// nextRebuild: a rebuild is done when its job completed (the job itself
// waits for the shadow to catch up and switches the tables).
func (w *waiter) nextRebuild(completed bool, segs int, lag int64) phase {
	switch {
	case completed:
		return phaseDone
	case segs > 0 && lag == 0 && w.phase == phaseReplay,
		segs == 0 && (w.phase == phaseReplay || w.phase == phaseSwitch):
		// Caught up (or the shadow is already gone): the control job
		// switches the tables in at its next check.
		return phaseSwitch
	case segs > 0:
		return phaseReplay
	}
	return phaseQueued
}

func (w *waiter) showDone() {
	w.r.finishBar()
	if w.rebuild {
		w.r.done(fmt.Sprintf("[2/2] switched the rebuilt tables of %s in", w.name))
	}
	w.r.done(fmt.Sprintf("%s of %s done in %s", w.op(), w.name, time.Since(w.start).Round(100*time.Millisecond)))
}

func (w *waiter) showSwitch(state rivertype.JobState) {
	if w.phase != phaseSwitch {
		w.r.finishBar()
		w.phase = phaseSwitch
	}
	w.r.line(fmt.Sprintf("[2/2] switching the rebuilt tables of %s in (job %d %s)", w.name, w.jobID, state))
}

func (w *waiter) showReplay(lag int64) {
	if w.phase != phaseReplay {
		w.phase = phaseReplay
		w.maxLag = max(lag, 1)
		steps, verb := 1, "replaying"
		if w.rebuild {
			steps, verb = 2, "building"
		}
		w.r.startBar(fmt.Sprintf("[1/%d] %s %s", steps, verb, w.follow), w.maxLag)
	}
	if lag > w.maxLag {
		w.maxLag = lag
		w.r.changeMax(w.maxLag)
	}
	w.r.set(w.maxLag-lag, w.maxLag, lag)
}

func (w *waiter) showQueued(state rivertype.JobState) {
	w.phase = phaseQueued
	msg := fmt.Sprintf("waiting for a projector to run job %d (%s)", w.jobID, state)
	if time.Since(w.start) > queuedHintTime {
		msg += fmt.Sprintf("; is `%s run` running?", w.bin)
	}
	w.r.line(msg)
}
