package projectorcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/readside/readside"
	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/outbox"
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
	to, err := parseResetTarget(target)
	if err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	if _, err := a.carried(name); err != nil {
		return err
	}
	c, done, err := a.operator(ctx, o.url)
	if err != nil {
		return err
	}
	defer done()
	job, err := c.Reset(ctx, name, to)
	if err != nil {
		return err
	}
	return a.queuedAndWait(ctx, c, job, stdout, o.wait)
}

// parseResetTarget reads what --to-start, --to and --to-time gave.
func parseResetTarget(target string) (readside.ResetTarget, error) {
	kind, val, _ := strings.Cut(target, ":")
	switch kind {
	case "cursor":
		c, err := outbox.ParseCursor(val)
		if err != nil {
			return readside.ResetTarget{}, fmt.Errorf("--to %q: %w", val, err)
		}
		return readside.ResetToCursor(c), nil
	case "time":
		t, err := time.Parse(time.RFC3339Nano, val)
		if err != nil {
			return readside.ResetTarget{}, fmt.Errorf("--to-time %q: want an RFC 3339 time such as 2026-11-01T00:00:00Z", val)
		}
		return readside.ResetToTime(t), nil
	}
	return readside.ResetToStart(), nil
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
	c, done, err := a.operator(ctx, o.url)
	if err != nil {
		return err
	}
	defer done()
	job, err := c.Rebuild(ctx, name)
	if err != nil {
		return err
	}
	return a.queuedAndWait(ctx, c, job, stdout, o.wait)
}

// queuedAndWait says that the control job is queued; with wait it follows
// the job and the replay until done.
func (a *app) queuedAndWait(ctx context.Context, c *readside.Client, job *readside.Job, stdout io.Writer, wait waitOptions) error {
	if job.Duplicate {
		fmt.Fprintf(stdout, "%s: already queued as job %d (state %s)\n", job.Kind, job.ID, job.State)
	} else {
		fmt.Fprintf(stdout, "%s: queued as job %d; a running projector executes it\n", job.Kind, job.ID)
	}
	if !wait.wait {
		return nil
	}
	return a.follow(ctx, c, job, stdout, wait)
}
