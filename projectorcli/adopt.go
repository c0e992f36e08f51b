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
rebuild need no flags. Idempotent, under the migration lock. readside's own
tables are in --schema, so an application table called events (public.events)
is found as --table events.

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
			return a.runAdopt(cmd.Context(), o, cmd.OutOrStdout())
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

func (a *app) runAdopt(ctx context.Context, o adoptOptions, stdout io.Writer) error {
	cfg, err := o.config()
	if err != nil {
		return err
	}
	pool, err := cli.Connect(ctx, o.url, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	var res *adopt.Result
	if o.remove {
		res, err = adopt.Remove(ctx, pool, a.schema.String(), o.table, o.dryRun)
	} else {
		cfg.Schema = a.schema.String()
		res, err = adopt.Adopt(ctx, pool, cfg, o.dryRun)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, o.outcome(res))
	return nil
}

// config checks the flags and parses the mapping.
func (o adoptOptions) config() (adopt.Config, error) {
	cfg := adopt.Config{Table: o.table}
	if o.table == "" {
		return cfg, fmt.Errorf("adopt: --table is required")
	}
	if o.remove && (o.columns != "" || o.renames != "") {
		return cfg, fmt.Errorf("adopt: --remove takes only --table")
	}
	var err error
	if cfg.Columns, err = adopt.ParseColumns(o.columns); err != nil {
		return cfg, fmt.Errorf("adopt: %w", err)
	}
	if cfg.Renames, err = adopt.ParseRenames(o.renames); err != nil {
		return cfg, fmt.Errorf("adopt: %w", err)
	}
	return cfg, nil
}

// outcome says what an adoption or its removal did.
func (o adoptOptions) outcome(res *adopt.Result) string {
	switch {
	case o.dryRun && res.Changed:
		return res.SQL + "-- dry run: nothing changed"
	case !res.Changed && o.remove:
		return res.Table + " is not adopted: nothing to do"
	case !res.Changed:
		return res.Table + " is already adopted with this mapping: nothing to do"
	case o.remove:
		return fmt.Sprintf("removed the adoption of %s (events already copied stay in readside's log)", res.Table)
	}
	return fmt.Sprintf("adopted %s: %d rows copied as history; new rows are copied by trigger %s", res.Table, res.History, adopt.TriggerName)
}
