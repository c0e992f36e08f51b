package projectorcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/riverqueue/river"
	"github.com/spf13/cobra"

	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/projectors/control"
)

type resetOptions struct {
	url, to, toTime string
	toStart         bool
	wait            waitOptions
}

func (a *app) resetCommand() *cobra.Command {
	var o resetOptions
	cmd := &cobra.Command{
		Use:     "reset NAME",
		GroupID: "ops",
		Short:   "replay a projection from the start, a cursor or a time",
		Long: `Queue a reset of projection NAME as a River job that a running projector executes:
it fences the segments' owners, empties the read model (--to-start, the default)
or keeps it (--to, --to-time), and moves every segment's checkpoint. The fleet
then replays. With --wait, follow the job and the replay until caught up.`,
		Example: strings.ReplaceAll(`  projector reset order_summary --to-start --wait
  projector reset order_summary --to 123456/7890
  projector reset order_summary --to-time 2026-11-01T00:00:00Z`, "projector", a.name),
		Args:              cli.ExactArgs("NAME"),
		ValidArgsFunction: a.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runReset(cmd.Context(), o, args[0], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&o.url, cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.FlagSet().BoolVar(&o.toStart, "to-start", false, "empty the read model and replay from the first event (the default)")
	fs.FlagSet().StringVar(&o.to, "to", "", "move the checkpoints to this cursor (TXID/POSITION) without emptying the read model")
	fs.FlagSet().StringVar(&o.toTime, "to-time", "", "move the checkpoints to just before the first event at or after this RFC 3339 time, without emptying the read model")
	o.wait.flags(fs, "wait, with progress, until the projection has caught up again")
	return cmd
}

func (a *app) runReset(ctx context.Context, o resetOptions, name string, stdout, stderr io.Writer) error {
	target := "start"
	n := 0
	if o.toStart {
		n++
	}
	if o.to != "" {
		n++
		target = "cursor:" + o.to
	}
	if o.toTime != "" {
		n++
		target = "time:" + o.toTime
	}
	if n > 1 {
		return errors.New("reset: give one of --to-start, --to, --to-time")
	}
	if err := control.ValidateResetTarget(target); err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	if _, err := a.carried(name); err != nil {
		return err
	}
	pool, err := a.openForControl(ctx, o.url, name)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := control.CheckResetTarget(ctx, pool, target); err != nil {
		return fmt.Errorf("reset %s: %w", name, err)
	}
	return a.enqueueAndWait(ctx, pool, stdout, stderr, control.ResetArgs{Projection: name, To: target}, name, name, o.wait)
}

type rebuildOptions struct {
	url  string
	wait waitOptions
}

func (a *app) rebuildCommand() *cobra.Command {
	var o rebuildOptions
	cmd := &cobra.Command{
		Use:     "rebuild NAME",
		GroupID: "ops",
		Short:   "rebuild a projection's tables beside the live ones and switch when caught up",
		Long: `Queue a blue/green rebuild of projection NAME as a River job: a shadow projection
(NAME__rebuild) replays from the start into tables beside the live ones; when it
has caught up, the tables are swapped in one transaction and the old ones
dropped. Readers never see an empty model. With --wait, follow it to the swap.`,
		Example:           "  " + a.name + " rebuild order_details --wait",
		Args:              cli.ExactArgs("NAME"),
		ValidArgsFunction: a.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runRebuild(cmd.Context(), o, args[0], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&o.url, cli.DatabaseURLDefault, "PostgreSQL URL")
	o.wait.flags(fs, "wait, with progress, until the rebuilt tables are switched in")
	return cmd
}

func (a *app) runRebuild(ctx context.Context, o rebuildOptions, name string, stdout, stderr io.Writer) error {
	p, err := a.carried(name)
	if err != nil {
		return err
	}
	if len(p.Spec().Tables) == 0 {
		return fmt.Errorf("rebuild: %s has no tables to rebuild", name)
	}
	pool, err := a.openForControl(ctx, o.url, name)
	if err != nil {
		return err
	}
	defer pool.Close()
	return a.enqueueAndWait(ctx, pool, stdout, stderr, control.RebuildArgs{Projection: name}, name, control.ShadowName(name), o.wait)
}

// enqueueAndWait inserts the control job; with wait it follows the job and
// then the replay of `follow` until it has caught up.
func (a *app) enqueueAndWait(ctx context.Context, pool *dbschema.Pool, stdout, stderr io.Writer, args river.JobArgs, name, follow string, wait waitOptions) error {
	jobs, err := control.NewJobs(pool.Pool, pool.Schema().String())
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
	if !wait.wait {
		return nil
	}
	return a.follow(ctx, pool, jobs, stdout, stderr, res.Job.ID, args.Kind(), name, follow, wait)
}
