package projectorcli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/readside/readside"
	"github.com/readside/readside/adopt"
	"github.com/readside/readside/checkpoint"
	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/internal/printable"
	"github.com/readside/readside/outbox"
)

type segmentJSON struct {
	Projection     string  `json:"projection"`
	Segment        int     `json:"segment"`
	Status         string  `json:"status"`
	Cursor         string  `json:"cursor"`
	LagEvents      int64   `json:"lag_events"`
	LagSeconds     float64 `json:"lag_seconds"`
	StalledSeconds float64 `json:"stalled_seconds"`
	Owner          string  `json:"owner,omitempty"`
	OwnerLive      bool    `json:"owner_live"`
	Epoch          int64   `json:"epoch"`
	EventsApplied  int64   `json:"events_applied"`
	Parked         int64   `json:"parked"`
	LastError      string  `json:"last_error,omitempty"`
}

type statusJSON struct {
	Segments     []segmentJSON  `json:"segments"`
	WindowHolder *outbox.Holder `json:"window_holder,omitempty"`
	// Unsubscribed lists aggregate types no projection of this binary
	// takes: their events are never applied.
	Unsubscribed []readside.UnsubscribedType `json:"unsubscribed,omitempty"`
	// Adoptions are the application tables readside copies (adopt).
	Adoptions []adopt.Status `json:"adoptions,omitempty"`
}

func (a *app) statusCommand() *cobra.Command {
	var url string
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "status [NAME...]",
		GroupID: "ops",
		Short:   "show every projection segment: status, cursor, lag, owner, parked events",
		Long: `Show every segment of every projection registered in the database (or of the
NAMEs given): status, cursor, lag in events and seconds, lease owner, events
applied, parked dead letters, last error; projections this binary carries that
no worker has run (never_run); and the oldest event-writing transaction holding
the read window back (its age, state and query need pg_read_all_stats when it
belongs to another role). Everything is read from the database, so a dead fleet
shows growing lag.`,
		Args:              cobra.ArbitraryArgs,
		ValidArgsFunction: a.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runStatus(cmd.Context(), url, asJSON, args, cmd.OutOrStdout())
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&url, cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.FlagSet().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// windowQueryBytes is how much of the window holder's query status shows.
const windowQueryBytes = 80

// NeverRun is the status of a projection this binary carries that no
// worker has registered: its lag is the whole outbox.
const NeverRun = "never_run"

func (a *app) runStatus(ctx context.Context, url string, asJSON bool, names []string, stdout io.Writer) error {
	c, done, err := a.operator(ctx, url)
	if err != nil {
		return err
	}
	defer done()
	r, err := c.Status(ctx, names...)
	if err != nil {
		return err
	}
	out := statusJSON{Segments: []segmentJSON{}, Unsubscribed: r.Unsubscribed, WindowHolder: r.WindowHolder, Adoptions: r.Adoptions}
	for _, s := range r.Segments {
		out.Segments = append(out.Segments, segmentJSON{Projection: s.Projection, Segment: s.Segment, Status: string(s.Status),
			Cursor: s.Cursor.String(), LagEvents: s.LagEvents, LagSeconds: s.LagSeconds, StalledSeconds: s.StalledSeconds,
			Owner: s.LeaseOwner, OwnerLive: s.OwnerLive, Epoch: s.LeaseEpoch, EventsApplied: s.EventsApplied,
			Parked: s.Parked, LastError: s.LastError})
	}
	for _, name := range r.NeverRun {
		out.Segments = append(out.Segments, segmentJSON{Projection: name, Status: NeverRun, Cursor: "-",
			LagEvents: r.NeverRunLag.Events, LagSeconds: r.NeverRunLag.Seconds})
	}
	if h := out.WindowHolder; h != nil {
		// Another session's statement, which may carry a payload: its
		// start says which statement it is.
		h.Query = printable.Cap(h.Query, windowQueryBytes)
	}
	if asJSON {
		return writeJSON(stdout, out)
	}
	printStatus(stdout, out)
	return nil
}

func printStatus(w io.Writer, st statusJSON) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROJECTION\tSEG\tSTATUS\tCURSOR\tLAG EVENTS\tLAG\tOWNER\tAPPLIED\tPARKED\tLAST ERROR")
	for _, s := range st.Segments {
		owner := cell(s.Owner, 80)
		switch {
		case owner == "":
			owner = "-"
		case !s.OwnerLive:
			owner += " (expired)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\t%s\t%d\t%d\t%s\n", cell(s.Projection, 80), s.Segment, cell(s.Status, 20), s.Cursor, s.LagEvents,
			(time.Duration(s.LagSeconds * float64(time.Second))).Round(time.Millisecond), owner, s.EventsApplied, s.Parked, cell(s.LastError, 200))
	}
	tw.Flush()
	switch h := st.WindowHolder; {
	case h == nil:
	case h.AgeUnknown:
		fmt.Fprintf(w, "\nread window held back by transaction %d (pid %d, database %s; age, state and query unknown: "+
			"another role's session, hidden from this role: grant this role pg_read_all_stats or pg_monitor)\n", h.TxID, h.PID, cell(h.Database, 80))
	default:
		fmt.Fprintf(w, "\nread window held back by transaction %d (pid %d, database %s, %s old, %s): %s\n",
			h.TxID, h.PID, cell(h.Database, 80), h.Age.Round(time.Second), cell(h.State, 40), cell(h.Query, windowQueryBytes))
	}
	if len(st.Unsubscribed) > 0 {
		var list []string
		for _, u := range st.Unsubscribed {
			n := fmt.Sprint(u.Events)
			if u.Events >= readside.UnsubscribedCountCap {
				n += "+"
			}
			list = append(list, fmt.Sprintf("%q (%s events)", u.AggregateType, n))
		}
		fmt.Fprintf(w, "\nevents no projection takes (aggregate types no projection subscribes to; never applied, never parked): %s\n",
			strings.Join(list, ", "))
	}
	for _, a := range st.Adoptions {
		fmt.Fprintln(w, "\n"+adoptionLine(a))
	}
}

