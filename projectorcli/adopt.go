package projectorcli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/readside/readside/adopt"
	"github.com/readside/readside/internal/cli"
)

type adoptOptions struct {
	url, table, columns, renames string
	column                       []string
	dryRun, remove               bool
	chunkRows                    int
	lockTimeout                  time.Duration
}

func (a *app) adoptCommand() *cobra.Command {
	var o adoptOptions
	cmd := &cobra.Command{
		Use:     "adopt --table TABLE [--column KEY=EXPR ...] [--rename STORED=NAME,...] [--dry-run] | adopt --remove --table TABLE",
		GroupID: "fleet",
		Short:   "project an events table that an existing application writes (Rails, Elixir, ...)",
		Long: `Adopt the application's events table: a trigger on it copies each new row,
mapped and renamed, into readside's events table (outbox, ordering rules and
notification follow), and the rows already there (the history) are copied in
chunks while the application goes on writing. The mapping is stored in the
database; run, status, reset and rebuild need no flags. readside's own tables
are in --schema, so an application table called events (public.events) is
found as --table events.

The rows already in the table are checked first: a row readside cannot take
(a NULL, a version below 1, a version twice or missing, two stored type names
renamed into one) is named, with its column, and nothing changes. The trigger
runs as the role that inserts; the roles that may insert into the table are
granted the table's two functions in readside's schema (run adopt again after
granting INSERT to another role). Interrupted, adopt resumes where it stopped
when run again; new rows are copied meanwhile.

--column KEY=EXPR (repeatable) gives readside's KEY its value: a column of the
table, or an immutable SQL expression over its columns (PostgreSQL's built-in
functions and operators only; evaluated as the inserting role). An omitted key
means a column of the same name; metadata and occurred_at may be absent.
--columns KEY=COL,... is the same for plain columns.
Keys: id, aggregate_type, aggregate_id, event_type, event_data, metadata, version, occurred_at.
--rename maps stored type names (events and aggregates) to readside's; a pair
ending in * on both sides is a prefix rule.

  projector adopt --table public.events \
    --rename 'Domain::Orders::Events::*=*,Domain::Orders::Order=Order'
  projector adopt --table public.events \
    --columns 'version=event_version,metadata=event_metadata,occurred_at=created_at' \
    --rename 'Elixir.CommandService.Domain.Events.*=*'
  projector adopt --table app_events \
    --column "aggregate_type=split_part(stream, '-', 1)" \
    --column "aggregate_id=substr(stream, strpos(stream, '-') + 1)" \
    --column id=seq --column version=stream_version --column event_type=type --column event_data=body
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
	f.StringArrayVar(&o.column, "column", nil, "KEY=EXPR: a column, or an immutable SQL expression over the table's columns (repeat for several keys)")
	f.StringVar(&o.columns, "columns", "", "readside name=the table's column, comma-separated")
	f.StringVar(&o.renames, "rename", "", "stored name=readside name, comma-separated; Prefix::*=* strips a prefix")
	f.BoolVar(&o.dryRun, "dry-run", false, "check the table's rows and print the SQL instead of running it")
	f.BoolVar(&o.remove, "remove", false, "uninstall the trigger and forget the mapping (copied events stay)")
	f.IntVar(&o.chunkRows, "chunk-rows", adopt.ChunkRowsDefault, "rows of history copied per transaction")
	f.DurationVar(&o.lockTimeout, "lock-timeout", adopt.LockTimeoutDefault, "longest wait for the table's lock at a time (the application's inserts queue behind it); then adopt pauses and tries again")
	return cmd
}

func (a *app) runAdopt(ctx context.Context, o adoptOptions, stdout io.Writer) error {
	cfg, err := o.config()
	if err != nil {
		return err
	}
	pool, err := cli.Connect(ctx, o.url, 3)
	if err != nil {
		return err
	}
	defer pool.Close()
	var res *adopt.Result
	if o.remove {
		res, err = adopt.Remove(ctx, pool, a.schema.String(), o.table, o.dryRun)
	} else {
		cfg.Schema = a.schema.String()
		r := newReporter(stdout)
		started := false
		cfg.Progress = func(p adopt.Progress) {
			if !started {
				started = true
				r.startBar("copying the history of "+o.table, p.Total)
			}
			r.setDetail(p.Read, p.Total, fmt.Sprintf("%d of %d rows read, %d copied into readside's log", p.Read, p.Total, p.Copied))
		}
		res, err = adopt.Adopt(ctx, pool, cfg, o.dryRun)
		if started {
			if err != nil {
				r.interrupt()
			} else {
				r.finishBar()
			}
		}
		if err != nil && res != nil && ctx.Err() != nil {
			return fmt.Errorf("interrupted after copying %d rows of history: the trigger copies new rows (and the history of each aggregate they touch) meanwhile; run `%s adopt` with the same flags to finish: %w", res.History, a.name, err)
		}
	}
	if err != nil {
		return err
	}
	for _, w := range res.Warnings {
		fmt.Fprintln(stdout, "warning: "+w)
	}
	fmt.Fprintln(stdout, o.outcome(res))
	return nil
}

// config checks the flags and parses the mapping.
func (o adoptOptions) config() (adopt.Config, error) {
	cfg := adopt.Config{Table: o.table, ChunkRows: o.chunkRows, LockTimeout: o.lockTimeout}
	if o.table == "" {
		return cfg, fmt.Errorf("adopt: --table is required")
	}
	if o.remove && (o.columns != "" || o.renames != "" || len(o.column) > 0) {
		return cfg, fmt.Errorf("adopt: --remove takes only --table")
	}
	if o.chunkRows < 1 {
		return cfg, fmt.Errorf("adopt: --chunk-rows must be at least 1")
	}
	var err error
	if cfg.Columns, err = adopt.ParseColumns(o.columns); err != nil {
		return cfg, fmt.Errorf("adopt: %w", err)
	}
	for _, c := range o.column {
		k, expr, err := adopt.ParseColumn(c)
		if err != nil {
			return cfg, fmt.Errorf("adopt: %w", err)
		}
		if _, dup := cfg.Columns[k]; dup {
			return cfg, fmt.Errorf("adopt: %s given twice (--column, --columns)", k)
		}
		cfg.Columns[k] = expr
	}
	if cfg.Renames, err = adopt.ParseRenames(o.renames); err != nil {
		return cfg, fmt.Errorf("adopt: %w", err)
	}
	return cfg, nil
}

// outcome says what an adoption or its removal did.
func (o adoptOptions) outcome(res *adopt.Result) string {
	granted := ""
	if len(res.Granted) > 0 {
		granted = fmt.Sprintf("; granted the table's functions to %s (the roles that may insert into it)", strings.Join(res.Granted, ", "))
	}
	switch {
	case o.dryRun && res.Changed:
		checked := ""
		if res.Rows > 0 || res.SQL != "" && !o.remove {
			checked = fmt.Sprintf("-- %d rows of %s fit readside's rules\n", res.Rows, res.Table)
		}
		return res.SQL + checked + "-- dry run: nothing changed"
	case !res.Changed && o.remove:
		return res.Table + " is not adopted: nothing to do"
	case !res.Changed:
		return res.Table + " is already adopted with this mapping: nothing to do"
	case o.remove:
		return fmt.Sprintf("removed the adoption of %s (events already copied stay in readside's log)", res.Table)
	case res.SQL != "" && res.History == 0 && !strings.Contains(res.SQL, "CREATE OR REPLACE TRIGGER") && granted != "":
		return res.Table + " is already adopted with this mapping" + granted
	}
	return fmt.Sprintf("adopted %s: %d rows copied as history; new rows are copied by trigger %s%s", res.Table, res.History, adopt.TriggerName, granted)
}
