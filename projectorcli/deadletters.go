package projectorcli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/readside/readside"
	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/internal/printable"
)

var deadLetterStatuses = []string{"parked", "retried", "discarded", "all"}

func (a *app) deadLettersCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "dead-letters",
		GroupID: "ops",
		Short:   "list, show, retry or discard parked events",
		Long: `Events a projection could not apply are parked as dead letters, with the later
events of the same aggregate (per-aggregate order), while other aggregates
keep flowing. List and show them, retry them (a River job re-applies a
projection's parked events aggregate by aggregate, in version order) or
discard them.`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRun("list, show, retry or discard"),
	}
	cmd.AddCommand(a.deadLettersList(), a.deadLettersShow(), a.deadLettersRetry(), a.deadLettersDiscard())
	return cmd
}

func (a *app) deadLettersList() *cobra.Command {
	var url, projection, status string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "list dead letters (parked ones unless --status says otherwise)",
		Args:  cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runList(cmd.Context(), url, readside.DeadLetterFilter{Projection: projection, Status: readside.DeadLetterStatus(status)}, asJSON, cmd.OutOrStdout())
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&url, cli.DatabaseURLDefault, "PostgreSQL URL")
	a.projectionFlag(cmd, &projection, "only this projection")
	fs.Enum(cmd, &status, "status", "", "parked", deadLetterStatuses, "only dead letters in this status")
	fs.FlagSet().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *app) runList(ctx context.Context, url string, f readside.DeadLetterFilter, asJSON bool, w io.Writer) error {
	c, done, err := a.operator(ctx, url)
	if err != nil {
		return err
	}
	defer done()
	dls, err := c.DeadLetters(ctx, f)
	if err != nil {
		return err
	}
	if asJSON {
		out := make([]deadLetterJSON, 0, len(dls))
		for _, d := range dls {
			out = append(out, toJSON(d))
		}
		return writeJSON(w, out)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPROJECTION\tEVENT\tTYPE\tAGGREGATE\tVERSION\tREASON\tATTEMPTS\tSTATUS\tERROR")
	for _, d := range dls {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s/%s\t%d\t%s\t%d\t%s\t%s\n", d.ID, cell(d.Projection, 80), d.EventID, cell(d.EventType, 80),
			cell(d.AggregateType, 80), cell(d.AggregateID, 80), d.Version, cell(string(d.Reason), 20), d.Attempts, cell(string(d.Status), 20),
			firstLine(d.Error, 80))
	}
	tw.Flush()
	fmt.Fprintf(w, "%d dead letters\n", len(dls))
	return nil
}

func (a *app) deadLettersShow() *cobra.Command {
	var url string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "show one dead letter with its event's data and metadata",
		Args:  cli.ExactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("dead-letters show: bad id %q", args[0])
			}
			c, done, err := a.operator(cmd.Context(), url)
			if err != nil {
				return err
			}
			defer done()
			dls, err := c.DeadLetters(cmd.Context(), readside.DeadLetterFilter{IDs: []int64{id}, Status: readside.DeadLetterAnyStatus})
			if err != nil {
				return err
			}
			if len(dls) == 0 {
				return fmt.Errorf("dead letter %d not found", id)
			}
			return showDeadLetter(cmd.Context(), c, cmd.OutOrStdout(), dls[0], asJSON)
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&url, cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.FlagSet().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// deadLetterPick is what retry and discard act on: --ids or --all, of
// --projection.
type deadLetterPick struct {
	verb, url, projection, idList string
	all                           bool
	wait                          waitOptions // retry only
}

func (a *app) pickFlags(cmd *cobra.Command, p *deadLetterPick, projectionHelp, allHelp string) {
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&p.url, cli.DatabaseURLDefault, "PostgreSQL URL")
	a.projectionFlag(cmd, &p.projection, projectionHelp)
	fs.FlagSet().StringVar(&p.idList, "ids", "", "comma-separated dead-letter ids")
	fs.FlagSet().BoolVar(&p.all, "all", false, allHelp)
}

// ids returns the ids given, none for --all; exactly one of the two.
func (p *deadLetterPick) ids() ([]int64, error) {
	ids, err := parseIDs(p.idList)
	if err != nil {
		return nil, err
	}
	if p.all == (len(ids) > 0) {
		return nil, fmt.Errorf("dead-letters %s: give --ids or --all", p.verb)
	}
	return ids, nil
}

