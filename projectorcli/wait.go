package projectorcli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/rivertype"

	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/projectors"
)

// waitOptions are the --wait flags of reset and rebuild.
type waitOptions struct {
	wait    bool
	timeout time.Duration
}

func (w *waitOptions) flags(fs *cli.Flags, help string) {
	fs.FlagSet().BoolVar(&w.wait, "wait", false, help)
	fs.FlagSet().DurationVar(&w.timeout, "timeout", 0, "with --wait, give up waiting after this long (the job carries on); 0 means no limit")
}

func (a *app) follow(ctx context.Context, pool *pgxpool.Pool, jobs *projectors.Jobs, stdout, _ io.Writer, jobID int64, _, _, follow string, _ waitOptions) error {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	var firstApplied int64 = -1
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(stdout)
			return ctx.Err()
		case <-tick.C:
		}
		state, lastErr, err := jobs.State(ctx, jobID)
		if err != nil {
			return err
		}
		switch state {
		case rivertype.JobStateCancelled, rivertype.JobStateDiscarded:
			fmt.Fprintln(stdout)
			return fmt.Errorf("job %d %s: %s", jobID, state, lastErr)
		}
		segs, err := projectors.Status(ctx, pool, follow)
		if err != nil {
			return err
		}
		var lag, applied int64
		for _, s := range segs {
			lag += s.LagEvents
			applied += s.EventsApplied
		}
		if firstApplied < 0 {
			firstApplied = applied
		}
		elapsed := time.Since(start).Seconds()
		rate := float64(max(applied-firstApplied, 0)) / max(elapsed, 0.001)
		eta := "-"
		if rate > 0 {
			eta = (time.Duration(float64(lag)/rate) * time.Second).Round(time.Second).String()
		}
		done := float64(applied) / float64(max(applied+lag, 1))
		bar := strings.Repeat("#", int(done*30)) + strings.Repeat(".", 30-int(done*30))
		fmt.Fprintf(stdout, "\r[%s] %3.0f%%  %d events applied since start  %d behind  %.0f events/s  ETA %s  (job %s)   ",
			bar, done*100, max(applied-firstApplied, 0), lag, rate, eta, state)
		if state == rivertype.JobStateCompleted && (len(segs) == 0 || lag == 0) {
			fmt.Fprintf(stdout, "\ndone in %s\n", time.Since(start).Round(time.Millisecond))
			return nil
		}
	}
}
