package readside

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/migrations"
	"github.com/readside/readside/projectors"
)

// SchemaDefault is the schema readside lives in unless Config.Schema names
// another.
const SchemaDefault = string(dbschema.Default)

// Defaults of the control plane, beside projectors' defaults for the
// worker.
const (
	ControlWorkersDefault  = control.WorkersDefault
	PruneIntervalDefault   = control.PruneIntervalDefault
	OutboxRetentionDefault = control.RetentionDefault
)

// Config configures a Client. Only Pool and Projections are required; the
// zero value of every other field means its default.
type Config struct {
	// Pool is the database. A fleet member (Start) needs about 2 x
	// Concurrency + 11 connections with side-effect projections (an apply
	// and a prefetch per running segment, the coordinator, the control
	// plane's River client, metrics); operations need a few.
	Pool *pgxpool.Pool
	// Schema holds readside's tables, functions and River's tables, and is
	// where the projections' unqualified names resolve first. "" means
	// SchemaDefault. A database migrated before readside had a schema of
	// its own keeps working with "public".
	Schema string
	// BesideOtherInstalls lets Migrate install readside in Schema when the
	// database holds readside in another schema already; without it that is
	// refused (migrations.ErrOtherInstall), since the configuration most
	// likely forgot that schema.
	BesideOtherInstalls bool
	// Projections this client runs (Start) and operates on (Reset,
	// Rebuild, Repair need one of them; Pause, Resume and dead letters also
	// take any projection registered in the database). Required.
	Projections []projectors.Projection

	// WorkerID names this fleet member in leases. Empty means
	// hostname-pid-random; two live members must never share one.
	WorkerID string
	// Concurrency is how many segments the member applies at once. 0
	// means projectors.ConcurrencyDefault.
	Concurrency int
	// BatchSize is how many outbox rows one fetch passes over. 0 means
	// projectors.BatchSizeDefault.
	BatchSize int
	// BatchBytes is the payload budget of one fetch, in bytes (a batch
	// holds at least one event). 0 means outbox.FetchMaxBytesDefault.
	BatchBytes int64
	// PollInterval is the fallback when no notification arrives. 0 means
	// projectors.PollIntervalDefault.
	PollInterval time.Duration
	// PollOnly turns LISTEN off for the worker and the control plane (use
	// it behind PgBouncer in transaction pooling mode).
	PollOnly bool
	// SynchronousApply makes apply transactions wait for their WAL flush
	// at COMMIT; by default they commit asynchronously (see
	// projectors.Config.SynchronousApply).
	SynchronousApply bool
	// LeaseTTL is how long a segment's lease lasts without renewal: a dead
	// member's segments move after at most this long. 0 means
	// projectors.LeaseTTLDefault.
	LeaseTTL time.Duration
	// MaxAttempts is how often a failing event is tried before it is
	// parked or halts its segment. 0 means projectors.MaxAttemptsDefault.
	MaxAttempts int
	// SoftStopTimeout is how long Stop lets batches and control jobs in
	// flight finish before cancelling them. 0 means
	// projectors.SoftStopTimeoutDefault.
	SoftStopTimeout time.Duration

	// ControlWorkers is how many control jobs (reset, rebuild, dead-letter
	// retry, pruning) the member runs at once. 0 means
	// ControlWorkersDefault.
	ControlWorkers int
	// PruneInterval is how often the outbox is pruned. 0 means
	// PruneIntervalDefault; negative disables pruning.
	PruneInterval time.Duration
	// OutboxRetention keeps outbox rows this long after every projection
	// passed them. 0 means OutboxRetentionDefault; negative means none.
	OutboxRetention time.Duration
	// RiverLogLevel is the least level of River's own log records. nil
	// means slog.LevelWarn.
	RiverLogLevel slog.Leveler

	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the member's metrics when it starts: the
	// runtime's counters, lag and health read from the database, and the
	// pool's. nil means none.
	Registerer prometheus.Registerer
}

func (c *Config) validate() (dbschema.Name, error) {
	if c.Pool == nil {
		return "", errors.New("readside: Config.Pool is required")
	}
	if len(c.Projections) == 0 {
		return "", errors.New("readside: Config.Projections is empty")
	}
	seen := map[string]bool{}
	for _, p := range c.Projections {
		if p == nil {
			return "", errors.New("readside: nil projection in Config.Projections")
		}
		name := p.Spec().Name
		if seen[name] {
			return "", fmt.Errorf("readside: projection %q given twice", name)
		}
		seen[name] = true
	}
	n, err := dbschema.Parse(c.Schema)
	if err != nil {
		return "", fmt.Errorf("readside: %w", err)
	}
	return n, nil
}

