package projectorcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/riverqueue/river"
	"github.com/spf13/cobra"

	"github.com/readside/readside"
	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/internal/pgerr"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

type runConfig struct {
	url            string
	projections    string
	workerID       string
	metricsAddr    string
	concurrency    int
	batchSize      int
	batchBytes     int
	poll           time.Duration
	pollOnly       bool
	syncApply      bool
	pgbouncer      bool
	maxConns       int
	leaseTTL       time.Duration
	softStop       time.Duration
	retention      time.Duration
	pruneEvery     time.Duration
	startupTimeout time.Duration
	riverUI        bool
	riverUIToken   string
	logFormat      string
	logLevel       string
	riverLogLevel  string
}

func (a *app) runCommand() *cobra.Command {
	var c runConfig
	cmd := &cobra.Command{
		Use:     "run",
		GroupID: "fleet",
		Short:   "run a fleet member: claim segments and apply projections",
		Long: `Run a fleet member: it heartbeats, claims its share of the (projection, segment)
leases, applies the projections, works the control jobs (reset, rebuild,
dead-letter retry, outbox pruning) and serves /metrics, /healthz and /readyz.
SIGINT or SIGTERM stops it softly: batches in flight finish.`,
		Args: cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runRun(cmd.Context(), c, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&c.url, cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.String(&c.projections, "projections", "PROJECTOR_PROJECTIONS", "", "comma-separated projections to run; empty means all in this binary")
	fs.String(&c.workerID, "worker-id", "PROJECTOR_WORKER_ID", "", "this worker's id in leases; empty means hostname-pid-random")
	fs.String(&c.metricsAddr, "metrics-addr", "PROJECTOR_METRICS_ADDR", ":9464", "listen address for /metrics, /healthz, /readyz; empty disables")
	fs.Int(&c.concurrency, "concurrency", "PROJECTOR_CONCURRENCY", projectors.ConcurrencyDefault, "segments worked on at once, and the most fetches and applies on the server at once")
	fs.Int(&c.batchSize, "batch-size", "PROJECTOR_BATCH_SIZE", projectors.BatchSizeDefault, "outbox rows per fetch")
	fs.Int(&c.batchBytes, "batch-bytes", "PROJECTOR_BATCH_BYTES", outbox.FetchMaxBytesDefault, "payload bytes per fetch: a batch stops at the event that reaches it (at least one event)")
	fs.Duration(&c.poll, "poll-interval", "PROJECTOR_POLL_INTERVAL", projectors.PollIntervalDefault, "fallback poll when no notification arrives")
	fs.Bool(&c.pollOnly, "poll-only", "PROJECTOR_POLL_ONLY", false, "no LISTEN (worker and control plane): poll every --poll-interval")
	fs.Bool(&c.syncApply, "synchronous-apply", "PROJECTOR_SYNCHRONOUS_APPLY", false, "apply transactions wait for their WAL flush at COMMIT (the session's synchronous_commit); by default they commit asynchronously: a server crash may undo the last applied batches, which are applied again")
	fs.Bool(&c.pgbouncer, "pgbouncer", "PROJECTOR_PGBOUNCER", false, "the database URL is PgBouncer in transaction pooling mode: --poll-only, and no named prepared statements (pgx cache_describe unless the URL sets default_query_exec_mode)")
	fs.Int(&c.maxConns, "max-conns", "PROJECTOR_MAX_CONNS", 0, "connection pool size; 0 means the budget for --concurrency (concurrency + 11 with every shipped projection); at least concurrency + 2")
	fs.Duration(&c.leaseTTL, "lease-ttl", "PROJECTOR_LEASE_TTL", projectors.LeaseTTLDefault, "segment lease time to live; a dead worker's segments move after this")
	fs.Duration(&c.softStop, "soft-stop-timeout", "PROJECTOR_SOFT_STOP_TIMEOUT", projectors.SoftStopTimeoutDefault, "on SIGTERM, how long batches in flight may finish")
	fs.Duration(&c.retention, "outbox-retention", "PROJECTOR_OUTBOX_RETENTION", readside.OutboxRetentionDefault, "keep outbox rows at least this long after every projection passed them")
	fs.Duration(&c.pruneEvery, "prune-interval", "PROJECTOR_PRUNE_INTERVAL", readside.PruneIntervalDefault, "how often to prune the outbox; negative disables")
	fs.Duration(&c.startupTimeout, "startup-timeout", "PROJECTOR_STARTUP_TIMEOUT", 30*time.Second, "how long to retry reaching the database at start (a restart in progress) before giving up")
	fs.FlagSet().BoolVar(&c.riverUI, "riverui", false, "serve River's UI at /riverui/ on --metrics-addr (needs --riverui-token)")
	fs.Secret(&c.riverUIToken, "riverui-token", "PROJECTOR_RIVERUI_TOKEN", "", "token guarding /riverui/ (Authorization: Bearer, or /riverui/?token= once in a browser)")
	fs.Enum(cmd, &c.logFormat, "log-format", "PROJECTOR_LOG_FORMAT", "text", cli.LogFormats, "log format")
	fs.Enum(cmd, &c.logLevel, "log-level", "PROJECTOR_LOG_LEVEL", "info", cli.LogLevels, "log level")
	fs.Enum(cmd, &c.riverLogLevel, "river-log-level", "PROJECTOR_RIVER_LOG_LEVEL", "warn", cli.LogLevels, "least level of River's own log records (it logs every producer poll at info)")
	_ = cmd.RegisterFlagCompletionFunc("projections", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return a.names(), cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}

func (a *app) runRun(ctx context.Context, c runConfig, stdout, stderr io.Writer) error {
	logger, err := cli.Logger(stderr, c.logFormat, c.logLevel)
	if err != nil {
		return err
	}
	projs, err := a.selectProjections(c.projections)
	if err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return err
	}
	pool, err := c.connect(ctx, logger, projs)
	if err != nil {
		return err
	}
	defer pool.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	client, err := a.newMember(pool, projs, c, logger, reg)
	if err != nil {
		return err
	}
	if err := startup(ctx, logger, c.startupTimeout, "start", func() error { return client.Start(ctx) }); err != nil {
		return err
	}
	logger.Info("projector started", "worker", client.WorkerID(), "projections", len(projs), "concurrency", c.concurrency,
		"max_conns", pool.Config().MaxConns, "poll_only", c.listenless(), "pgbouncer", c.pgbouncer, "schema", client.Schema())

	srv, srvErr, err := c.serveMetrics(ctx, healthMux(reg, pool, client), client, logger)
	if err != nil {
		_ = client.Stop(context.Background())
		return err
	}
	select {
	case <-ctx.Done():
		logger.Info("stopping: finishing batches in flight", "timeout", c.softStop)
	case <-client.Stopped():
	case err := <-srvErr:
		logger.Error("metrics server failed", "err", err)
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), c.softStop+5*time.Second)
	defer cancel()
	if srv != nil {
		_ = srv.Shutdown(stopCtx)
	}
	err = client.Stop(stopCtx)
	logger.Info("projector stopped", "worker", client.WorkerID())
	return err
}

func (c runConfig) validate() error {
	if c.riverUI && (c.metricsAddr == "" || len(c.riverUIToken) < 16) {
		return errors.New("--riverui needs --metrics-addr and a --riverui-token (env PROJECTOR_RIVERUI_TOKEN) of at least 16 characters")
	}
	if c.concurrency < 1 || c.batchSize < 1 || c.batchBytes < 1 {
		return errors.New("--concurrency, --batch-size and --batch-bytes must be at least 1")
	}
	return nil
}

// listenless says the worker and River poll instead of LISTEN: LISTEN
// needs a session of its own, which transaction pooling cannot give.
func (c runConfig) listenless() bool { return c.pollOnly || c.pgbouncer }

// connect opens the pool sized by the connection budget (or --max-conns),
// retrying while the database is restarting.
func (c runConfig) connect(ctx context.Context, logger *slog.Logger, projs []projectors.Projection) (*pgxpool.Pool, error) {
	budget := newConnBudget(c.concurrency, sideEffectWorkers(projs), c.listenless())
	size, err := poolSize(c.maxConns, c.concurrency, budget)
	if err != nil {
		return nil, err
	}
	var pool *pgxpool.Pool
	if err := startup(ctx, logger, c.startupTimeout, "connect", func() (err error) {
		cc := cli.ConnectConfig{URL: c.url, MinConns: size, PgBouncer: c.pgbouncer}
		if c.maxConns > 0 {
			cc.MaxConns = size // exactly, whatever pool_max_conns the URL names
		}
		pool, err = cc.Connect(ctx)
		return err
	}); err != nil {
		return nil, err
	}
	return pool, nil
}

// newMember builds this fleet member: a readside.Client that runs projs
// and registers its metrics on reg.
func (a *app) newMember(pool *pgxpool.Pool, projs []projectors.Projection, c runConfig, logger *slog.Logger, reg *prometheus.Registry) (*readside.Client, error) {
	var riverLevel slog.Level
	_ = riverLevel.UnmarshalText([]byte(c.riverLogLevel)) // an enum flag: always valid
	return a.newClient(readside.Config{Pool: pool, Projections: projs, WorkerID: c.workerID, Concurrency: c.concurrency,
		BatchSize: c.batchSize, BatchBytes: int64(c.batchBytes), PollInterval: c.poll, PollOnly: c.listenless(), SynchronousApply: c.syncApply, LeaseTTL: c.leaseTTL, SoftStopTimeout: c.softStop,
		OutboxRetention: c.retention, PruneInterval: c.pruneEvery, RiverLogLevel: riverLevel, Logger: logger, Registerer: reg})
}

// healthMux serves /metrics, /healthz and /readyz (ready while the member
// runs and the database answers).
func healthMux(reg *prometheus.Registry, pool *pgxpool.Pool, client *readside.Client) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(rw http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		select {
		case <-client.Stopped():
			http.Error(rw, "worker stopped", http.StatusServiceUnavailable)
			return
		default:
		}
		if err := pool.Ping(ctx); err != nil {
			http.Error(rw, "database unreachable", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(rw, "ready")
	})
	return mux
}

// serveMetrics serves mux (with River's UI under --riverui) on
// --metrics-addr; no server when it is empty. The channel receives the
// server's error if it stops serving.
func (c runConfig) serveMetrics(ctx context.Context, mux *http.ServeMux, client *readside.Client, logger *slog.Logger) (*http.Server, <-chan error, error) {
	srvErr := make(chan error, 1)
	if c.metricsAddr == "" {
		return nil, srvErr, nil
	}
	if c.riverUI {
		if err := mountRiverUI(ctx, mux, client.River(), c.riverUIToken, logger); err != nil {
			return nil, nil, fmt.Errorf("riverui: %w", err)
		}
	}
	ln, err := net.Listen("tcp", c.metricsAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("--metrics-addr %s: %w", c.metricsAddr, err)
	}
	logger.Info("serving metrics", "addr", ln.Addr().String())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { srvErr <- srv.Serve(ln) }()
	return srv, srvErr, nil
}

// startup runs fn, retrying it while it fails with a transient database
// error (the server is restarting, a connection was terminated) for up to
// timeout. Anything else (unmigrated schema, xid regression) fails at once.
func startup(ctx context.Context, logger *slog.Logger, timeout time.Duration, step string, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || pgerr.Transient(err) == "" || time.Now().After(deadline) {
			return err
		}
		logger.Warn("startup: database not ready; retrying", "step", step, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(min(time.Duration(attempt)*250*time.Millisecond, 2*time.Second)):
		}
	}
}

// queues merges the River queues of the projections with side effects.
func queues(projs []projectors.Projection) map[string]river.QueueConfig {
	out := map[string]river.QueueConfig{}
	for _, p := range projs {
		if se, ok := p.(projectors.SideEffects); ok {
			for q, cfg := range se.RiverQueues() {
				out[q] = cfg
			}
		}
	}
	return out
}

// selectProjections resolves a comma-separated list of names ("" = all the
// binary carries).
func (a *app) selectProjections(list string) ([]projectors.Projection, error) {
	if strings.TrimSpace(list) == "" {
		return a.projs, nil
	}
	var out []projectors.Projection
	for _, name := range strings.Split(list, ",") {
		p, err := a.carried(strings.TrimSpace(name))
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}
