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

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/riverqueue/river"

	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/internal/pgerr"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/notifications"
)

type runConfig struct {
	url            string
	projections    string
	workerID       string
	metricsAddr    string
	concurrency    int
	batchSize      int
	poll           time.Duration
	leaseTTL       time.Duration
	softStop       time.Duration
	retention      time.Duration
	pruneEvery     time.Duration
	startupTimeout time.Duration
	riverUI        bool
	riverUIToken   string
	logFormat      string
	logLevel       string
}

func runRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c runConfig
	fs := cli.NewFlagSet("projector run")
	fs.String(&c.url, "database-url", "DATABASE_URL", cli.DatabaseURLDefault, "PostgreSQL URL")
	fs.String(&c.projections, "projections", "PROJECTOR_PROJECTIONS", "", "comma-separated projections to run; empty means all shipped")
	fs.String(&c.workerID, "worker-id", "PROJECTOR_WORKER_ID", "", "this worker's id in leases; empty means hostname-pid-random")
	fs.String(&c.metricsAddr, "metrics-addr", "PROJECTOR_METRICS_ADDR", ":9464", "listen address for /metrics, /healthz, /readyz; empty disables")
	fs.Int(&c.concurrency, "concurrency", "PROJECTOR_CONCURRENCY", projectors.ConcurrencyDefault, "segments applied at once")
	fs.Int(&c.batchSize, "batch-size", "PROJECTOR_BATCH_SIZE", projectors.BatchSizeDefault, "outbox rows per fetch")
	fs.Duration(&c.poll, "poll-interval", "PROJECTOR_POLL_INTERVAL", projectors.PollIntervalDefault, "fallback poll when no notification arrives")
	fs.Duration(&c.leaseTTL, "lease-ttl", "PROJECTOR_LEASE_TTL", projectors.LeaseTTLDefault, "segment lease time to live; a dead worker's segments move after this")
	fs.Duration(&c.softStop, "soft-stop-timeout", "PROJECTOR_SOFT_STOP_TIMEOUT", projectors.SoftStopTimeoutDefault, "on SIGTERM, how long batches in flight may finish")
	fs.Duration(&c.retention, "outbox-retention", "PROJECTOR_OUTBOX_RETENTION", projectors.RetentionDefault, "keep outbox rows at least this long after every projection passed them")
	fs.Duration(&c.pruneEvery, "prune-interval", "PROJECTOR_PRUNE_INTERVAL", projectors.PruneIntervalDefault, "how often to prune the outbox; negative disables")
	fs.Duration(&c.startupTimeout, "startup-timeout", "PROJECTOR_STARTUP_TIMEOUT", 30*time.Second, "how long to retry reaching the database at start (a restart in progress) before giving up")
	fs.BoolVar(&c.riverUI, "riverui", false, "serve River's UI at /riverui/ on --metrics-addr (needs --riverui-token)")
	fs.String(&c.riverUIToken, "riverui-token", "PROJECTOR_RIVERUI_TOKEN", "", "token guarding /riverui/ (Authorization: Bearer, or /riverui/?token= once in a browser)")
	fs.String(&c.logFormat, "log-format", "PROJECTOR_LOG_FORMAT", "text", "text or json")
	fs.String(&c.logLevel, "log-level", "PROJECTOR_LOG_LEVEL", "info", "debug, info, warn or error")
	if err := fs.Parse(args, stdout, 0); err != nil {
		return err
	}
	logger, err := cli.Logger(stderr, c.logFormat, c.logLevel)
	if err != nil {
		return err
	}
	projs, err := selectProjections(c.projections)
	if err != nil {
		return err
	}
	if c.riverUI && (c.metricsAddr == "" || len(c.riverUIToken) < 16) {
		return errors.New("--riverui needs --metrics-addr and a --riverui-token (env PROJECTOR_RIVERUI_TOKEN) of at least 16 characters")
	}
	if c.concurrency < 1 || c.batchSize < 1 {
		return errors.New("--concurrency and --batch-size must be at least 1")
	}
	var pool *pgxpool.Pool
	if err := startup(ctx, logger, c.startupTimeout, "connect", func() (err error) {
		pool, err = cli.Connect(ctx, c.url, 2*c.concurrency+4+projectors.ControlWorkersDefault+4)
		return err
	}); err != nil {
		return err
	}
	defer pool.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	w, err := projectors.NewWorker(projectors.Config{
		Pool: pool, Projections: projs, WorkerID: c.workerID, Concurrency: c.concurrency, BatchSize: c.batchSize,
		PollInterval: c.poll, LeaseTTL: c.leaseTTL, SoftStopTimeout: c.softStop, Logger: logger, Registerer: reg,
	})
	if err != nil {
		return err
	}
	if err := projectors.RegisterPipelineMetrics(reg, pool, logger); err != nil {
		return err
	}
	if err := projectors.RegisterPoolMetrics(reg, pool, "projector"); err != nil {
		return err
	}
	control, err := projectors.NewControl(projectors.ControlConfig{Pool: pool, Projections: projs, Logger: logger,
		Retention: c.retention, PruneInterval: c.pruneEvery,
		RegisterWorkers: notifications.AddWorkers(pool),
		Queues:          map[string]river.QueueConfig{notifications.Queue: {MaxWorkers: 4}}})
	if err != nil {
		return err
	}
	if err := startup(ctx, logger, c.startupTimeout, "start worker", func() error { return w.Start(ctx) }); err != nil {
		return err
	}
	if err := startup(ctx, logger, c.startupTimeout, "start control plane", func() error { return control.Start(ctx) }); err != nil {
		_ = w.Stop(context.Background())
		return fmt.Errorf("control plane: %w", err)
	}
	logger.Info("projector started", "worker", w.ID(), "projections", len(projs), "concurrency", c.concurrency)

	var srv *http.Server
	srvErr := make(chan error, 1)
	if c.metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("GET /readyz", func(rw http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
			defer cancel()
			select {
			case <-w.Stopped():
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
		if c.riverUI {
			if err := mountRiverUI(ctx, mux, control.Client(), c.riverUIToken, logger); err != nil {
				_ = control.Stop(context.Background())
				_ = w.Stop(context.Background())
				return fmt.Errorf("riverui: %w", err)
			}
		}
		ln, err := net.Listen("tcp", c.metricsAddr)
		if err != nil {
			_ = control.Stop(context.Background())
			_ = w.Stop(context.Background())
			return fmt.Errorf("--metrics-addr %s: %w", c.metricsAddr, err)
		}
		logger.Info("serving metrics", "addr", ln.Addr().String())
		srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { srvErr <- srv.Serve(ln) }()
	}

	select {
	case <-ctx.Done():
		logger.Info("stopping: finishing batches in flight", "timeout", c.softStop)
	case <-w.Stopped():
	case err := <-srvErr:
		logger.Error("metrics server failed", "err", err)
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), c.softStop+5*time.Second)
	defer cancel()
	if srv != nil {
		_ = srv.Shutdown(stopCtx)
	}
	cerr := control.Stop(stopCtx)
	err = w.Stop(stopCtx)
	logger.Info("projector stopped", "worker", w.ID())
	return errors.Join(err, cerr)
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