// Client is readside in a Go program: it migrates the database, runs a
// fleet member (Start, Stop) and operates projections (Reset, Rebuild,
// Pause, Resume, dead letters, Repair, Status, the waits). The projector
// command line is one program built on it.
type Client struct {
	cfg    Config
	schema dbschema.Name
	db     *dbschema.Pool
	log    *slog.Logger
	projs  map[string]projectors.Projection
	ctl    *control.Control

	worker *projectors.Worker

	mu         sync.Mutex
	started    bool
	registered bool // the metrics read from the database
	stopped    chan struct{}
}

// NewClient validates cfg and returns a Client. It does not touch the
// database.
func NewClient(cfg Config) (*Client, error) {
	n, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Client{cfg: cfg, schema: n, db: n.Pool(cfg.Pool), log: cfg.Logger, projs: map[string]projectors.Projection{},
		stopped: make(chan struct{})}
	for _, p := range cfg.Projections {
		c.projs[p.Spec().Name] = p
	}
	c.worker, err = projectors.NewWorker(projectors.Config{Pool: cfg.Pool, Schema: n.String(), Projections: cfg.Projections,
		WorkerID: cfg.WorkerID, Concurrency: cfg.Concurrency, BatchSize: cfg.BatchSize, BatchBytes: cfg.BatchBytes, PollInterval: cfg.PollInterval,
		PollOnly: cfg.PollOnly, SynchronousApply: cfg.SynchronousApply, LeaseTTL: cfg.LeaseTTL, MaxAttempts: cfg.MaxAttempts, SoftStopTimeout: cfg.SoftStopTimeout,
		Logger: cfg.Logger, Registerer: cfg.Registerer})
	if err != nil {
		return nil, err
	}
	c.ctl, err = control.New(control.Config{Pool: cfg.Pool, Schema: n.String(), Projections: cfg.Projections,
		MaxWorkers: cfg.ControlWorkers, PruneInterval: cfg.PruneInterval, Retention: cfg.OutboxRetention,
		SoftStopTimeout: cfg.SoftStopTimeout, Logger: cfg.Logger, PollOnly: cfg.PollOnly, RiverLogLevel: cfg.RiverLogLevel})
	if err != nil {
		return nil, fmt.Errorf("readside: %w", err)
	}
	return c, nil
}

// Schema is the schema readside lives in.
func (c *Client) Schema() string { return c.schema.String() }

// Projections are the client's projections, in Config order.
func (c *Client) Projections() []projectors.Projection { return slices.Clone(c.cfg.Projections) }

// Migrate creates the schema when missing and applies River's and
// readside's pending migrations there, then the DDL of the projections
// that implement projectors.Schema, under an advisory lock: any number of
// fleet members may run it at once. Nothing is created outside the schema.
func (c *Client) Migrate(ctx context.Context) (*migrations.Result, error) {
	return migrations.Migrate(ctx, c.cfg.Pool, c.migrateConfig())
}

// MigratePlan is what Migrate would apply now, with its SQL.
func (c *Client) MigratePlan(ctx context.Context) (*migrations.Plan, []migrations.DDL, error) {
	cfg := c.migrateConfig()
	plan, err := migrations.Pending(ctx, c.cfg.Pool, cfg)
	return plan, cfg.Projections, err
}

// MigrateStatus lists readside's migrations, applied or pending.
func (c *Client) MigrateStatus(ctx context.Context) (*migrations.SchemaStatus, error) {
	return migrations.Status(ctx, c.cfg.Pool, c.migrateConfig())
}

func (c *Client) migrateConfig() migrations.Config {
	cfg := migrations.Config{Schema: c.schema.String(), Logger: c.log, BesideOtherInstalls: c.cfg.BesideOtherInstalls}
	for _, p := range c.cfg.Projections {
		if sc, ok := p.(projectors.Schema); ok {
			cfg.Projections = append(cfg.Projections, migrations.DDL{Projection: p.Spec().Name, SQL: sc.Schema()})
		}
	}
	return cfg
}

// CheckSchema returns nil when the database is migrated to exactly this
// binary's version, and an error wrapping migrations.ErrNotMigrated or
// migrations.ErrSchemaTooNew otherwise.
func (c *Client) CheckSchema(ctx context.Context) error {
	return migrations.Check(ctx, c.cfg.Pool, c.schema.String())
}

