package main

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/internal/loadgen"
)

type loadConfig struct {
	databaseURL        string
	events             int
	aggregates         int
	concurrency        int
	rate               float64
	products           int
	snapshotEvery      int
	maxConflictRetries int
	progress           time.Duration
}

func (c *loadConfig) validate() error {
	switch {
	case c.events < 1:
		return errors.New("load: --events must be at least 1")
	case c.aggregates < 1:
		return errors.New("load: --aggregates must be at least 1")
	case c.concurrency < 1:
		return errors.New("load: --concurrency must be at least 1")
	case c.products < 1:
		return errors.New("load: --products must be at least 1")
	case c.rate < 0:
		return errors.New("load: --rate must not be negative")
	case c.progress <= 0:
		return errors.New("load: --progress must be positive")
	}
	return nil
}

func runLoad(ctx context.Context, args []string, stdout io.Writer) error {
	var c loadConfig
	fs := cli.NewFlagSet("writer load")
	fs.String(&c.databaseURL, "database-url", "DATABASE_URL", cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.Int(&c.events, "events", "WRITER_LOAD_EVENTS", 10000, "events to write in total, product creation included")
	fs.Int(&c.aggregates, "aggregates", "WRITER_LOAD_AGGREGATES", 100, "orders in flight at once; fewer means more concurrency conflicts")
	fs.Int(&c.concurrency, "concurrency", "WRITER_LOAD_CONCURRENCY", 8, "concurrent writers")
	fs.Float(&c.rate, "rate", "WRITER_LOAD_RATE", 0, "commands per second over all writers; 0 means as fast as possible")
	fs.Int(&c.products, "products", "WRITER_LOAD_PRODUCTS", 20, "products to create first; orders pick items from them and 5% of commands change their prices")
	fs.Int(&c.snapshotEvery, "snapshot-every", "WRITER_SNAPSHOT_EVERY", aggregate.SnapshotEveryDefault, "snapshot an aggregate every N events; negative disables")
	fs.Int(&c.maxConflictRetries, "max-conflict-retries", "WRITER_MAX_CONFLICT_RETRIES", aggregate.MaxConflictRetriesDefault, "retries of a concurrency conflict; negative means none")
	fs.Duration(&c.progress, "progress", "WRITER_LOAD_PROGRESS", time.Second, "progress report interval")
	if err := fs.Parse(args, stdout, 0); err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return err
	}
	pool, err := connect(ctx, c.databaseURL, c.concurrency+2)
	if err != nil {
		return err
	}
	defer pool.Close()
	repo, err := aggregate.New(pool, aggregate.Config{SnapshotEvery: c.snapshotEvery, MaxConflictRetries: c.maxConflictRetries})
	if err != nil {
		return err
	}
	return loadgen.Run(ctx, repo, loadgen.Config{Events: c.events, Aggregates: c.aggregates, Concurrency: c.concurrency,
		Rate: c.rate, Products: c.products, Progress: c.progress}, stdout)
}
