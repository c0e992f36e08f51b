package control

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/internal/pgerr"
	"github.com/readside/readside/projectors"
)

// Queue is the River queue of control operations.
const Queue = "readside_control"

// Defaults for Config.
const (
	WorkersDefault       = 2
	PruneIntervalDefault = time.Minute
	RetentionDefault     = time.Hour
	SwitchWaitDefault    = 10 * time.Second
	RebuildCheckDefault  = time.Second
	controlMaxAttempts   = 25
	pruneChunk           = 10_000
)

// ErrRebuildRunning refuses a reset or a second rebuild while a rebuild of
// the projection is in progress.
var ErrRebuildRunning = errors.New("a rebuild of this projection is in progress")

// ErrNothingToRetry is returned when no parked dead letter matches.
var ErrNothingToRetry = errors.New("no parked dead letters match")

// Config configures Control.
type Config struct {
	// Pool is the database; River uses it too (MaxWorkers + 2 connections,
	// plus a LISTEN connection it takes out of the pool unless PollOnly).
	Pool *pgxpool.Pool
	// Schema is readside's schema (River's tables are there too). "" means
	// "readside".
	Schema string
	// Projections whose control operations this process may execute: the
	// same list as the Worker's. The River workers and queues of those that
	// implement projectors.SideEffects are registered too, so their jobs
	// are worked.
	Projections []projectors.Projection
	// MaxWorkers is how many control jobs run at once. 0 means
	// WorkersDefault.
	MaxWorkers int
	// PruneInterval is how often outbox pruning runs; 0 means
	// PruneIntervalDefault, negative disables pruning.
	PruneInterval time.Duration
	// Retention keeps outbox rows at least this long even once every
	// projection has passed them. 0 means RetentionDefault; negative means
	// none (prune as soon as every projection has passed a row).
	Retention time.Duration
	// SwitchWait is how long a rebuild's switch may hold the live
	// projection back while its copy catches up the last few events. 0
	// means SwitchWaitDefault.
	SwitchWait time.Duration
	// RebuildCheck is how often a rebuild in progress checks whether its copy
	// has caught up. 0 means RebuildCheckDefault.
	RebuildCheck time.Duration
	// SoftStopTimeout is how long a stop (Stop, or cancelling Start's
	// context) lets running control jobs finish before cancelling them. 0
	// means projectors.SoftStopTimeoutDefault.
	SoftStopTimeout time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// PollOnly turns River's LISTEN off (River's Config.PollOnly): jobs are
	// fetched every second and leadership is polled for. Use it behind
	// PgBouncer in transaction pooling mode, which cannot deliver
	// notifications; Worker's Config.PollOnly is the same for the worker.
	PollOnly bool
	// RiverLogLevel is the least level of River's own log records passed
	// to Logger (River logs every producer poll at INFO). nil means
	// slog.LevelWarn.
	RiverLogLevel slog.Leveler
}

// Control runs readside's control plane: a River client on Queue
// that executes resets, rebuilds, dead-letter retries and outbox pruning,
// whichever fleet member picks them up, retried durably.
type Control struct {
	cfg    Config
	db     *dbschema.Pool // cfg.Pool in cfg.Schema
	log    *slog.Logger
	client *river.Client[pgx.Tx]
	projs  map[string]projectors.Projection
	mu     sync.Mutex
	start  bool
}

// New validates cfg and builds the River client.
func New(cfg Config) (*Control, error) {
	cfg.MaxWorkers = cmp.Or(cfg.MaxWorkers, WorkersDefault)
	cfg.PruneInterval = cmp.Or(cfg.PruneInterval, PruneIntervalDefault)
	cfg.Retention = cmp.Or(cfg.Retention, RetentionDefault)
	cfg.SwitchWait = cmp.Or(cfg.SwitchWait, SwitchWaitDefault)
	cfg.RebuildCheck = cmp.Or(cfg.RebuildCheck, RebuildCheckDefault)
	cfg.SoftStopTimeout = cmp.Or(cfg.SoftStopTimeout, projectors.SoftStopTimeoutDefault)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Pool == nil {
		return nil, errors.New("control: Config.Pool is required")
	}
	n, err := dbschema.Parse(cfg.Schema)
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	c := &Control{cfg: cfg, db: n.Pool(cfg.Pool), log: cfg.Logger.With("component", "control"), projs: map[string]projectors.Projection{}}
	for _, p := range cfg.Projections {
		c.projs[p.Spec().Name] = p
	}
	workers := river.NewWorkers()
	river.AddWorker(workers, &resetWorker{c: c})
	river.AddWorker(workers, &scaleWorker{c: c})
	river.AddWorker(workers, &rebuildWorker{c: c})
	river.AddWorker(workers, &deadLetterRetryWorker{c: c})
	river.AddWorker(workers, &pruneWorker{c: c})
	queues := map[string]river.QueueConfig{Queue: {MaxWorkers: cfg.MaxWorkers}}
	for _, p := range cfg.Projections {
		if se, ok := p.(projectors.SideEffects); ok {
			se.RiverWorkers(c.db, workers)
			maps.Copy(queues, se.RiverQueues())
		}
	}
	rcfg := &river.Config{
		Queues:      queues,
		Workers:     workers,
		Logger:      slog.New(minLevel{c.log.Handler(), cmp.Or[slog.Leveler](cfg.RiverLogLevel, slog.LevelWarn)}),
		MaxAttempts: controlMaxAttempts,
		// Cancelling Start's context (a signal) is then a soft stop too.
		SoftStopTimeout: cfg.SoftStopTimeout,
		// Control jobs are few; keep their history a week for operators.
		CompletedJobRetentionPeriod: 7 * 24 * time.Hour,
		PollOnly:                    cfg.PollOnly,
		Schema:                      n.String(),
		ErrorHandler:                jobErrors{log: c.log},
	}
	if cfg.PruneInterval > 0 {
		rcfg.PeriodicJobs = []*river.PeriodicJob{river.NewPeriodicJob(river.PeriodicInterval(cfg.PruneInterval),
			func() (river.JobArgs, *river.InsertOpts) { return PruneOutboxArgs{}, nil }, &river.PeriodicJobOpts{RunOnStart: true})}
	}
	client, err := river.NewClient(riverpgxv5.New(cfg.Pool), rcfg)
	if err != nil {
		return nil, fmt.Errorf("projectors: control: %w", err)
	}
	c.client = client
	return c, nil
}