// Start starts a fleet member in the background: a worker that claims its
// share of the projections' segments and applies them, and the control
// plane that executes resets, rebuilds, dead-letter retries, pruning and
// the projections' side-effect jobs. It returns an error when the database
// is unreachable, not migrated, or its transaction ids went backwards.
// Cancelling ctx stops the member as Stop does: batches in flight finish,
// then leases are released.
func (c *Client) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return errors.New("readside: client already started")
	}
	if err := c.registerMetrics(); err != nil {
		return err
	}
	if err := c.worker.Start(ctx); err != nil {
		return err
	}
	if err := c.ctl.Start(ctx); err != nil {
		_ = c.worker.Stop(context.WithoutCancel(ctx))
		return fmt.Errorf("readside: control plane: %w", err)
	}
	c.started = true
	go func() {
		<-c.worker.Stopped()
		<-c.ctl.Stopped()
		close(c.stopped)
	}()
	return nil
}

// registerMetrics registers, once, the metrics read from the database.
func (c *Client) registerMetrics() error {
	reg := c.cfg.Registerer
	if reg == nil || c.registered {
		return nil
	}
	c.registered = true
	if err := observe.RegisterPipelineMetrics(reg, c.db, c.log); err != nil {
		return err
	}
	if err := observe.RegisterUnsubscribedMetrics(reg, c.db, c.log, c.cfg.Projections...); err != nil {
		return err
	}
	return observe.RegisterPoolMetrics(reg, c.cfg.Pool, "projector")
}

// Stop stops a started member softly: batches and control jobs in flight
// finish within SoftStopTimeout (then they are cancelled and roll back),
// and leases are released. Safe to call twice and before Start.
func (c *Client) Stop(ctx context.Context) error {
	c.mu.Lock()
	started := c.started
	c.mu.Unlock()
	if !started {
		return nil
	}
	cerr := c.ctl.Stop(ctx)
	err := errors.Join(c.worker.Stop(ctx), cerr)
	select {
	case <-c.stopped:
	case <-ctx.Done():
	}
	return err
}

// Stopped is closed when a started member has stopped (Stop, or Start's
// context cancelled, or the worker gave up).
func (c *Client) Stopped() <-chan struct{} { return c.stopped }

// WorkerID is the member's id in leases (Config.WorkerID, or the one
// chosen for it).
func (c *Client) WorkerID() string { return c.worker.ID() }

// projection returns the client's projection called name.
func (c *Client) projection(name string) (projectors.Projection, error) {
	if p, ok := c.projs[name]; ok {
		return p, nil
	}
	return nil, &UnknownProjectionError{Name: name, Carried: c.names()}
}

func (c *Client) names() []string {
	out := make([]string, 0, len(c.projs))
	for n := range c.projs {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// known checks a name for the operations that only touch database state
// (pause, resume, dead letters): one of the client's projections, or one a
// worker registered in the database (of another binary, a rebuild's copy).
func (c *Client) known(ctx context.Context, name string) error {
	if _, ok := c.projs[name]; ok {
		return nil
	}
	regs, err := checkpoint.Registry(ctx, c.db)
	if err != nil {
		return fmt.Errorf("list %w", err)
	}
	var reg []string
	for _, r := range regs {
		reg = append(reg, r.Name)
	}
	if slices.Contains(reg, name) {
		return nil
	}
	return &UnknownProjectionError{Name: name, Carried: c.names(), Registered: reg, checkedDB: true}
}

// UnknownProjectionError is returned for a name that is not one of the
// client's projections (nor, where registered ones count, registered in
// the database). It wraps checkpoint.ErrUnknownProjection.
type UnknownProjectionError struct {
	Name       string
	Carried    []string // the client's projections
	Registered []string // registered in the database, when they were looked up
	checkedDB  bool
}

func (e *UnknownProjectionError) Error() string {
	msg := fmt.Sprintf("unknown projection %q (this binary carries: %s", e.Name, strings.Join(e.Carried, ", "))
	if e.checkedDB {
		msg += "; registered in the database: " + cmp.Or(strings.Join(e.Registered, ", "), "none")
	}
	return msg + ")"
}

func (e *UnknownProjectionError) Unwrap() error { return checkpoint.ErrUnknownProjection }

// River is the control plane's River client: the jobs of control
// operations and side effects are its jobs (riverui serves it).
func (c *Client) River() *river.Client[pgx.Tx] { return c.ctl.Client() }

// InSchema returns tx, whose statements that name readside's objects
// (outbox.Append, aggregate.Load, the SQL contract written as
// `readside.events`) then run in schema instead of SchemaDefault. For the
// default schema it is tx itself.
func InSchema(tx pgx.Tx, schema string) (pgx.Tx, error) {
	n, err := dbschema.Parse(schema)
	if err != nil {
		return nil, err
	}
	return n.Tx(tx), nil
}
