package projectorcli

import (
	"context"
	"errors"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/readside/readside/internal/cli"
)

type scaleOptions struct {
	url      string
	segments int
	wait     waitOptions
}

func (a *app) scaleCommand() *cobra.Command {
	var o scaleOptions
	cmd := &cobra.Command{
		Use:     "scale NAME --segments N",
		GroupID: "ops",
		Short:   "change a projection's segment count while the fleet runs, without a replay",
		Long: `Queue a change of projection NAME's segment count as a River job that a running
projector executes: in one transaction it locks the projection's checkpoints
(waiting for batches in flight), regroups the 64 hash buckets of the outbox
into N segments, each starting where its buckets stand, and fences every lease
of the old split. Nothing is replayed or applied twice, side effects fire once;
the fleet claims the new segments at its next lease renewal. N and the current
count must divide 64 (1, 2, 4, 8, 16, 32 or 64). With --wait, wait for the job.`,
		Example: strings.ReplaceAll(`  projector scale order_summary --segments 4 --wait
  projector scale order_summary --segments 1`, "projector", a.name),
		Args:              cli.ExactArgs("NAME"),
		ValidArgsFunction: a.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runScale(cmd.Context(), o, args[0], cmd.OutOrStdout())
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&o.url, cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.FlagSet().IntVar(&o.segments, "segments", 0, "the new segment count: 1, 2, 4, 8, 16, 32 or 64")
	o.wait.flags(fs, "wait until the job has regrouped the segments")
	return cmd
}

func (a *app) runScale(ctx context.Context, o scaleOptions, name string, stdout io.Writer) error {
	if o.segments == 0 {
		return errors.New("scale: --segments is required")
	}
	if _, err := a.carried(name); err != nil {
		return err
	}
	c, done, err := a.operator(ctx, o.url)
	if err != nil {
		return err
	}
	defer done()
	job, err := c.Scale(ctx, name, o.segments)
	if err != nil {
		return err
	}
	return a.queuedAndWait(ctx, c, job, stdout, o.wait)
}