// adoptionLine says how an adopted table stands: its backfill, and what of
// it readside's log does not mirror.
func adoptionLine(a adopt.Status) string {
	s := fmt.Sprintf("adopted table %s: %d rows of history copied", cell(a.Table, 120), a.HistoryCopied)
	if a.State != "adopted" {
		s = fmt.Sprintf("adopted table %s: backfilling (%d of %d rows of history copied; run projector adopt again if it is not running)",
			cell(a.Table, 120), a.HistoryCopied, a.HistoryTotal)
	}
	if a.Outdated {
		s += fmt.Sprintf("; ADOPTED BY AN EARLIER RELEASE: its trigger runs with readside's rights over columns the table's owner controls; run projector adopt --table %s again", cell(a.Table, 120))
	}
	if a.UpdatedRows+a.DeletedRows+a.Truncates > 0 {
		s += fmt.Sprintf("; not mirrored in readside's log: %d rows updated, %d deleted, %d truncates", a.UpdatedRows, a.DeletedRows, a.Truncates)
		if a.LastChange != nil {
			s += ", last at " + a.LastChange.UTC().Format(time.RFC3339)
		}
	}
	return s
}

func (a *app) pauseResumeCommand(verb string) *cobra.Command {
	var url string
	short := "stop applying a projection (workers let go of its segments)"
	if verb == "resume" {
		short = "resume a paused or halted projection"
	}
	cmd := &cobra.Command{
		Use:               verb + " NAME",
		GroupID:           "ops",
		Short:             short,
		Args:              cli.ExactArgs("NAME"),
		ValidArgsFunction: a.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runPauseResume(cmd.Context(), verb, url, args[0], cmd.OutOrStdout())
		},
	}
	cli.NewFlags(cmd).DatabaseURL(&url, cli.DatabaseURLDefault, "PostgreSQL URL")
	return cmd
}

func (a *app) runPauseResume(ctx context.Context, cmd, url, name string, stdout io.Writer) error {
	c, done, err := a.operator(ctx, url)
	if err != nil {
		return err
	}
	defer done()
	op, status := c.Pause, checkpoint.Paused
	if cmd == "resume" {
		op, status = c.Resume, checkpoint.Running
	}
	n, err := op(ctx, name)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %d segments now %s\n", name, n, status)
	return nil
}
