package projectorcli

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/rivertype"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/readside/readside/checkpoint"
	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/projectors"
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
func (a *app) follow(ctx context.Context, pool *pgxpool.Pool, jobs *projectors.Jobs, stdout, _ io.Writer, jobID int64, kind, name, follow string, o waitOptions) error {
	rebuild := kind == (projectors.RebuildArgs{}).Kind()
	op := "reset"
	if rebuild {
		op = "rebuild"
	}
	watch := fmt.Sprintf("%s status %s", a.name, name)
	wctx := ctx
	if o.timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	stop := func(err error) error {
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("interrupted: the %s of %s carries on in the fleet (job %d); watch it with `%s`", op, name, jobID, watch)
		case wctx.Err() != nil:
			return fmt.Errorf("--timeout %s reached: the %s of %s carries on in the fleet (job %d); watch it with `%s`", o.timeout, op, name, jobID, watch)
		}
		return err
	}

	r := newReporter(stdout)
	start := time.Now()
	steps := 1
	if rebuild {
		steps = 2
	}
	var (
		phase  string // queued, replay, switch
		maxLag int64
	)
	tick := time.NewTicker(waitPoll)
	defer tick.Stop()
	for first := true; ; first = false {
		if !first {
			select {
			case <-wctx.Done():
				r.interrupt()
				return stop(wctx.Err())
			case <-tick.C:
			}
		}
		state, lastErr, err := jobs.State(wctx, jobID)
		if err != nil {
			r.interrupt()
			return stop(err)
		}
		switch state {
		case rivertype.JobStateCancelled, rivertype.JobStateDiscarded:
			r.interrupt()
			return fmt.Errorf("%s of %s: job %d %s: %s", op, name, jobID, state, lastErr)
		}
		segs, err := projectors.Status(wctx, pool, follow)
		if err != nil {
			r.interrupt()
			return stop(err)
		}
		var lag int64
		for _, s := range segs {
			lag += s.LagEvents
			if s.Status == checkpoint.Paused || s.Status == checkpoint.Failed {
				r.interrupt()
				what := "paused"
				hint := fmt.Sprintf("`%s resume %s`", a.name, s.Projection)
				if s.Status == checkpoint.Failed {
					what = "halted by a failing event (" + firstLine(s.LastError, 60) + ")"
					hint = fmt.Sprintf("`%s dead-letters list --projection %s`, then `%s resume %s`", a.name, s.Projection, a.name, s.Projection)
				}
				return fmt.Errorf("%s is %s: nothing replays until %s; the %s job %d is %s", s.Projection, what, hint, op, jobID, state)
			}
		}
		completed := state == rivertype.JobStateCompleted

		switch {
		case completed && (!rebuild && lag == 0 || rebuild):
			r.finishBar()
			if rebuild {
				r.done(fmt.Sprintf("[2/2] switched the rebuilt tables of %s in", name))
			}
			r.done(fmt.Sprintf("%s of %s done in %s", op, name, time.Since(start).Round(100*time.Millisecond)))
			return nil
		case rebuild && len(segs) > 0 && lag == 0 && phase == "replay",
			rebuild && len(segs) == 0 && (phase == "replay" || phase == "switch"):
			// Caught up (or the shadow is already gone): the control job
			// switches the tables in at its next check.
			if phase != "switch" {
				r.finishBar()
				phase = "switch"
			}
			r.line(fmt.Sprintf("[2/2] switching the rebuilt tables of %s in (job %d %s)", name, jobID, state))
		case (rebuild && len(segs) > 0) || (!rebuild && completed):
			if phase != "replay" {
				phase = "replay"
				maxLag = max(lag, 1)
				r.startBar(fmt.Sprintf("[1/%d] %s %s", steps, replayVerb(rebuild), follow), maxLag)
			}
			if lag > maxLag {
				maxLag = lag
				r.changeMax(maxLag)
			}
			r.set(maxLag-lag, maxLag, lag)
		default:
			phase = "queued"
			msg := fmt.Sprintf("waiting for a projector to run job %d (%s)", jobID, state)
			if time.Since(start) > queuedHintTime {
				msg += fmt.Sprintf("; is `%s run` running?", a.name)
			}
			r.line(msg)
		}
	}
}

func replayVerb(rebuild bool) string {
	if rebuild {
		return "building"
	}
	return "replaying"
}

// reporter shows progress: a bar fitted to the terminal's width, or off a
// terminal (a log file, a pipe) a plain line at most every plainEvery.
type reporter struct {
	w     io.Writer
	tty   bool
	width int
	bar   *progressbar.ProgressBar
	desc  string

	lastLine  string
	lastPrint time.Time
	onLine    bool // a \r line is on screen
}

func newReporter(w io.Writer) *reporter {
	r := &reporter{w: w, width: 80}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		r.tty = true
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 0 {
			r.width = cols
		}
	}
	return r
}

func crop(s string, n int) string {
	if n <= 1 {
		return ""
	}
	rs := []rune(s)
	if len(rs) > n {
		return string(rs[:n-1]) + "…"
	}
	return s
}

// line shows a status line: in place on a terminal, else printed when it
// changes or every plainEvery.
func (r *reporter) line(s string) {
	if r.tty {
		fmt.Fprintf(r.w, "\r\x1b[K%s", crop(s, r.width-1))
		r.onLine = true
		return
	}
	if s != r.lastLine || time.Since(r.lastPrint) >= plainEvery {
		fmt.Fprintln(r.w, s)
		r.lastLine, r.lastPrint = s, time.Now()
	}
}

func (r *reporter) startBar(desc string, total int64) {
	r.desc = desc
	if !r.tty {
		r.lastLine = ""
		return
	}
	if r.onLine {
		fmt.Fprint(r.w, "\r\x1b[K")
		r.onLine = false
	}
	r.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(r.w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionFullWidth(),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("ev"),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(0),
		progressbar.OptionSetRenderBlankState(true),
		progressbar.OptionUseANSICodes(true),
	)
}

func (r *reporter) changeMax(total int64) {
	if r.bar != nil {
		r.bar.ChangeMax64(total)
	}
}

// set reports done of total events replayed, lag left.
func (r *reporter) set(done, total, lag int64) {
	if r.bar != nil {
		_ = r.bar.Set64(done)
		return
	}
	pct := 100 * float64(done) / float64(max(total, 1))
	s := fmt.Sprintf("%s: %3.0f%% (%d of %d events replayed, %d behind)", r.desc, pct, done, total, lag)
	if time.Since(r.lastPrint) >= plainEvery || r.lastLine == "" {
		fmt.Fprintln(r.w, s)
		r.lastLine, r.lastPrint = s, time.Now()
	}
}

func (r *reporter) finishBar() {
	if r.bar != nil {
		_ = r.bar.Finish()
		fmt.Fprintln(r.w)
		r.bar = nil
	} else if r.desc != "" && !r.tty {
		fmt.Fprintf(r.w, "%s: 100%%\n", r.desc)
	}
	r.desc = ""
}

// interrupt leaves the cursor on a fresh line so that the reason that
// follows is not glued to a bar.
func (r *reporter) interrupt() {
	if r.bar != nil {
		_ = r.bar.Exit()
		fmt.Fprintln(r.w)
		r.bar = nil
	} else if r.onLine {
		fmt.Fprintln(r.w)
	}
	r.onLine = false
}

func (r *reporter) done(s string) {
	if r.onLine {
		fmt.Fprint(r.w, "\r\x1b[K")
		r.onLine = false
	}
	fmt.Fprintln(r.w, s)
}
