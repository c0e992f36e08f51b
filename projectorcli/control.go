package projectorcli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/spf13/cobra"

	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
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
	if err := projectors.ParseResetTarget(target); err != nil {
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
	if err := projectors.CheckResetTarget(ctx, pool, target); err != nil {
		return fmt.Errorf("reset %s: %w", name, err)
	}
	return a.enqueueAndWait(ctx, pool, stdout, stderr, projectors.ResetArgs{Projection: name, To: target}, name, name, o.wait)
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
	return a.enqueueAndWait(ctx, pool, stdout, stderr, projectors.RebuildArgs{Projection: name}, name, projectors.ShadowName(name), o.wait)
}

// enqueueAndWait inserts the control job; with wait it follows the job and
// then the replay of `follow` until it has caught up.
func (a *app) enqueueAndWait(ctx context.Context, pool *pgxpool.Pool, stdout, stderr io.Writer, args river.JobArgs, name, follow string, wait waitOptions) error {
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
	if !wait.wait {
		return nil
	}
	return a.follow(ctx, pool, jobs, stdout, stderr, res.Job.ID, args.Kind(), name, follow, wait)
}

var deadLetterStatuses = []string{"parked", "retrying", "retried", "discarded", "all"}

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
			pool, err := a.openDeadLetters(cmd.Context(), url, projection)
			if err != nil {
				return err
			}
			defer pool.Close()
			dls, err := projectors.ListDeadLetters(cmd.Context(), pool, projectors.DeadLetterFilter{Projection: projection, Status: status})
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
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
				fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s/%s\t%d\t%s\t%d\t%s\t%s\n", d.ID, d.Projection, d.EventID, d.EventType,
					d.AggregateType, d.AggregateID, d.Version, d.Reason, d.Attempts, d.Status, firstLine(d.Error, 80))
			}
			tw.Flush()
			fmt.Fprintf(w, "%d dead letters\n", len(dls))
			return nil
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&url, cli.DatabaseURLDefault, "PostgreSQL URL")
	a.projectionFlag(cmd, &projection, "only this projection")
	fs.Enum(cmd, &status, "status", "", "parked", deadLetterStatuses, "only dead letters in this status")
	fs.FlagSet().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
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
			pool, err := connectChecked(cmd.Context(), url)
			if err != nil {
				return err
			}
			defer pool.Close()
			dls, err := projectors.ListDeadLetters(cmd.Context(), pool, projectors.DeadLetterFilter{IDs: []int64{id}, Status: "all"})
			if err != nil {
				return err
			}
			if len(dls) == 0 {
				return fmt.Errorf("dead letter %d not found", id)
			}
			return showDeadLetter(cmd.Context(), pool, cmd.OutOrStdout(), dls[0], asJSON)
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&url, cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.FlagSet().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *app) deadLettersRetry() *cobra.Command {
	var url, projection, idList string
	var all bool
	cmd := &cobra.Command{
		Use:   "retry --projection NAME (--ids ID,... | --all)",
		Short: "re-apply parked dead letters of a projection (a River job), aggregate by aggregate",
		Args:  cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			ids, err := parseIDs(idList)
			if err != nil {
				return err
			}
			if all == (len(ids) > 0) {
				return errors.New("dead-letters retry: give --ids or --all")
			}
			if projection == "" {
				return errors.New("dead-letters retry: --projection is required")
			}
			ctx := cmd.Context()
			pool, err := a.openDeadLetters(ctx, url, projection)
			if err != nil {
				return err
			}
			defer pool.Close()
			// Check there is something, then hand it to the control plane.
			dls, err := projectors.ListDeadLetters(ctx, pool, projectors.DeadLetterFilter{Projection: projection, IDs: ids})
			if err != nil {
				return err
			}
			if len(dls) == 0 {
				return fmt.Errorf("dead-letters retry: %w", projectors.ErrNothingToRetry)
			}
			return a.enqueueAndWait(ctx, pool, cmd.OutOrStdout(), cmd.ErrOrStderr(), projectors.RetryDeadLettersArgs{Projection: projection, IDs: ids}, projection, projection, waitOptions{})
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&url, cli.DatabaseURLDefault, "PostgreSQL URL")
	a.projectionFlag(cmd, &projection, "the projection whose dead letters to retry (required)")
	fs.FlagSet().StringVar(&idList, "ids", "", "comma-separated dead-letter ids")
	fs.FlagSet().BoolVar(&all, "all", false, "every parked dead letter of --projection")
	return cmd
}

func (a *app) deadLettersDiscard() *cobra.Command {
	var url, projection, idList string
	var all bool
	cmd := &cobra.Command{
		Use:   "discard (--ids ID,... | --all) [--projection NAME]",
		Short: "give parked dead letters up: the projection never applies them",
		Args:  cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			ids, err := parseIDs(idList)
			if err != nil {
				return err
			}
			if all == (len(ids) > 0) {
				return errors.New("dead-letters discard: give --ids or --all")
			}
			pool, err := a.openDeadLetters(cmd.Context(), url, projection)
			if err != nil {
				return err
			}
			defer pool.Close()
			n, err := projectors.DiscardDeadLetters(cmd.Context(), pool, projection, ids)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d dead letters discarded\n", n)
			return nil
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&url, cli.DatabaseURLDefault, "PostgreSQL URL")
	a.projectionFlag(cmd, &projection, "only this projection")
	fs.FlagSet().StringVar(&idList, "ids", "", "comma-separated dead-letter ids")
	fs.FlagSet().BoolVar(&all, "all", false, "every parked dead letter (of --projection)")
	return cmd
}

func (a *app) projectionFlag(cmd *cobra.Command, p *string, help string) {
	cmd.Flags().StringVar(p, "projection", "", help)
	_ = cmd.RegisterFlagCompletionFunc("projection", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return a.names(), cobra.ShellCompDirectiveNoFileComp
	})
}

// openDeadLetters connects and checks projection (when given) is known.
func (a *app) openDeadLetters(ctx context.Context, url, projection string) (*pgxpool.Pool, error) {
	pool, err := connectChecked(ctx, url)
	if err != nil {
		return nil, err
	}
	if projection != "" {
		if err := a.known(ctx, pool, projection); err != nil {
			pool.Close()
			return nil, err
		}
	}
	return pool, nil
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

func toJSON(d projectors.DeadLetter) deadLetterJSON {
	return deadLetterJSON{ID: d.ID, Projection: d.Projection, Segment: d.Segment, EventID: d.EventID, EventType: d.EventType,
		AggregateType: d.AggregateType, AggregateID: d.AggregateID, Version: d.Version, Reason: d.Reason, Error: d.Error,
		Attempts: d.Attempts, Status: d.Status, FirstFailedAt: d.FirstFailedAt, LastFailedAt: d.LastFailedAt}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func showDeadLetter(ctx context.Context, pool *pgxpool.Pool, w io.Writer, d projectors.DeadLetter, asJSON bool) error {
	var data, meta string
	var c outbox.Cursor
	if err := pool.QueryRow(ctx, `SELECT txid, id, jsonb_pretty(event_data), jsonb_pretty(metadata) FROM events WHERE id = $1`, d.EventID).
		Scan(&c.TxID, &c.Position, &data, &meta); err != nil {
		return err
	}
	if asJSON {
		j := toJSON(d)
		j.Cursor, j.Data, j.Metadata = c.String(), json.RawMessage(data), json.RawMessage(meta)
		return writeJSON(w, j)
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
