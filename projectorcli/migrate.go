package projectorcli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/readside/readside"
	"github.com/readside/readside/internal/cli"
)

func (a *app) migrateCommand() *cobra.Command {
	var url string
	var dryRun, beside bool
	cmd := &cobra.Command{
		Use:     "migrate",
		GroupID: "fleet",
		Short:   "apply readside's and River's migrations (safe to run from every fleet member)",
		Long: `Apply River's migrations and readside's pending ones, under an advisory lock:
any number of fleet members may run it at once. A database migrated by a newer
binary is refused. --dry-run prints the SQL that would run, and changes nothing.`,
		Args: cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runMigrate(cmd.Context(), url, dryRun, beside, cmd.OutOrStdout())
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&url, cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.FlagSet().BoolVar(&dryRun, "dry-run", false, "print the SQL of the pending migrations instead of applying them")
	fs.FlagSet().BoolVar(&beside, "beside-other-installs", false, "install in --schema although the database has readside in another schema")
	cmd.AddCommand(a.migrateStatusCommand())
	return cmd
}

func (a *app) runMigrate(ctx context.Context, url string, dryRun, beside bool, stdout io.Writer) error {
	pool, err := cli.Connect(ctx, url, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	c, err := a.newClient(readside.Config{Pool: pool, Logger: slog.New(slog.DiscardHandler), BesideOtherInstalls: beside})
	if err != nil {
		return err
	}
	if dryRun {
		plan, ddl, err := c.MigratePlan(ctx)
		if err != nil {
			return err
		}
		for _, m := range plan.River {
			fmt.Fprintf(stdout, "-- River migration %03d_%s\n%s\n", m.Version, m.Name, m.SQL)
		}
		for _, m := range plan.Readside {
			fmt.Fprintf(stdout, "-- readside migration %03d_%s\n%s\n", m.Version, m.Name, m.SQL)
		}
		for _, d := range ddl {
			fmt.Fprintf(stdout, "-- schema of projection %s (idempotent, run by every migrate)\n%s\n", d.Projection, d.SQL)
		}
		fmt.Fprintf(stdout, "-- %d River and %d readside migrations pending in schema %s; nothing applied (dry run)\n", len(plan.River), len(plan.Readside), c.Schema())
		return nil
	}
	res, err := c.Migrate(ctx)
	if err != nil {
		return err
	}
	if res.Created {
		fmt.Fprintf(stdout, "created schema %s\n", c.Schema())
	}
	for _, m := range res.Applied {
		fmt.Fprintf(stdout, "applied %03d_%s\n", m.Version, m.Name)
	}
	if len(res.River) > 0 {
		fmt.Fprintf(stdout, "applied River migrations %v\n", res.River)
	}
	fmt.Fprintf(stdout, "schema %s at version %d\n", c.Schema(), res.Version)
	for _, n := range res.Projections {
		fmt.Fprintf(stdout, "applied schema of projection %s\n", n)
	}
	return nil
}

func (a *app) migrateStatusCommand() *cobra.Command {
	var url string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "list readside's migrations: applied (when) or pending",
		Args:  cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			pool, err := cli.Connect(ctx, url, 2)
			if err != nil {
				return err
			}
			defer pool.Close()
			c, err := a.newClient(readside.Config{Pool: pool})
			if err != nil {
				return err
			}
			st, err := c.MigrateStatus(ctx)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(w, st)
			}
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tNAME\tAPPLIED")
			for _, m := range st.Migrations {
				applied := "pending"
				if m.AppliedAt != nil {
					applied = m.AppliedAt.Format("2006-01-02T15:04:05Z07:00")
				}
				fmt.Fprintf(tw, "%03d\t%s\t%s\n", m.Version, m.Name, applied)
			}
			tw.Flush()
			fmt.Fprintf(w, "database at version %d, this binary %d; River migrations pending: %d\n", st.Version, st.Latest, st.RiverPending)
			return nil
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&url, cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.FlagSet().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
