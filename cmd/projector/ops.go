package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/readside/readside/checkpoint"
	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/migrations"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// connectChecked connects and checks the schema, for operator commands.
func connectChecked(ctx context.Context, url string) (*pgxpool.Pool, error) {
	pool, err := cli.Connect(ctx, url, 4)
	if err != nil {
		return nil, err
	}
	if err := migrations.Check(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

func runReset(ctx context.Context, args []string, stdout io.Writer) error {
	var url, to, toTime string
	var toStart, wait bool
	fs := cli.NewFlagSet("projector reset")
	fs.String(&url, "database-url", "DATABASE_URL", cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.BoolVar(&toStart, "to-start", false, "empty the read model and replay from the first event (the default)")
	fs.StringVar(&to, "to", "", "move the checkpoints to this cursor (TXID/POSITION) without emptying the read model")
	fs.StringVar(&toTime, "to-time", "", "move the checkpoints to just before the first event at or after this RFC 3339 time, without emptying the read model")
	fs.BoolVar(&wait, "wait", false, "wait, with a progress bar, until the projection has caught up again")
	if err := fs.Parse(args, stdout, 1); err != nil {
		return err
	}
	name := fs.Arg(0)
	target := "start"
	n := 0
	if toStart {
		n++
	}
	if to != "" {
		n++
		target = "cursor:" + to
	}
	if toTime != "" {
		n++
		target = "time:" + toTime
	}
	if n > 1 {
		return errors.New("reset: give one of --to-start, --to, --to-time")
	}
	if err := projectors.ParseResetTarget(target); err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	if _, err := selectProjections(name); err != nil {
		return err
	}
	pool, err := openForControl(ctx, url, name)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := projectors.CheckResetTarget(ctx, pool, target); err != nil {
		return fmt.Errorf("reset %s: %w", name, err)
	}
	return enqueueAndWait(ctx, pool, stdout, projectors.ResetArgs{Projection: name, To: target}, name, wait)
}

// openForControl connects for a reset or rebuild of projection name, which
// must be registered and not being rebuilt.
func openForControl(ctx context.Context, url, name string) (*pgxpool.Pool, error) {
	pool, err := connectChecked(ctx, url)
	if err != nil {
		return nil, err
	}
	var rebuilding bool
	err = checkpoint.Exists(ctx, pool, name)
	if err != nil {
		err = fmt.Errorf("%w (has a projector run it yet?)", err)
	} else if err = pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM projections WHERE rebuild_of = $1)`, name).Scan(&rebuilding); err == nil && rebuilding {
		err = fmt.Errorf("%s: %w; wait for it to switch (projector status shows %s)", name, projectors.ErrRebuildRunning, projectors.ShadowName(name))
	}
	if err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

func runRebuild(ctx context.Context, args []string, stdout io.Writer) error {
	var url string
	var wait bool
	fs := cli.NewFlagSet("projector rebuild")
	fs.String(&url, "database-url", "DATABASE_URL", cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.BoolVar(&wait, "wait", false, "wait, with a progress bar, until the rebuilt tables are switched in")
	if err := fs.Parse(args, stdout, 1); err != nil {
		return err
	}
	name := fs.Arg(0)
	projs, err := selectProjections(name)
	if err != nil {
		return err
	}
	if len(projs[0].Spec().Tables) == 0 {
		return fmt.Errorf("rebuild: %s has no tables to rebuild", name)
	}
	pool, err := openForControl(ctx, url, name)
	if err != nil {
		return err
	}
	defer pool.Close()
	return enqueueAndWait(ctx, pool, stdout, projectors.RebuildArgs{Projection: name}, projectors.ShadowName(name), wait)
}

// enqueueAndWait inserts the control job; with wait it follows the job and
// then the replay of `follow` with a progress bar until it has caught up.
func enqueueAndWait(ctx context.Context, pool *pgxpool.Pool, stdout io.Writer, args river.JobArgs, follow string, wait bool) error {
	jobs, err := projectors.NewJobs(pool)
	if err != nil {
		return err
	}
	res, err := jobs.Enqueue(ctx, args)
	if err != nil {
		return err
	}
	if res.UniqueSkippedAsDuplicate {
		fmt.Fprintf(stdout, "%s: already queued as job %d (state %s)\n", args.Kind(), res.Job.ID, res.Job.State)
	} else {
		fmt.Fprintf(stdout, "%s: queued as job %d; a running projector executes it\n", args.Kind(), res.Job.ID)
	}
	if !wait {
		return nil
	}
	return followJob(ctx, pool, jobs, stdout, res.Job.ID, follow)
}

func followJob(ctx context.Context, pool *pgxpool.Pool, jobs *projectors.Jobs, stdout io.Writer, jobID int64, follow string) error {
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

func runDeadLetters(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("dead-letters: want list, show, retry or discard")
	}
	sub, rest := args[0], args[1:]
	var url, projection, status, idList string
	var all bool
	fs := cli.NewFlagSet("projector dead-letters " + sub)
	fs.String(&url, "database-url", "DATABASE_URL", cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.StringVar(&projection, "projection", "", "only this projection")
	fs.StringVar(&idList, "ids", "", "comma-separated dead-letter ids")
	nargs := 0
	switch sub {
	case "list":
		fs.StringVar(&status, "status", "parked", "parked, retried, discarded or all")
	case "show":
		nargs = 1
	case "retry", "discard":
		fs.BoolVar(&all, "all", false, "every parked dead letter (of --projection)")
	default:
		return fmt.Errorf("dead-letters: unknown subcommand %q (want list, show, retry or discard)", sub)
	}
	if err := fs.Parse(rest, stdout, nargs); err != nil {
		return err
	}
	var ids []int64
	if sub == "show" {
		idList = fs.Arg(0)
	}
	for _, s := range strings.Split(idList, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("dead-letters: bad id %q", s)
		}
		ids = append(ids, id)
	}
	if (sub == "retry" || sub == "discard") && !all && len(ids) == 0 {
		return fmt.Errorf("dead-letters %s: give --ids or --all", sub)
	}
	if (sub == "retry") && projection == "" {
		return errors.New("dead-letters retry: --projection is required")
	}
	if projection != "" {
		if _, err := selectProjections(projection); err != nil {
			return err
		}
	}
	pool, err := connectChecked(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	switch sub {
	case "list", "show":
		if sub == "show" {
			status = "all"
		}
		dls, err := projectors.ListDeadLetters(ctx, pool, projectors.DeadLetterFilter{Projection: projection, IDs: ids, Status: status})
		if err != nil {
			return err
		}
		if sub == "show" {
			if len(dls) == 0 {
				return fmt.Errorf("dead letter %s not found", idList)
			}
			return showDeadLetter(ctx, pool, stdout, dls[0])
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tPROJECTION\tEVENT\tTYPE\tAGGREGATE\tVERSION\tREASON\tATTEMPTS\tSTATUS\tERROR")
		for _, d := range dls {
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s/%s\t%d\t%s\t%d\t%s\t%s\n", d.ID, d.Projection, d.EventID, d.EventType,
				d.AggregateType, d.AggregateID, d.Version, d.Reason, d.Attempts, d.Status, firstLine(d.Error, 80))
		}
		tw.Flush()
		fmt.Fprintf(stdout, "%d dead letters\n", len(dls))
		return nil
	case "discard":
		n, err := projectors.DiscardDeadLetters(ctx, pool, projection, ids)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d dead letters discarded\n", n)
		return nil
	}
	// retry: check there is something, then hand it to the control plane.
	dls, err := projectors.ListDeadLetters(ctx, pool, projectors.DeadLetterFilter{Projection: projection, IDs: ids})
	if err != nil {
		return err
	}
	if len(dls) == 0 {
		return fmt.Errorf("dead-letters retry: %w", projectors.ErrNothingToRetry)
	}
	return enqueueAndWait(ctx, pool, stdout, projectors.RetryDeadLettersArgs{Projection: projection, IDs: ids}, projection, false)
}

func showDeadLetter(ctx context.Context, pool *pgxpool.Pool, w io.Writer, d projectors.DeadLetter) error {
	var data, meta string
	var c outbox.Cursor
	if err := pool.QueryRow(ctx, `SELECT txid, id, jsonb_pretty(event_data), jsonb_pretty(metadata) FROM events WHERE id = $1`, d.EventID).
		Scan(&c.TxID, &c.Position, &data, &meta); err != nil {
		return err
	}
	fmt.Fprintf(w, "dead letter %d (%s, %s)\nprojection: %s segment %d\nevent:      %d %s, %s/%s v%d, cursor %s\nattempts:   %d, first failed %s, last %s\nerror:      %s\nmetadata:   %s\ndata:\n%s\n",
		d.ID, d.Status, d.Reason, d.Projection, d.Segment, d.EventID, d.EventType, d.AggregateType, d.AggregateID, d.Version, c,
		d.Attempts, d.FirstFailedAt.Format(time.RFC3339), d.LastFailedAt.Format(time.RFC3339), d.Error, meta, data)
	return nil
}

func firstLine(s string, n int) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > n {
		s = s[:n-1] + "…"
	}
	return s
}
