package projectorcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/readside/readside"
	"github.com/readside/readside/internal/cli"
)

type repairOptions struct {
	url, aggregateType string
	aggregates         []string
	allParked, asJSON  bool
}

func (a *app) repairCommand() *cobra.Command {
	var o repairOptions
	cmd := &cobra.Command{
		Use:     "repair NAME --aggregate ID [--aggregate ID ...] | --all-parked",
		GroupID: "ops",
		Short:   "rebuild one aggregate's part of a read model from its events",
		Long: `Repair the rows projection NAME holds for some aggregates, in one transaction,
while the fleet runs: lock the projection's checkpoints (batches in flight finish
first, new ones wait), remove what the projection holds for the aggregates, and
re-apply each aggregate's events up to its segment's checkpoint, in version order,
from the events table. Events applied before are replayed (side effects do not
fire again); parked events of the aggregates are applied and their dead letters
marked retried (--all-parked repairs every aggregate with parked events, after a
fix). An error rolls everything back. The projection must implement
projectors.Forgetter; a repair is refused while a rebuild of it runs.`,
		Example: strings.ReplaceAll(`  projector repair order_summary --aggregate ord-0-000017
  projector repair order_statistics --aggregate ord-1 --aggregate ord-2
  projector repair products --aggregate-type Product --aggregate prod-3
  projector repair order_details --all-parked`, "projector", a.name),
		Args:              cli.ExactArgs("NAME"),
		ValidArgsFunction: a.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runRepair(cmd.Context(), o, args[0], cmd.OutOrStdout())
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&o.url, cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.FlagSet().StringArrayVar(&o.aggregates, "aggregate", nil, "id of an aggregate to repair (repeat for several)")
	fs.FlagSet().StringVar(&o.aggregateType, "aggregate-type", "", "type of the aggregates (default: the projection's only aggregate type)")
	fs.FlagSet().BoolVar(&o.allParked, "all-parked", false, "also repair every aggregate with parked dead letters")
	fs.FlagSet().BoolVar(&o.asJSON, "json", false, "print the result as JSON")
	return cmd
}

type repairedJSON struct {
	AggregateType string `json:"aggregate_type"`
	AggregateID   string `json:"aggregate_id"`
	Segment       int    `json:"segment"`
	Replayed      int    `json:"replayed"`
	Unparked      int    `json:"unparked"`
}

func (a *app) runRepair(ctx context.Context, o repairOptions, name string, stdout io.Writer) error {
	if len(o.aggregates) == 0 && !o.allParked {
		return errors.New("repair: give --aggregate ID (repeatable) or --all-parked")
	}
	if _, err := a.carried(name); err != nil {
		return err
	}
	c, done, err := a.operator(ctx, o.url)
	if err != nil {
		return err
	}
	defer done()
	res, err := c.Repair(ctx, name, readside.RepairOptions{AggregateType: o.aggregateType, AggregateIDs: o.aggregates, AllParked: o.allParked})
	if err != nil {
		return err
	}
	if o.asJSON {
		out := make([]repairedJSON, 0, len(res))
		for _, r := range res {
			out = append(out, repairedJSON{r.Type, r.ID, r.Segment, r.Replayed, r.Unparked})
		}
		return writeJSON(stdout, out)
	}
	return printRepaired(stdout, name, res)
}

func printRepaired(w io.Writer, name string, res []readside.RepairedAggregate) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AGGREGATE\tSEGMENT\tREPLAYED\tUNPARKED")
	for _, r := range res {
		seg := fmt.Sprint(r.Segment)
		if r.Segment < 0 {
			seg = "-" // no event up to the checkpoint: its rows are gone
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%d\t%d\n", cell(r.Type, 80), cell(r.ID, 200), seg, r.Replayed, r.Unparked)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "repaired %d aggregate(s) of %s\n", len(res), name)
	return nil
}
