package main

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/internal/loadgen"
)

type loadConfig struct {
	url                string
	snapshotEvery      int
	maxConflictRetries int
	gen                loadgen.Config
	schema             string
}

func loadCommand() *cobra.Command {
	var lc loadConfig
	c := &lc.gen
	cmd := &cobra.Command{
		Use:   "load",
		Short: "generate order life cycles through the command path and report events/s",
		Args:  cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runLoad(cmd.Context(), lc, cmd.OutOrStdout())
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&lc.url, cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.Schema(&lc.schema)
	fs.Int(&c.Events, "events", "WRITER_LOAD_EVENTS", 10000, "events to write in total, product creation included")
	fs.Int(&c.Aggregates, "aggregates", "WRITER_LOAD_AGGREGATES", 100, "orders in flight at once; fewer means more concurrency conflicts")
	fs.Int(&c.Concurrency, "concurrency", "WRITER_LOAD_CONCURRENCY", 8, "concurrent writers")
	fs.Float(&c.Rate, "rate", "WRITER_LOAD_RATE", 0, "commands per second over all writers; 0 means as fast as possible")
	fs.Int(&c.Products, "products", "WRITER_LOAD_PRODUCTS", 20, "products to create first; orders pick items from them and 5% of commands change their prices")
	fs.Int(&lc.snapshotEvery, "snapshot-every", "WRITER_SNAPSHOT_EVERY", aggregate.SnapshotEveryDefault, "snapshot an aggregate every N events; negative disables")
	fs.Int(&lc.maxConflictRetries, "max-conflict-retries", "WRITER_MAX_CONFLICT_RETRIES", aggregate.MaxConflictRetriesDefault, "retries of a concurrency conflict; negative means none")
	fs.Duration(&c.Progress, "progress", "WRITER_LOAD_PROGRESS", time.Second, "progress report interval")
	return cmd
}

func runLoad(ctx context.Context, lc loadConfig, stdout io.Writer) error {
	c, url, snapshotEvery, maxConflictRetries := lc.gen, lc.url, lc.snapshotEvery, lc.maxConflictRetries
	if c.Progress <= 0 {
		return errors.New("load: --progress must be positive")
	}
	if err := c.Validate(); err != nil {
		return err
	}
	pool, err := connect(ctx, cli.ConnectConfig{URL: url, MinConns: c.Concurrency + 2}, lc.schema)
	if err != nil {
		return err
	}
	defer pool.Close()
	repo, err := aggregate.New(pool, aggregate.Config{SnapshotEvery: snapshotEvery, MaxConflictRetries: maxConflictRetries})
	if err != nil {
		return err
	}
	return loadgen.Run(ctx, repo, c, stdout)
}