// Start starts the River client in the background.
func (c *Control) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.start = true
	return c.client.Start(ctx)
}

// Stop lets running control jobs finish (they are short transactions) and
// stops the client. Safe to call twice and before Start.
func (c *Control) Stop(ctx context.Context) error {
	c.mu.Lock()
	started := c.start
	c.mu.Unlock()
	if !started {
		return nil
	}
	err := c.client.Stop(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return c.client.StopAndCancel(context.WithoutCancel(ctx))
	}
	return err
}

// Stopped is closed when the client has stopped.
func (c *Control) Stopped() <-chan struct{} { return c.client.Stopped() }

// Client is the River client, for inserting jobs from the same process.
func (c *Control) Client() *river.Client[pgx.Tx] { return c.client }

// unknownProjectionGrace is how long a control job for a projection this
// process does not run is handed back (snoozed) for a fleet member that runs
// it, before it is cancelled.
const unknownProjectionGrace = time.Minute

func (c *Control) projection(name string, created time.Time) (projectors.Projection, error) {
	p, ok := c.projs[name]
	if ok {
		return p, nil
	}
	// In a fleet mixing --projections, another member may run it: hand the
	// job back for a while, then give up with a clear reason.
	if time.Since(created) < unknownProjectionGrace {
		return nil, river.JobSnooze(2 * time.Second)
	}
	return nil, river.JobCancel(fmt.Errorf("projection %q is not run by any projector that picked this job up", name))
}

// uniqueByProjection makes one job per projection at a time.
func uniqueByProjection() river.UniqueOpts {
	return river.UniqueOpts{ByArgs: true, ByState: []rivertype.JobState{rivertype.JobStateAvailable, rivertype.JobStatePending,
		rivertype.JobStateRunning, rivertype.JobStateRetryable, rivertype.JobStateScheduled}}
}

// Jobs inserts control jobs and follows them with an insert-only River
// client, for the CLI and tests: a process that does not run the control
// plane itself.
type Jobs struct {
	client *river.Client[pgx.Tx]
}

// NewJobs returns a Jobs on pool, for readside in schema ("" means
// "readside").
func NewJobs(pool *pgxpool.Pool, schema string) (*Jobs, error) {
	n, err := dbschema.Parse(schema)
	if err != nil {
		return nil, err
	}
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{Schema: n.String()})
	if err != nil {
		return nil, err
	}
	return &Jobs{client: client}, nil
}

// Enqueue inserts a control job. The result says whether a unique job was
// already queued.
func (j *Jobs) Enqueue(ctx context.Context, args river.JobArgs) (*rivertype.JobInsertResult, error) {
	return j.client.Insert(ctx, args, nil)
}

// State returns a control job's state and its last error, if any.
func (j *Jobs) State(ctx context.Context, id int64) (rivertype.JobState, string, error) {
	job, err := j.client.JobGet(ctx, id)
	if err != nil {
		return "", "", err
	}
	last := ""
	if n := len(job.Errors); n > 0 {
		last = job.Errors[n-1].Error
	}
	return job.State, last, nil
}

// minLevel drops records below a level, whatever the wrapped handler takes.
type minLevel struct {
	slog.Handler
	min slog.Leveler
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min.Level() && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(as), h.min}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.Handler.WithGroup(name), h.min}
}

// transient names why err is worth retrying the transaction (serialization,
// deadlock, connection), or returns "" for an error of the projection
// itself or a fenced lease, which another attempt would not cure.
func transient(err error) string {
	if errors.Is(err, checkpoint.ErrFenced) {
		return ""
	}
	return pgerr.Transient(err)
}

// jobErrors logs a control or side-effect job that failed an attempt, at
// WARN: River logs it below the level readside passes on, and an operator
// waiting on a job would otherwise see only "retryable".
type jobErrors struct{ log *slog.Logger }

func (h jobErrors) HandleError(_ context.Context, job *rivertype.JobRow, err error) *river.ErrorHandlerResult {
	h.log.Warn("control: job attempt failed; River retries it", "job", job.ID, "kind", job.Kind, "attempt", job.Attempt,
		"max_attempts", job.MaxAttempts, "args", string(job.EncodedArgs), "err", err)
	return nil
}

func (h jobErrors) HandlePanic(_ context.Context, job *rivertype.JobRow, v any, trace string) *river.ErrorHandlerResult {
	h.log.Error("control: job panicked; River retries it", "job", job.ID, "kind", job.Kind, "attempt", job.Attempt, "panic", v, "trace", trace)
	return nil
}
