package projectorcli

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/readside/readside/adopt"
	"github.com/readside/readside/internal/cli"
)

type adoptOptions struct {
	url, table, columns, renames string
	dryRun, remove               bool
}

func (a *app) adoptCommand() *cobra.Command {
	var o adoptOptions
	cmd := &cobra.Command{
		Use:     "adopt --table TABLE [--columns KEY=COL,...] [--rename STORED=NAME,...] [--dry-run] | adopt --remove --table TABLE",
		GroupID: "fleet",
		Short:   "project an events table that an existing application writes (Rails, Elixir, ...)",
		Long: `Adopt the application's events table: a trigger on it copies each new row,
mapped and renamed, into readside's events table (outbox, ordering rules and
notification follow), and the rows already there are copied once, in id order,
as history. The mapping is stored in the database; run, status, reset and
rebuild need no flags. Idempotent, under the migration lock. Run readside in a
schema of its own (search_path=readside in the URL) when the application's
table is called events too.

--columns maps readside's names to the table's columns; an omitted key means a
column of the same name; metadata and occurred_at may be absent.
Keys: id, aggregate_type, aggregate_id, event_type, event_data, metadata, version, occurred_at.
--rename maps stored type names (events and aggregates) to readside's; a pair
ending in * on both sides is a prefix rule.

  projector adopt --table public.events \
    --rename 'Domain::Orders::Events::*=*,Domain::Orders::Order=Order'
  projector adopt --table public.events \
    --columns 'version=event_version,metadata=event_metadata,occurred_at=created_at' \
    --rename 'Elixir.CommandService.Domain.Events.*=*'
  projector adopt --remove --table public.events`,
		Args: cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runAdopt(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&o.url, cli.DatabaseURLDefault, "PostgreSQL URL")
	f := fs.FlagSet()
	f.StringVar(&o.table, "table", "", "the application's events table (schema.table, or table outside readside's schema)")
	f.StringVar(&o.columns, "columns", "", "readside name=the table's column, comma-separated")
	f.StringVar(&o.renames, "rename", "", "stored name=readside name, comma-separated; Prefix::*=* strips a prefix")
	f.BoolVar(&o.dryRun, "dry-run", false, "print the SQL instead of running it")
	f.BoolVar(&o.remove, "remove", false, "uninstall the trigger and forget the mapping (copied events stay)")
	return cmd
}

func runAdopt(ctx context.Context, o adoptOptions, stdout io.Writer) error {
	if o.table == "" {
		return fmt.Errorf("adopt: --table is required")
	}
	if o.remove && (o.columns != "" || o.renames != "") {
		return fmt.Errorf("adopt: --remove takes only --table")
	}
	cfg := adopt.Config{Table: o.table}
	var err error
	if cfg.Columns, err = adopt.ParseColumns(o.columns); err != nil {
		return fmt.Errorf("adopt: %w", err)
	}
	if cfg.Renames, err = adopt.ParseRenames(o.renames); err != nil {
		return fmt.Errorf("adopt: %w", err)
	}
	pool, err := cli.Connect(ctx, o.url, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	var res *adopt.Result
	if o.remove {
		res, err = adopt.Remove(ctx, pool, o.table, o.dryRun)
	} else {
		res, err = adopt.Adopt(ctx, pool, cfg, o.dryRun)
	}
	if err != nil {
		return err
	}
	switch {
	case o.dryRun && res.Changed:
		fmt.Fprintf(stdout, "%s-- dry run: nothing changed\n", res.SQL)
	case !res.Changed && o.remove:
		fmt.Fprintf(stdout, "%s is not adopted: nothing to do\n", res.Table)
	case !res.Changed:
		fmt.Fprintf(stdout, "%s is already adopted with this mapping: nothing to do\n", res.Table)
	case o.remove:
		fmt.Fprintf(stdout, "removed the adoption of %s (events already copied stay in readside's log)\n", res.Table)
	default:
		fmt.Fprintf(stdout, "adopted %s: %d rows copied as history; new rows are copied by trigger %s\n", res.Table, res.History, adopt.TriggerName)
	}
	return nil
}