func (a *app) deadLettersRetry() *cobra.Command {
	p := deadLetterPick{verb: "retry"}
	cmd := &cobra.Command{
		Use:   "retry --projection NAME (--ids ID,... | --all)",
		Short: "re-apply parked dead letters of a projection (a River job), aggregate by aggregate",
		Args:  cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runRetry(cmd.Context(), p, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	a.pickFlags(cmd, &p, "the projection whose dead letters to retry (required)", "every parked dead letter of --projection")
	p.wait.flags(cli.NewFlags(cmd), "wait until the retry job has run")
	return cmd
}

func (a *app) runRetry(ctx context.Context, p deadLetterPick, stdout, stderr io.Writer) error {
	ids, err := p.ids()
	if err != nil {
		return err
	}
	if p.projection == "" {
		return errors.New("dead-letters retry: --projection is required")
	}
	c, done, err := a.operator(ctx, p.url)
	if err != nil {
		return err
	}
	defer done()
	job, err := c.RetryDeadLetters(ctx, p.projection, ids)
	if err != nil {
		return fmt.Errorf("dead-letters retry: %w", err)
	}
	return a.queuedAndWait(ctx, c, job, stdout, p.wait)
}

func (a *app) deadLettersDiscard() *cobra.Command {
	p := deadLetterPick{verb: "discard"}
	cmd := &cobra.Command{
		Use:   "discard (--ids ID,... | --all) [--projection NAME]",
		Short: "give parked dead letters up: the projection never applies them",
		Args:  cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runDiscard(cmd.Context(), p, cmd.OutOrStdout())
		},
	}
	a.pickFlags(cmd, &p, "only this projection", "every parked dead letter (of --projection)")
	return cmd
}

func (a *app) runDiscard(ctx context.Context, p deadLetterPick, stdout io.Writer) error {
	ids, err := p.ids()
	if err != nil {
		return err
	}
	c, done, err := a.operator(ctx, p.url)
	if err != nil {
		return err
	}
	defer done()
	discard := func() (int, error) { return c.DiscardDeadLetters(ctx, p.projection, ids) }
	if p.all {
		discard = func() (int, error) { return c.DiscardAllDeadLetters(ctx, p.projection) }
	}
	n, err := discard()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d dead letters discarded\n", n)
	return nil
}

func (a *app) projectionFlag(cmd *cobra.Command, p *string, help string) {
	cmd.Flags().StringVar(p, "projection", "", help)
	_ = cmd.RegisterFlagCompletionFunc("projection", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return a.names(), cobra.ShellCompDirectiveNoFileComp
	})
}

func parseIDs(list string) ([]int64, error) {
	var ids []int64
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("dead-letters: bad id %q", s)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

type deadLetterJSON struct {
	ID            int64           `json:"id"`
	Projection    string          `json:"projection"`
	Segment       int             `json:"segment"`
	EventID       int64           `json:"event_id"`
	EventType     string          `json:"event_type"`
	AggregateType string          `json:"aggregate_type"`
	AggregateID   string          `json:"aggregate_id"`
	Version       int             `json:"version"`
	Reason        string          `json:"reason"`
	Error         string          `json:"error"`
	Attempts      int             `json:"attempts"`
	Status        string          `json:"status"`
	FirstFailedAt time.Time       `json:"first_failed_at"`
	LastFailedAt  time.Time       `json:"last_failed_at"`
	Cursor        string          `json:"cursor,omitempty"`
	Data          json.RawMessage `json:"data,omitempty"`
	Metadata      json.RawMessage `json:"metadata,omitempty"`
}

func toJSON(d readside.DeadLetter) deadLetterJSON {
	return deadLetterJSON{ID: d.ID, Projection: d.Projection, Segment: d.Segment, EventID: d.EventID, EventType: d.EventType,
		AggregateType: d.AggregateType, AggregateID: d.AggregateID, Version: d.Version, Reason: string(d.Reason), Error: d.Error,
		Attempts: d.Attempts, Status: string(d.Status), FirstFailedAt: d.FirstFailedAt, LastFailedAt: d.LastFailedAt}
}

func showDeadLetter(ctx context.Context, c *readside.Client, w io.Writer, d readside.DeadLetter, asJSON bool) error {
	e, err := c.Event(ctx, d.EventID)
	if err != nil {
		return err
	}
	data, meta := pretty(e.Data), pretty(e.Metadata)
	if asJSON {
		j := toJSON(d)
		j.Cursor, j.Data, j.Metadata = e.Cursor.String(), json.RawMessage(data), json.RawMessage(meta)
		return writeJSON(w, j)
	}
	// Everything from the database is escaped: an aggregate id or a payload
	// written through the SQL contract may hold terminal escapes. The JSON
	// of data and metadata escapes C0 controls itself, not DEL or C1 ones.
	line := printable.Line
	fmt.Fprintf(w, "dead letter %d (%s, %s)\nprojection: %s segment %d\nevent:      %d %s, %s/%s v%d, cursor %s\nattempts:   %d, first failed %s, last %s\nerror:      %s\nmetadata:   %s\ndata:\n%s\n",
		d.ID, line(string(d.Status)), line(string(d.Reason)), line(d.Projection), d.Segment, d.EventID, line(d.EventType),
		line(d.AggregateType), line(d.AggregateID), d.Version, e.Cursor, d.Attempts, d.FirstFailedAt.Format(time.RFC3339),
		d.LastFailedAt.Format(time.RFC3339), line(d.Error), printable.Text(meta), printable.Text(data))
	return nil
}

// pretty indents a JSON document as jsonb_pretty does.
func pretty(raw []byte) string {
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "    "); err != nil {
		return string(raw)
	}
	return b.String()
}
