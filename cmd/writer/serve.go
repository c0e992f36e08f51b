package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/internal/httpapi"
	"github.com/readside/readside/internal/observe"
)

type serveConfig struct {
	addr               string
	databaseURL        string
	snapshotEvery      int
	maxConflictRetries int
	shutdownTimeout    time.Duration
	consistencyWait    time.Duration
	maxCommands        int
	maxQueries         int
	acquireTimeout     time.Duration
	commandTimeout     time.Duration
	queryTimeout       time.Duration
	lockTimeout        time.Duration
	schema             string
	logFormat          string
	logLevel           string
}

// queryPoolSpare is how many connections the query pool holds beyond
// --max-queries: for the consistency waits' polls, /readyz and the
// pipeline metrics of a /metrics scrape, which take no place among them.
const queryPoolSpare = 4

func serveCommand() *cobra.Command {
	var c serveConfig
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "serve the HTTP JSON API: commands and queries on orders and products, /metrics, /healthz, /readyz",
		Args:  cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd.Context(), c, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := cli.NewFlags(cmd)
	fs.String(&c.addr, "addr", "WRITER_ADDR", ":8080", "listen address")
	fs.DatabaseURL(&c.databaseURL, cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.Schema(&c.schema)
	fs.Int(&c.snapshotEvery, "snapshot-every", "WRITER_SNAPSHOT_EVERY", aggregate.SnapshotEveryDefault, "snapshot an aggregate every N events; negative disables")
	fs.Int(&c.maxConflictRetries, "max-conflict-retries", "WRITER_MAX_CONFLICT_RETRIES", aggregate.MaxConflictRetriesDefault, "retries of a concurrency conflict before 409; negative means none")
	fs.Duration(&c.shutdownTimeout, "shutdown-timeout", "WRITER_SHUTDOWN_TIMEOUT", 10*time.Second, "how long in-flight requests may finish at shutdown")
	fs.Duration(&c.consistencyWait, "consistency-wait", "WRITER_CONSISTENCY_WAIT", httpapi.ConsistencyWaitDefault,
		"how long a query with a consistency token waits for its projections when it gives no ?wait=")
	fs.Int(&c.maxCommands, "max-commands", "WRITER_MAX_COMMANDS", httpapi.MaxCommandsDefault,
		"commands run at once, on a pool of their own of this many connections; more wait up to --acquire-timeout, then 503")
	fs.Int(&c.maxQueries, "max-queries", "WRITER_MAX_QUERIES", httpapi.MaxQueriesDefault,
		fmt.Sprintf("query reads run at once, on a pool of their own of this many connections plus %d; more wait up to --acquire-timeout, then 503", queryPoolSpare))
	fs.Duration(&c.acquireTimeout, "acquire-timeout", "WRITER_ACQUIRE_TIMEOUT", httpapi.AcquireTimeoutDefault,
		"how long a command or a query's read waits for a place among --max-commands or --max-queries")
	fs.Duration(&c.commandTimeout, "command-timeout", "WRITER_COMMAND_TIMEOUT", httpapi.CommandTimeoutDefault,
		"bound of a command from its arrival (place, transactions, retries); then 503")
	fs.Duration(&c.queryTimeout, "query-timeout", "WRITER_QUERY_TIMEOUT", httpapi.QueryTimeoutDefault,
		"statement_timeout of a query's read (the consistency wait is bounded by ?wait=)")
	fs.Duration(&c.lockTimeout, "lock-timeout", "WRITER_LOCK_TIMEOUT", aggregate.LockTimeoutDefault,
		"lock_timeout of commands and reads: how long one waits for a lock another transaction holds; then 503")
	fs.Enum(cmd, &c.logFormat, "log-format", "WRITER_LOG_FORMAT", "json", cli.LogFormats, "log format")
	fs.Enum(cmd, &c.logLevel, "log-level", "WRITER_LOG_LEVEL", "info", cli.LogLevels, "log level")
	return cmd
}

func runServe(ctx context.Context, c serveConfig, stdout, stderr io.Writer) error {
	if err := c.validate(); err != nil {
		return err
	}
	logger, err := cli.Logger(stderr, c.logFormat, c.logLevel)
	if err != nil {
		return err
	}
	// Commands and queries each have a pool: neither can take the other's
	// connections, whatever holds them up.
	commands, err := connect(ctx, cli.ConnectConfig{URL: c.databaseURL, MaxConns: c.maxCommands}, c.schema)
	if err != nil {
		return err
	}
	defer commands.Close()
	queries, err := connect(ctx, cli.ConnectConfig{URL: c.databaseURL, MaxConns: c.maxQueries + queryPoolSpare}, c.schema)
	if err != nil {
		return err
	}
	defer queries.Close()
	api, err := newAPI(commands, queries, c, logger)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	srv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	fmt.Fprintf(stdout, "writer: listening on %s\n", ln.Addr())
	logger.Info("serving", "addr", ln.Addr().String())
	if err := serveUntilDone(ctx, srv, ln, c.shutdownTimeout); err != nil {
		return err
	}
	logger.Info("stopped")
	return nil
}

func (c serveConfig) validate() error {
	if c.shutdownTimeout <= 0 {
		return errors.New("serve: --shutdown-timeout must be positive")
	}
	if c.consistencyWait <= 0 || c.consistencyWait > httpapi.MaxConsistencyWaitDefault {
		return fmt.Errorf("serve: --consistency-wait must be above 0 and at most %v", httpapi.MaxConsistencyWaitDefault)
	}
	if c.maxCommands < 1 || c.maxQueries < 1 {
		return errors.New("serve: --max-commands and --max-queries must be at least 1")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--acquire-timeout", c.acquireTimeout}, {"--command-timeout", c.commandTimeout}, {"--query-timeout", c.queryTimeout}, {"--lock-timeout", c.lockTimeout}} {
		if d.v < time.Millisecond {
			return fmt.Errorf("serve: %s must be at least 1ms", d.name)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--query-timeout", c.queryTimeout}, {"--lock-timeout", c.lockTimeout}} {
		// Set as statement_timeout and lock_timeout, which PostgreSQL
		// refuses past 2^31-1 ms: every read or command would fail.
		if d.v > dbschema.MaxTimeout {
			return fmt.Errorf("serve: %s must be at most %v", d.name, dbschema.MaxTimeout)
		}
	}
	if c.lockTimeout >= c.commandTimeout {
		// The server's timeout must fire first: the command's own deadline
		// can only drop the connection.
		return fmt.Errorf("serve: --lock-timeout %v must be below --command-timeout %v", c.lockTimeout, c.commandTimeout)
	}
	return nil
}

// newAPI builds the HTTP API (commands, queries, /metrics): commands on
// one pool, queries, /readyz and the pipeline metrics on the other.
func newAPI(commands, queries *dbschema.Pool, c serveConfig, logger *slog.Logger) (*httpapi.Server, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Lag and pipeline health are derived from the database, so the writer
	// exports them too: they stay visible when the whole projector fleet is
	// down (aggregate with max, see grafana/README.md).
	if err := observe.RegisterPipelineMetrics(reg, queries, logger); err != nil {
		return nil, err
	}
	if err := observe.RegisterPoolMetrics(reg, commands.Pool, "writer_commands"); err != nil {
		return nil, err
	}
	if err := observe.RegisterPoolMetrics(reg, queries.Pool, "writer_queries"); err != nil {
		return nil, err
	}
	repo, err := aggregate.New(commands, aggregate.Config{
		SnapshotEvery:      c.snapshotEvery,
		MaxConflictRetries: c.maxConflictRetries,
		LockTimeout:        c.lockTimeout,
		Registerer:         reg,
	})
	if err != nil {
		return nil, err
	}
	api, err := httpapi.New(httpapi.Config{Repository: repo, DB: queries, Registerer: reg, Logger: logger,
		CommandTimeout: c.commandTimeout, MaxCommands: c.maxCommands, AcquireTimeout: c.acquireTimeout})
	if err != nil {
		return nil, err
	}
	// The read models live in the same database: commands and queries side
	// by side, as in the seed's OrdersController.
	if err := api.HandleQueries(httpapi.QueryConfig{DB: queries, ConsistencyWait: c.consistencyWait,
		QueryTimeout: c.queryTimeout, LockTimeout: c.lockTimeout, MaxQueries: c.maxQueries}); err != nil {
		return nil, err
	}
	return api, nil
}

// serveUntilDone serves on ln until ctx is done, then stops softly: no new
// connections, in-flight commands commit or roll back within timeout, and
// after it the requests' contexts are cancelled.
func serveUntilDone(ctx context.Context, srv *http.Server, ln net.Listener, timeout time.Duration) error {
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	shutdownErr := srv.Shutdown(sctx)
	if shutdownErr != nil {
		_ = srv.Close() // hard stop: cancels the requests' contexts
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	if shutdownErr != nil {
		return fmt.Errorf("serve: shutdown: %w", shutdownErr)
	}
	return nil
}
