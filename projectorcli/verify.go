package projectorcli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/readside/readside"
	"github.com/readside/readside/internal/cli"
)

// Exit codes of projector verify (every other command exits 1 on error).
const (
	exitDiffers     = 1 // the read model differs from its log
	exitNotVerified = 2 // the verification did not run to the end
)

// exitError is an error that ends the process with its own code (Main).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }
func (e *exitError) ExitCode() int { return e.code }
func exitWith(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

type verifyOptions struct {
	url        string
	aggregates []string
	repair     bool
	asJSON     bool
}

func (a *app) verifyCommand() *cobra.Command {
	var o verifyOptions
	cmd := &cobra.Command{
		Use:     "verify NAME [--aggregate ID ...] [--repair] [--json]",
		GroupID: "ops",
		Short:   "rebuild a read model from the log into a scratch schema and compare it with the live one",
		Long: `Verify projection NAME against its log, while the fleet runs: rebuild its tables
from the events into a scratch schema, up to the live checkpoints, and compare them
with the live tables row by row (EXCEPT ALL both ways, leaving out the columns the
projection declares volatile, such as updated_at), at one REPEATABLE READ snapshot
in which the live checkpoints are those the copy was built to. Nothing is locked or
paused; the scratch schema is dropped afterwards. It costs one rebuild's work, and
its snapshot holds back vacuum meanwhile.

It lists the aggregates whose rows differ (by each table's aggregate column,
projectors.Spec.Keys) and exits 1 when anything differs. --aggregate restricts the
comparison to some aggregates; --repair hands the differing aggregates to
` + "`repair`" + ` (exit 0 when that fixed every difference). Exit codes: 0 the same (or
repaired), 1 differs, 2 the verification could not run to the end.`,
		Example: strings.ReplaceAll(`  projector verify order_summary
  projector verify order_summary --aggregate ord-0-000017 --json
  projector verify order_details --repair`, "projector", a.name),
		Args:              cli.ExactArgs("NAME"),
		ValidArgsFunction: a.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runVerify(cmd.Context(), o, args[0], cmd.OutOrStdout())
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&o.url, cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.FlagSet().StringArrayVar(&o.aggregates, "aggregate", nil, "compare only this aggregate's rows (repeat for several)")
	fs.FlagSet().BoolVar(&o.repair, "repair", false, "repair the aggregates that differ")
	fs.FlagSet().BoolVar(&o.asJSON, "json", false, "print the result as JSON")
	return cmd
}

// verificationJSON is verify --json's output.
type verificationJSON struct {
	Projection  string          `json:"projection"`
	Result      string          `json:"result"`
	Checkpoints map[int]string  `json:"checkpoints"`
	Events      int             `json:"events"`
	StartedAt   time.Time       `json:"started_at"`
	FinishedAt  time.Time       `json:"finished_at"`
	Tables      []verifiedJSON  `json:"tables"`
	Aggregates  []differingJSON `json:"aggregates"`
	Repaired    []repairedJSON  `json:"repaired,omitempty"`
}

type verifiedJSON struct {
	Name     string `json:"name"`
	Key      string `json:"key,omitempty"`
	Compared bool   `json:"compared"`
	OnlyLive int64  `json:"only_live"`
	OnlyCopy int64  `json:"only_copy"`
}

type differingJSON struct {
	AggregateType string   `json:"aggregate_type"`
	AggregateID   string   `json:"aggregate_id"`
	Tables        []string `json:"tables"`
	OnlyLive      int64    `json:"only_live"`
	OnlyCopy      int64    `json:"only_copy"`
}

func (a *app) runVerify(ctx context.Context, o verifyOptions, name string, stdout io.Writer) error {
	if _, err := a.carried(name); err != nil {
		return exitWith(exitNotVerified, err)
	}
	c, done, err := a.operator(ctx, o.url)
	if err != nil {
		return exitWith(exitNotVerified, err)
	}
	defer done()
	v, err := c.Verify(ctx, name, readside.VerifyOptions{AggregateIDs: o.aggregates, Repair: o.repair})
	if v == nil {
		return exitWith(exitNotVerified, err)
	}
	var perr error
	if o.asJSON {
		perr = writeJSON(stdout, toVerificationJSON(v))
	} else {
		perr = printVerification(stdout, v)
	}
	switch {
	case err != nil && v.Result() == readside.VerifyDiffers: // the repair failed
		return exitWith(exitDiffers, err)
	case err != nil: // the recording failed
		return exitWith(exitNotVerified, err)
	case perr != nil:
		return exitWith(exitNotVerified, perr)
	case v.Result() == readside.VerifyDiffers:
		return exitWith(exitDiffers, differsError(v))
	}
	return nil
}

// differsError is the one-line reason verify exits 1 with.
func differsError(v *readside.Verification) error {
	var parts []string
	if n := len(v.Aggregates); n > 0 {
		names := make([]string, 0, min(n, 5))
		for _, ag := range v.Aggregates[:min(n, 5)] {
			names = append(names, aggregateName(ag.Type, ag.ID))
		}
		more := ""
		if n > 5 {
			more = fmt.Sprintf(" and %d more", n-5)
		}
		parts = append(parts, fmt.Sprintf("%d aggregate(s) differ: %s%s", n, strings.Join(names, ", "), more))
	}
	if u := v.Unkeyed(); len(u) > 0 {
		parts = append(parts, fmt.Sprintf("table(s) without an aggregate column differ: %s (rebuild to fix them)", strings.Join(u, ", ")))
	}
	return fmt.Errorf("%s differs from its log: %s", v.Projection, strings.Join(parts, "; "))
}

func aggregateName(typ, id string) string {
	if typ == "" {
		return cell(id, 200)
	}
	return cell(typ, 80) + "/" + cell(id, 200)
}

func toVerificationJSON(v *readside.Verification) verificationJSON {
	out := verificationJSON{Projection: v.Projection, Result: v.Result(), Checkpoints: map[int]string{}, Events: v.Events,
		StartedAt: v.Started, FinishedAt: v.Finished, Tables: []verifiedJSON{}, Aggregates: []differingJSON{}}
	for seg, cur := range v.Checkpoints {
		out.Checkpoints[seg] = cur.String()
	}
	for _, t := range v.Tables {
		out.Tables = append(out.Tables, verifiedJSON{t.Name, t.Key, t.Compared, t.OnlyLive, t.OnlyCopy})
	}
	for _, ag := range v.Aggregates {
		out.Aggregates = append(out.Aggregates, differingJSON{ag.Type, ag.ID, ag.Tables, ag.OnlyLive, ag.OnlyCopy})
	}
	for _, r := range v.Repaired {
		out.Repaired = append(out.Repaired, repairedJSON{r.Type, r.ID, r.Segment, r.Replayed, r.Unparked})
	}
	return out
}

func printVerification(w io.Writer, v *readside.Verification) error {
	segs := make([]int, 0, len(v.Checkpoints))
	for seg := range v.Checkpoints {
		segs = append(segs, seg)
	}
	slices.Sort(segs)
	at := make([]string, 0, len(segs))
	for _, seg := range segs {
		at = append(at, fmt.Sprintf("%d:%s", seg, v.Checkpoints[seg]))
	}
	fmt.Fprintf(w, "rebuilt %s from %d event(s) up to its checkpoints (%s) and compared, in %s\n",
		v.Projection, v.Events, strings.Join(at, " "), v.Finished.Sub(v.Started).Round(time.Millisecond))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TABLE\tAGGREGATE COLUMN\tONLY LIVE\tONLY COPY")
	for _, t := range v.Tables {
		key := t.Key
		if key == "" {
			key = "-"
		}
		if !t.Compared {
			fmt.Fprintf(tw, "%s\t%s\tnot compared\t\n", t.Name, key)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", t.Name, key, t.OnlyLive, t.OnlyCopy)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(v.Aggregates) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DIFFERING AGGREGATE\tTABLES\tONLY LIVE\tONLY COPY")
		for _, ag := range v.Aggregates {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", aggregateName(ag.Type, ag.ID), strings.Join(ag.Tables, ","), ag.OnlyLive, ag.OnlyCopy)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(v.Repaired) > 0 {
		if err := printRepaired(w, v.Projection, v.Repaired); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "%s: %s\n", v.Projection, v.Result())
	return nil
}
