package projectorcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/readside/readside"
	"github.com/readside/readside/checkpoint"
	"github.com/readside/readside/internal/cli"
)

// Reporting periods of --wait.
const (
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

// follow waits for a reset or rebuild (readside.Client.Wait) and shows it:
// the job queued, the replay (a bar whose 0% is where the replay started),
// and for a rebuild the switch of the tables as its own step. A paused or
// halted projection, a cancelled job, --timeout and Ctrl-C end the wait
// with a reason; the job itself carries on in the fleet.
func (a *app) follow(ctx context.Context, c *readside.Client, job *readside.Job, stdout io.Writer, o waitOptions) error {
	w := &waiter{bin: a.name, job: job, timeout: o.timeout, rebuild: job.Kind == "readside_rebuild",
		retry: job.Kind == "readside_dead_letters_retry", scale: job.Kind == "readside_scale", r: newReporter(stdout), start: time.Now()}
	wctx := ctx
	if o.timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	err := c.Wait(wctx, job, w.show)
	if err == nil {
		return nil
	}
	w.r.interrupt()
	var blocked *readside.BlockedError
	var failed *readside.JobFailedError
	watch := fmt.Sprintf("%s status %s", w.bin, job.Projection)
	switch {
	case errors.As(err, &blocked):
		hint := fmt.Sprintf("`%s resume %s`", w.bin, blocked.Projection)
		what := "paused"
		if blocked.Status == checkpoint.Failed {
			what = "halted by a failing event (" + firstLine(blocked.LastError, 60) + ")"
			hint = fmt.Sprintf("`%s dead-letters list --projection %s`, then `%s resume %s`", w.bin, blocked.Projection, w.bin, blocked.Projection)
		}
		return fmt.Errorf("%s is %s: nothing replays until %s; the %s job %d is %s", blocked.Projection, what, hint, w.op(), job.ID, blocked.State)
	case errors.As(err, &failed):
		return fmt.Errorf("%s of %s: job %d %s: %s", w.op(), job.Projection, job.ID, failed.State, failed.LastError)
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted: the %s of %s carries on in the fleet (job %d); watch it with `%s`", w.op(), job.Projection, job.ID, watch)
	case wctx.Err() != nil:
		return fmt.Errorf("--timeout %s reached: the %s of %s carries on in the fleet (job %d); watch it with `%s`", w.timeout, w.op(), job.Projection, job.ID, watch)
	}
	return err
}

// waiter is one --wait: what it has shown so far.
type waiter struct {
	bin     string // the binary's name, in hints
	job     *readside.Job
	rebuild bool
	retry   bool
	scale   bool
	timeout time.Duration

	r      *reporter
	start  time.Time
	phase  readside.Phase
	maxLag int64 // the bar's 100%: the most lag seen since the replay began
}

func (w *waiter) op() string {
	switch {
	case w.rebuild:
		return "rebuild"
	case w.retry:
		return "dead-letter retry"
	case w.scale:
		return "scale"
	}
	return "reset"
}

// show renders one reading.
func (w *waiter) show(p readside.Progress) {
	switch p.Phase {
	case readside.PhaseDone:
		w.showDone()
	case readside.PhaseSwitch:
		w.showSwitch(p.State)
	case readside.PhaseReplay:
		w.showReplay(p.Replaying, p.Lag)
	default:
		w.showQueued(p)
	}
}

func (w *waiter) showDone() {
	w.r.finishBar()
	if w.rebuild {
		w.r.done(fmt.Sprintf("[2/2] switched the rebuilt tables of %s in", w.job.Projection))
	}
	w.r.done(fmt.Sprintf("%s of %s done in %s", w.op(), w.job.Projection, time.Since(w.start).Round(100*time.Millisecond)))
}

func (w *waiter) showSwitch(state string) {
	if w.phase != readside.PhaseSwitch {
		w.r.finishBar()
		w.phase = readside.PhaseSwitch
	}
	w.r.line(fmt.Sprintf("[2/2] switching the rebuilt tables of %s in (job %d %s)", w.job.Projection, w.job.ID, state))
}

func (w *waiter) showReplay(replaying string, lag int64) {
	if w.phase != readside.PhaseReplay {
		w.phase = readside.PhaseReplay
		w.maxLag = max(lag, 1)
		steps, verb := 1, "replaying"
		if w.rebuild {
			steps, verb = 2, "building"
		}
		w.r.startBar(fmt.Sprintf("[1/%d] %s %s", steps, verb, replaying), w.maxLag)
	}
	if lag > w.maxLag {
		w.maxLag = lag
		w.r.changeMax(w.maxLag)
	}
	w.r.set(w.maxLag-lag, w.maxLag, lag)
}

func (w *waiter) showQueued(p readside.Progress) {
	w.phase = readside.PhaseQueued
	msg := fmt.Sprintf("waiting for a projector to run job %d (%s)", w.job.ID, p.State)
	switch {
	case p.LastError != "":
		msg = fmt.Sprintf("job %d %s after %d attempts, last: %s", w.job.ID, p.State, p.Attempt, firstLine(p.LastError, 200))
	case time.Since(w.start) > queuedHintTime:
		msg += fmt.Sprintf("; is `%s run` running?", w.bin)
	}
	w.r.line(msg)
}
