package projectors

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sourcegraph/conc"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/migrations"
	"github.com/readside/readside/outbox"
)

// Defaults for Config.
const (
	ConcurrencyDefault     = 2
	BatchSizeDefault       = 1000
	PollIntervalDefault    = time.Second
	LeaseTTLDefault        = 10 * time.Second
	MaxAttemptsDefault     = 3
	RetryBackoffDefault    = 100 * time.Millisecond
	MaxRetryBackoffDefault = 10 * time.Second
	SoftStopTimeoutDefault = 10 * time.Second
)

// Config configures a Worker.
type Config struct {
	// Pool is the database. It needs Concurrency + 2 connections (the
	// fetches and applies in flight, the coordinator, and a spare); the
	// LISTEN connection is separate.
	Pool *pgxpool.Pool
	// Schema is readside's schema in the database: where its tables are
	// (migrations.Config.Schema) and where the projections' unqualified
	// names resolve. "" means "readside".
	Schema string
	// Projections this worker runs. Workers of one fleet may run different
	// sets: each projection's segments are spread over the workers that run
	// it (see assign), so every projection needs at least one of them.
	Projections []Projection
	// WorkerID names this worker in leases and heartbeats. Empty means
	// hostname-pid-random. Two live workers must never share one.
	WorkerID string
	// Concurrency is how many segments are worked on at once, and how many
	// of the worker's fetches and applies run on the server at once: a
	// segment fetches its next batch while it applies one only when a
	// slot is free. 0 means ConcurrencyDefault.
	Concurrency int
	// BatchSize is how many outbox rows one fetch passes over (matching or
	// not); a projection split in N segments passes over N times as many
	// (up to 16000), so that each segment's batches still hold about
	// BatchSize events. 0 means BatchSizeDefault.
	BatchSize int
	// BatchBytes is the payload budget of one fetch (outbox.Filter.MaxBytes):
	// a batch stops at the event that takes its payloads to BatchBytes or
	// beyond, and holds at least one event, so a worker holds about
	// 2 x Concurrency x (BatchBytes + the largest event) of payloads (a
	// batch applied and one prefetched per segment). 0 means
	// outbox.FetchMaxBytesDefault (8 MiB).
	BatchBytes int64
	// PollInterval is the fallback when no notification arrives: the worker
	// checks the outbox head this often (one query for all its segments). 0
	// means PollIntervalDefault.
	PollInterval time.Duration
	// LeaseTTL is how long a lease lasts without renewal (at most about
	// 24.8 days, PostgreSQL's longest idle timeout); a dead worker's
	// segments move after at most this long. Leases are renewed every
	// LeaseTTL/4. 0 means LeaseTTLDefault.
	LeaseTTL time.Duration
	// MaxAttempts is how often an event failing with a projection error is
	// tried before it is parked (or the segment halted). 0 means
	// MaxAttemptsDefault.
	MaxAttempts int
	// RetryBackoff is the first retry delay; it doubles up to
	// MaxRetryBackoff, with jitter. 0 means the defaults.
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// SoftStopTimeout is how long Stop lets batches in flight finish before
	// cancelling them (they roll back). 0 means SoftStopTimeoutDefault.
	SoftStopTimeout time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the runtime's metrics; nil means none.
	Registerer prometheus.Registerer
	// ListenConnect opens the dedicated LISTEN connection. nil means a new
	// connection with the pool's connection config.
	ListenConnect func(ctx context.Context) (*pgx.Conn, error)
	// SynchronousApply makes every apply transaction wait at its COMMIT for
	// its WAL to reach disk (and synchronous standbys), as the session's
	// synchronous_commit says. By default an apply transaction commits with
	// synchronous_commit = off (set for that transaction only): a read
	// model is derived state whose checkpoint moves in the same
	// transaction, so a server crash can lose only the last fraction of a
	// second of applied batches, read models, checkpoints, dead letters and
	// side-effect jobs together, and the fleet applies them again (README,
	// "Guarantees"). Turn it on when readers must never see a read model
	// step back after a crash, or read it on a synchronous standby.
	SynchronousApply bool
	// PollOnly turns LISTEN off: the worker checks the outbox head every
	// PollInterval and opens no connection outside the pool. Use it behind
	// PgBouncer in transaction pooling mode, which cannot deliver
	// notifications (River's PollOnly, for the same reason); lower
	// PollInterval to bound the added latency.
	PollOnly bool
}

func (c *Config) setDefaults() {
	c.Concurrency = cmp.Or(c.Concurrency, ConcurrencyDefault)
	c.BatchSize = cmp.Or(c.BatchSize, BatchSizeDefault)
	c.PollInterval = cmp.Or(c.PollInterval, PollIntervalDefault)
	c.LeaseTTL = cmp.Or(c.LeaseTTL, LeaseTTLDefault)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, MaxAttemptsDefault)
	c.RetryBackoff = cmp.Or(c.RetryBackoff, RetryBackoffDefault)
	c.MaxRetryBackoff = cmp.Or(c.MaxRetryBackoff, MaxRetryBackoffDefault)
	c.SoftStopTimeout = cmp.Or(c.SoftStopTimeout, SoftStopTimeoutDefault)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.WorkerID == "" {
		host, _ := os.Hostname()
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		c.WorkerID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
	}
	if c.ListenConnect == nil && c.Pool != nil {
		cc := c.Pool.Config().ConnConfig
		c.ListenConnect = func(ctx context.Context) (*pgx.Conn, error) { return pgx.ConnectConfig(ctx, cc.Copy()) }
	}
}

func (c *Config) validate() error {
	switch {
	case c.Pool == nil:
		return errors.New("projectors: Config.Pool is required")
	case len(c.Projections) == 0:
		return errors.New("projectors: Config.Projections is empty")
	case c.Concurrency < 0 || c.BatchSize < 0 || c.BatchBytes < 0 || c.MaxAttempts < 0:
		return errors.New("projectors: Concurrency, BatchSize, BatchBytes and MaxAttempts must not be negative")
	case c.LeaseTTL < 100*time.Millisecond:
		return fmt.Errorf("projectors: LeaseTTL %s is too short (minimum 100ms)", c.LeaseTTL)
	case c.LeaseTTL > dbschema.MaxTimeout:
		return fmt.Errorf("projectors: LeaseTTL %s is too long (maximum %s, the longest idle_in_transaction_session_timeout PostgreSQL takes: "+
			"an apply transaction idle for a lease's time is ended)", c.LeaseTTL, dbschema.MaxTimeout)
	case c.PollInterval < time.Millisecond:
		return fmt.Errorf("projectors: PollInterval %s is too short", c.PollInterval)
	}
	if _, err := dbschema.Parse(c.Schema); err != nil {
		return fmt.Errorf("projectors: %w", err)
	}
	seen := map[string]bool{}
	for _, p := range c.Projections {
		s := p.Spec().withDefaults()
		if err := s.validate(); err != nil {
			return err
		}
		if seen[s.Name] {
			return fmt.Errorf("projectors: projection %s listed twice", s.Name)
		}
		seen[s.Name] = true
	}
	return nil
}

// Worker is one member of a projector fleet. It heartbeats, claims its fair
// share of segments, and applies their batches with bounded concurrency,
// woken by LISTEN/NOTIFY with a poll as fallback.
type Worker struct {
	cfg     Config
	db      *dbschema.Pool // cfg.Pool in cfg.Schema
	log     *slog.Logger
	metrics *metrics
	specs   map[string]Spec
	projs   map[string]Projection
	names   []string

	// txSettings are every apply transaction's settings (applySettings).
	txSettings []dbschema.Setting
	// queueing: a batch that only queued goes in one round trip
	// (commitQueued), its statements prepared first when prepare (see
	// queueModes).
	queueing, prepare bool

	// slots bounds the fetches and applies on the server at once
	// (Concurrency): statements beyond the server's cores cost it CPU per
	// event (README, "Throughput at the defaults").
	slots chan struct{}

	mu      sync.Mutex
	started bool
	stopped chan struct{}
	soft    context.CancelFunc
	hard    context.CancelFunc
}

// NewWorker validates cfg and returns a Worker; it does not touch the
// database until Start.
func NewWorker(cfg Config) (*Worker, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("projectors: metrics: %w", err)
	}
	n, _ := dbschema.Parse(cfg.Schema)
	w := &Worker{cfg: cfg, db: n.Pool(cfg.Pool), log: cfg.Logger.With("worker", cfg.WorkerID), metrics: m,
		specs: map[string]Spec{}, projs: map[string]Projection{}, stopped: make(chan struct{}),
		slots: make(chan struct{}, cfg.Concurrency), txSettings: applySettings(cfg)}
	w.queueing, w.prepare = queueModes(cfg.Pool.Config().ConnConfig.DefaultQueryExecMode)
	for _, p := range cfg.Projections {
		s := p.Spec().withDefaults()
		w.specs[s.Name] = s
		w.projs[s.Name] = p
		w.names = append(w.names, s.Name)
	}
	m.zero(w.names)
	return w, nil
}

// queueModes says whether queued statements (Batch.Queue) can go in one pipeline on
// connections in mode, and whether they must be prepared first. pgx
// describes a statement new to a connection in a round trip before the
// pipeline, under the session's search_path rather than the
// projection's: in QueryExecModeCacheStatement, the default, the runtime
// prepares them itself first, named, which pgx then uses (never evicted);
// in QueryExecModeExec and QueryExecModeSimpleProtocol nothing is
// described before. QueryExecModeCacheDescribe and
// QueryExecModeDescribeExec describe with unnamed statements (a pooler
// that keeps no named ones, say): Apply it is.
func queueModes(mode pgx.QueryExecMode) (queueing, prepare bool) {
	switch mode {
	case pgx.QueryExecModeCacheStatement:
		return true, true
	case pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol:
		return true, false
	}
	return false, false
}

// ID is the worker's id in leases and heartbeats.
func (w *Worker) ID() string { return w.cfg.WorkerID }

// Register checks the schema and the cluster's transaction ids, and
// registers every projection (creating its checkpoints). Start calls it.
// db is a pool in readside's schema (dbschema); a plain pool means the
// default schema.
func Register(ctx context.Context, pool outbox.DB, projections ...Projection) error {
	if err := migrations.Check(ctx, pool, dbschema.Of(pool).String()); err != nil {
		return err
	}
	if err := outbox.CheckXIDs(ctx, pool); err != nil {
		return err
	}
	for _, p := range projections {
		s := p.Spec().withDefaults()
		if err := s.validate(); err != nil {
			return err
		}
		if err := checkpoint.Register(ctx, pool, s.Name, s.Segments, string(s.OnError)); err != nil {
			return err
		}
	}
	return nil
}

// Start registers the projections and starts the worker in the background.
// It returns an error if the database is unreachable, not migrated, or its
// transaction ids went backwards. Cancelling ctx stops the worker as Stop
// does: a soft stop (batches in flight commit, leases are released) that
// turns hard after SoftStopTimeout, so ctx can be a signal.NotifyContext.
func (w *Worker) Start(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.started {
		return errors.New("projectors: worker already started")
	}
	if err := Register(ctx, w.db, w.cfg.Projections...); err != nil {
		return err
	}
	// Batches must not see ctx's cancellation: only hard() cancels them.
	hardCtx, hard := context.WithCancel(context.WithoutCancel(ctx))
	softCtx, soft := context.WithCancel(hardCtx)
	w.started, w.soft, w.hard = true, soft, hard
	c := newCoordinator(w, softCtx, hardCtx)
	go func() {
		defer close(w.stopped)
		defer hard()
		done := make(chan struct{})
		var watch sync.WaitGroup
		watch.Go(func() { w.stopOnCancel(ctx, done) })
		c.run()
		close(done)
		watch.Wait()
	}()
	return nil
}

// stopOnCancel turns the cancellation of Start's context into a soft stop
// that escalates to a hard one after SoftStopTimeout. It returns when done
// is closed (the coordinator has stopped).
func (w *Worker) stopOnCancel(ctx context.Context, done <-chan struct{}) {
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	w.log.Info("stopping: finishing batches in flight", "soft_stop_timeout", w.cfg.SoftStopTimeout)
	w.soft()
	t := time.NewTimer(w.cfg.SoftStopTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		w.log.Warn("soft stop timed out; cancelling batches in flight (they roll back)")
		w.hard()
	}
}

// Stop stops claiming work, lets batches in flight finish (up to
// SoftStopTimeout, or until ctx is done), then cancels the rest, releases
// the worker's leases so that others take over at once, and waits for every
// goroutine. Safe to call twice and before Start.
func (w *Worker) Stop(ctx context.Context) error {
	w.mu.Lock()
	if !w.started {
		w.mu.Unlock()
		return nil
	}
	soft, hard := w.soft, w.hard
	w.mu.Unlock()
	soft()
	t := time.NewTimer(w.cfg.SoftStopTimeout)
	defer t.Stop()
	select {
	case <-w.stopped:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	hard()
	<-w.stopped
	return nil
}

// Stopped is closed when the worker has stopped.
func (w *Worker) Stopped() <-chan struct{} { return w.stopped }

// segment is the coordinator's view of one leased segment. Fields other than
// lease/running/release are touched only by the task running it.
type segment struct {
	spec    Spec
	proj    Projection
	schema  string // a rebuild's schema, first on the search_path; "" for live tables
	lease   checkpoint.Lease
	cursor  outbox.Cursor
	high    outbox.Cursor
	running bool
	// again: a notification came while the task ran; run it once more
	// when it ends, whatever the head the coordinator last read.
	again bool
	// held: the task's last fetch reached the end of the read window while
	// committed rows of its buckets lay beyond it (outbox.Batch.Held): the
	// segment runs again at the head checks until the window has moved
	// past its cursor, and at the first notification of other buckets
	// (heldKicked: the holder's commit moves the window; further ones,
	// while the holder runs, would each cost a fetch for nothing).
	held       bool
	heldKicked bool
	// retry: the task's fetch failed; run it again (after the backoff,
	// taken in the task).
	retry    bool
	release  bool          // give the lease up when the current task ends
	attempts map[int64]int // failures per event id (projection errors)
	// parked is false while the segment has no parked dead letters, so that
	// batches skip asking which of their aggregates are parked. Only the
	// lease holder parks a segment's events; set at claim, and on parking.
	parked  bool
	retries int // consecutive transient failures
	// wait is the backoff before a failing event's next attempt, set by the
	// isolation that committed up to it and waited out by runSegment.
	wait time.Duration
	// floorsUntil is the greatest high of the segment's buckets left by a
	// scale (checkpoint.Split): batches at or below it ask which events a
	// scale's floors pass over and which are replays (see scale.go).
	floorsUntil outbox.Cursor
	// replays are the events of the batch in flight at or below their
	// bucket's high (beyond the segment's own high-water mark).
	replays map[int64]bool
}

// buckets is the set of outbox buckets the segment reads: a rebuild's
// copy follows the live projection, and runs on every notification.
func (s *segment) buckets() outbox.Buckets {
	if s.schema != "" {
		return outbox.AllBuckets
	}
	return outbox.SegmentBuckets(s.spec.Segments, s.lease.Segment)
}

type taskResult struct {
	seg *segment
	err error
}

// maxRecheck caps the delay between head checks while the window is held
// back: one cheap query per worker, for as long as the holder runs.
const maxRecheck = 100 * time.Millisecond

// notifyHeadDelay is how soon after a notification the head is read: a
// holder of the window that rolls back sends no notification of its own,
// and the events committed behind it were announced while it held them.
const notifyHeadDelay = 10 * time.Millisecond

type coordinator struct {
	w       *Worker
	softCtx context.Context
	hardCtx context.Context
	segs    map[string]*segment
	queue   chan *segment
	done    chan taskResult
	notify  chan struct{}
	// announcing gathers the buckets notifications named (the listener
	// writes it) until loop takes them.
	announcing atomic.Uint64
	head       outbox.Cursor
	tasks      conc.WaitGroup
	inflight   int
	recheck    *time.Timer   // fires checkHead while the window is held back, and after a notification
	armed      bool          // recheck is set
	behind     time.Duration // current recheck delay
	// The projections this worker claims segments of: its own, plus the
	// shadow projections of rebuilds in progress (refreshed every lease
	// renewal).
	running  map[string]running
	names    []string
	gone     map[string]bool   // projections no longer run whose series are still to delete
	segments map[string]int    // every registered projection's segment count
	bases    map[string]string // rebuild copy -> the projection it rebuilds
}

// running is a projection the coordinator claims segments of.
type running struct {
	spec   Spec
	proj   Projection
	schema string
}

func (c *coordinator) baseOf(name string) string {
	if of, ok := c.bases[name]; ok {
		return of
	}
	return name
}

func key(projection string, segment int) string { return fmt.Sprintf("%s/%d", projection, segment) }

func newCoordinator(w *Worker, softCtx, hardCtx context.Context) *coordinator {
	total := 0
	for _, s := range w.specs {
		// A scale may raise a projection's segments up to 64.
		total += max(s.Segments, checkpoint.Buckets)
	}
	c := &coordinator{w: w, softCtx: softCtx, hardCtx: hardCtx, segs: map[string]*segment{},
		// Queue and results hold every segment at most once; rebuilds can
		// double a projection's segments.
		queue: make(chan *segment, 2*total+1), done: make(chan taskResult, 2*total+1),
		notify: make(chan struct{}, 1), running: map[string]running{}, gone: map[string]bool{}}
	for name, spec := range w.specs {
		c.running[name] = running{spec: spec, proj: w.projs[name]}
		c.names = append(c.names, name)
	}
	return c
}

// refreshProjections reads the registry: the segment counts of every
// projection (the fleet's assignment must be computed from the same figures
// by every worker, whatever it runs), and the shadow projections of rebuilds
// in progress, which the workers of the rebuilt projection build.
func (c *coordinator) refreshProjections(ctx context.Context) error {
	regs, err := checkpoint.Registry(ctx, c.w.db)
	if err != nil {
		return err
	}
	segments := map[string]int{}
	bases := map[string]string{}
	shadows := map[string]running{}
	for _, r := range regs {
		segments[r.Name] = r.Segments
		if r.RebuildOf != "" {
			bases[r.Name] = r.RebuildOf
			if spec, ok := c.w.specs[r.RebuildOf]; ok && r.Schema != "" {
				spec.Name = r.Name
				shadows[r.Name] = running{spec: spec, proj: c.w.projs[r.RebuildOf], schema: r.Schema}
			}
		}
	}
	c.segments, c.bases = segments, bases
	old := c.running
	c.running = map[string]running{}
	for name, spec := range c.w.specs {
		if n, ok := segments[name]; ok {
			spec.Segments = n // a scale changed it since registration
		}
		c.running[name] = running{spec: spec, proj: c.w.projs[name]}
	}
	for name, r := range shadows {
		c.running[name] = r
	}
	for name := range old {
		if _, ok := c.running[name]; !ok {
			c.gone[name] = true // a switched-in rebuild's copy: its series go (updateOwned)
		}
	}
	c.names = c.names[:0]
	for name := range c.running {
		c.names = append(c.names, name)
	}
	return nil
}

// run is the coordinator's life: it starts the listener and the
// executors, serves events until the soft stop, lets the tasks in flight
// finish, and leaves the fleet. Only this goroutine touches c.segs.
func (c *coordinator) run() {
	stopListen := c.listen()
	for range c.w.cfg.Concurrency {
		c.tasks.Go(c.executor)
	}
	c.recheck = time.NewTimer(time.Hour)
	c.recheck.Stop()
	defer c.recheck.Stop()
	c.loop()
	c.drain()
	stopListen()
	c.leave()
}

// listen starts the LISTEN goroutine (none when PollOnly) and returns what
// stops it and waits for it.
func (c *coordinator) listen() (stop func()) {
	w := c.w
	var listeners conc.WaitGroup
	ctx, cancel := context.WithCancel(c.hardCtx)
	if !w.cfg.PollOnly {
		listeners.Go(func() {
			outbox.Listen(ctx, w.cfg.ListenConnect, w.cfg.PollInterval, c.wake, func(err error) {
				w.log.Warn("listen: connection lost, reconnecting", "err", err)
			})
		})
	}
	return func() {
		cancel()
		listeners.Wait()
	}
}

// loop serves notifications, polls, lease renewals and finished tasks until
// the soft stop.
func (c *coordinator) loop() {
	poll := time.NewTicker(c.w.cfg.PollInterval)
	lease := time.NewTicker(c.w.cfg.LeaseTTL / 4)
	defer poll.Stop()
	defer lease.Stop()
	c.manageLeases()
	c.checkHead(true)
	for {
		select {
		case <-c.softCtx.Done():
			return
		case <-c.notify:
			// A notification means new events in the buckets it names:
			// their segments fetch at once rather than after a head
			// query (a round trip on the way of every event). A head
			// query follows within notifyHeadDelay, for the window's
			// state (rechecks while it is held back), however many
			// notifications come meanwhile.
			c.kick(outbox.Buckets(c.announcing.Swap(0)))
			if !c.armed {
				c.arm(notifyHeadDelay)
			}
		case <-poll.C:
			c.checkHead(true)
		case <-c.recheck.C:
			c.armed = false
			c.checkHead(false)
		case <-lease.C:
			c.manageLeases()
		case r := <-c.done:
			c.finished(r)
		}
	}
}

// drain is the soft stop: no new tasks; running ones finish their batch.
func (c *coordinator) drain() {
	close(c.queue)
	for c.inflight > 0 {
		c.finished(<-c.done)
	}
	c.tasks.Wait()
}

// leave releases every lease of this worker, so that others take over at
// once rather than after the TTL.
func (c *coordinator) leave() {
	w := c.w
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.hardCtx), 5*time.Second)
	defer cancel()
	if err := checkpoint.Leave(ctx, w.db, w.cfg.WorkerID); err != nil {
		w.log.Warn("stop: could not release leases; they expire after the TTL", "err", err)
	}
	for _, name := range w.names {
		w.metrics.owned.WithLabelValues(name).Set(0)
	}
}

// arm sets the recheck timer to fire checkHead after d.
func (c *coordinator) arm(d time.Duration) {
	c.armed = true
	c.recheck.Reset(d)
}

// wake is the listener's: it records the buckets a notification named
// and signals loop.
func (c *coordinator) wake(named outbox.Buckets) {
	c.announcing.Or(uint64(named))
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// checkHead is the only query an idle worker makes: one backwards index
// probe for the head of the read window, whatever the number of segments.
// It then runs the segments behind the head: all of them when all (the
// poll), else those whose last fetch found the window held back
// (segment.held): the holder's end (a rollback, or one of our own apply
// transactions) sends no notification of its own. Other segments run when
// a notification names one of their buckets (kick), and move their
// checkpoints at the poll; WaitFor passes a segment with no row of its own
// before the token (observe.WaitFor).
func (c *coordinator) checkHead(all bool) {
	ctx, cancel := context.WithTimeout(c.hardCtx, c.w.cfg.LeaseTTL)
	defer cancel()
	head, err := outbox.ReadHead(ctx, c.w.db)
	if err != nil {
		if c.softCtx.Err() == nil {
			c.w.log.Warn("poll: reading the outbox head failed", "err", err)
		}
		return
	}
	c.head = head.Window
	// Committed rows wait behind a transaction that holds the window; its
	// end sends no notification, so look again soon, backing off.
	if head.Behind() {
		c.behind = min(max(2*c.behind, time.Millisecond), c.w.cfg.PollInterval, maxRecheck)
		c.arm(c.behind)
	} else {
		c.behind = 0
	}
	for _, s := range c.segs {
		// (s.running first: a running task writes s.held and s.cursor.)
		if !s.running && (all || s.held) && (s.again || s.cursor.Less(c.head)) {
			s.heldKicked = false // it runs: a notification may rerun it once more
			c.start(s)
		}
	}
}

// kick starts every segment that reads one of the named buckets, or marks
// it to run again when it is running (see segment.again), and the segments
// waiting for a held window to move (the notification may be its holder's
// commit): a fetch at the head finds nothing and costs what a head query
// would.
func (c *coordinator) kick(named outbox.Buckets) {
	for _, s := range c.segs {
		switch {
		case s.running:
			// (A running task writes s.held: its end looks at it.)
			if s.buckets()&named != 0 {
				s.again = true
			}
		case s.buckets()&named != 0:
			c.start(s)
		case s.held && !s.heldKicked:
			s.heldKicked = true
			c.start(s)
		}
	}
}

// start queues a segment's task.
func (c *coordinator) start(s *segment) {
	if s.running || s.release || c.softCtx.Err() != nil {
		return
	}
	s.running, s.again = true, false
	c.inflight++
	c.queue <- s
}

func (c *coordinator) executor() {
	for s := range c.queue {
		err := c.w.runSegment(c.softCtx, c.hardCtx, s)
		c.done <- taskResult{seg: s, err: err}
	}
}

func (c *coordinator) finished(r taskResult) {
	c.inflight--
	s := r.seg
	s.running = false
	k := key(s.lease.Projection, s.lease.Segment)
	switch {
	case errors.Is(r.err, checkpoint.ErrFenced):
		// Let the lease go if it is still this one (owner and epoch):
		// fenced by the cursor alone (a crash of the server undid the
		// segment's last asynchronously committed batches), the segment
		// is then claimed again at the next renewal, by this worker or
		// the one it is assigned to, from its stored cursor, rather than
		// after the lease expires. Taken over or reset, it is not ours to
		// release and this changes nothing.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(c.hardCtx), 5*time.Second)
		defer cancel()
		if err := checkpoint.Release(ctx, c.w.db, s.lease); err != nil {
			c.w.log.Warn("release after a fenced batch failed; the lease will expire", "lease", s.lease.String(), "err", err)
		}
		c.lost(k, s)
		c.updateOwned()
		return
	case errors.Is(r.err, errHalted):
		// Give the halted segment up: whoever resumes it may claim it.
		s.release = true
	case r.err != nil && !errors.Is(r.err, context.Canceled):
		c.w.log.Warn("segment task failed; will retry", "projection", s.lease.Projection, "segment", s.lease.Segment, "err", r.err)
	}
	if s.release {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(c.hardCtx), 5*time.Second)
		defer cancel()
		c.release(ctx, k, s)
		c.updateOwned()
		return
	}
	held := s.held // (before a new task writes it)
	if r.err == nil && (s.again || s.retry) {
		c.start(s)
	}
	if r.err == nil && s.schema == "" {
		c.follow(s.lease.Projection)
	}
	// Our own apply transactions hold the read window too (they have xids),
	// and their commits send no notification: look again now, and when
	// this task found the window held.
	if c.behind > 0 || held {
		c.checkHead(false)
	}
}

// follow runs the segments of the rebuild copies of projection (their
// fetch stops at the live checkpoint, fetchBehindLive) once one of its
// tasks has ended: a copy run by the same notification read the live
// checkpoint before that task committed.
func (c *coordinator) follow(projection string) {
	for _, s := range c.segs {
		if s.schema == "" || c.baseOf(s.lease.Projection) != projection {
			continue
		}
		if s.running {
			s.again = true
		} else {
			c.start(s)
		}
	}
}

// manageLeases heartbeats, renews held leases, and moves toward the
// fleet-wide assignment (see assign): it gives back segments assigned to
// others and claims its own once they are free, so a joining worker gets
// segments from the others within a renewal interval or two, without
// restarting anyone.
func (c *coordinator) manageLeases() {
	w := c.w
	ctx, cancel := context.WithTimeout(c.hardCtx, w.cfg.LeaseTTL/2)
	defer cancel()
	members, err := c.heartbeat(ctx)
	if err != nil {
		if c.softCtx.Err() == nil {
			w.log.Warn("heartbeat failed", "err", err)
		}
		return
	}
	if err := c.refreshProjections(ctx); err != nil {
		w.log.Warn("reading the projection registry failed", "err", err)
		return
	}
	if err := c.renew(ctx); err != nil {
		w.log.Warn("lease renewal failed", "err", err)
		return
	}
	// Every worker computes the same balanced assignment from the fleet
	// view; give back what is not ours (after its batch in flight) and claim
	// what is (once its previous owner has let go or its lease expired).
	mine := c.assigned(members)
	c.giveBack(ctx, mine)
	c.claim(ctx, mine)
	c.updateOwned()
}

// heartbeat records this worker as live and returns the live fleet.
func (c *coordinator) heartbeat(ctx context.Context) ([]checkpoint.Member, error) {
	w := c.w
	host, _ := os.Hostname()
	members, err := checkpoint.Heartbeat(ctx, w.db, checkpoint.Member{ID: w.cfg.WorkerID, Host: host, PID: os.Getpid(),
		Projections: w.names, LeaseTTL: w.cfg.LeaseTTL})
	if err != nil {
		return nil, err
	}
	w.metrics.liveWorkers.Set(float64(len(members)))
	return members, nil
}

// renew extends the leases held and forgets the segments whose lease is
// gone (expired, taken over, reset, paused). A segment whose task is
// running stays until the task ends: its commit is fenced, and finished
// forgets it then.
func (c *coordinator) renew(ctx context.Context) error {
	held := make([]checkpoint.Lease, 0, len(c.segs))
	for _, s := range c.segs {
		held = append(held, s.lease)
	}
	kept, err := checkpoint.Renew(ctx, c.w.db, c.w.cfg.WorkerID, held, c.w.cfg.LeaseTTL)
	if err != nil {
		return err
	}
	keep := map[string]checkpoint.Held{}
	for _, h := range kept {
		keep[key(h.Projection, h.Segment)] = h
	}
	for k, s := range c.segs {
		h, ok := keep[k]
		switch {
		case !ok && !s.running:
			c.lost(k, s)
		case ok && !s.running && h.Cursor != s.cursor:
			// No task of this worker runs on the segment, so every batch
			// it applied has committed, and the stored cursor is the one
			// it committed last, unless a crash of the server undid the
			// last apply transactions (they commit asynchronously): then
			// the stored cursor is behind, and the segment reads and
			// applies those events again from there. (A running task is
			// left alone: its next checkpoint UPDATE checks the cursor and
			// is fenced.)
			c.w.log.Warn("segment's stored checkpoint is behind this worker's: the server lost applied batches (a crash); applying them again",
				"projection", s.lease.Projection, "segment", s.lease.Segment, "stored", h.Cursor.String(), "applied", s.cursor.String())
			c.w.metrics.rewound.WithLabelValues(s.lease.Projection).Inc()
			s.cursor, s.high = h.Cursor, h.HighWater
			c.start(s)
		}
	}
	return nil
}

// assigned is this worker's share of the fleet-wide assignment.
func (c *coordinator) assigned(members []checkpoint.Member) map[checkpoint.Segment]bool {
	mine := map[checkpoint.Segment]bool{}
	for seg, owner := range assign(members, c.segments, c.baseOf) {
		if owner == c.w.cfg.WorkerID {
			mine[seg] = true
		}
	}
	return mine
}

// giveBack releases the segments held that are not in mine: at once when
// idle, else when their task ends (finished).
func (c *coordinator) giveBack(ctx context.Context, mine map[checkpoint.Segment]bool) {
	for k, s := range c.segs {
		if mine[checkpoint.Segment{Projection: s.lease.Projection, Segment: s.lease.Segment}] || s.release {
			continue
		}
		s.release = true
		if !s.running {
			c.release(ctx, k, s)
		}
	}
}

// claim claims the segments of mine not held yet (those whose previous
// owner has let go or whose lease expired) and schedules them.
func (c *coordinator) claim(ctx context.Context, mine map[checkpoint.Segment]bool) {
	w := c.w
	var want []checkpoint.Segment
	for seg := range mine {
		if _, held := c.segs[key(seg.Projection, seg.Segment)]; !held {
			want = append(want, seg)
		}
	}
	if len(want) == 0 || c.softCtx.Err() != nil {
		return
	}
	claimed, err := checkpoint.ClaimSegments(ctx, w.db, w.cfg.WorkerID, want, w.cfg.LeaseTTL)
	if err != nil {
		w.log.Warn("claim failed", "err", err)
	}
	parked, err := parkedSegments(ctx, w.db, claimed)
	if err != nil {
		w.log.Warn("reading parked segments failed; checking every batch", "err", err)
	}
	splits, err := claimedSplits(ctx, w.db, claimed)
	if err != nil {
		w.log.Warn("reading the split of claimed segments failed; letting them go", "err", err)
	}
	for _, cp := range claimed {
		k := checkpoint.Segment{Projection: cp.Projection, Segment: cp.Segment}
		sp, ok := splits[k]
		if !ok {
			// Without its split the segment cannot be read: give it back.
			l := checkpoint.Lease{Projection: cp.Projection, Segment: cp.Segment, Owner: w.cfg.WorkerID, Epoch: cp.LeaseEpoch}
			if err := checkpoint.Release(ctx, w.db, l); err != nil {
				w.log.Warn("release failed; the lease will expire", "lease", l.String(), "err", err)
			}
			continue
		}
		s := c.newSegment(cp, parked == nil || parked[k], sp)
		c.segs[key(cp.Projection, cp.Segment)] = s
		w.metrics.claims.WithLabelValues(cp.Projection).Inc()
		w.log.Info("lease claimed", "projection", cp.Projection, "segment", cp.Segment, "epoch", cp.LeaseEpoch, "cursor", cp.Cursor.String())
		// Run it once whatever c.head says: events of its buckets may have
		// been announced while nobody held it, behind a held window or
		// after c.head was read (its fetch marks it held if need be).
		c.start(s)
	}
}

// newSegment is a segment just claimed at checkpoint cp; parked says
// whether it may have parked dead letters, sp how it is split.
func (c *coordinator) newSegment(cp checkpoint.Checkpoint, parked bool, sp checkpoint.Split) *segment {
	r := c.running[cp.Projection]
	r.spec.Segments = sp.Segments
	return &segment{spec: r.spec, proj: r.proj, schema: r.schema, cursor: cp.Cursor, high: cp.HighWater,
		lease:    checkpoint.Lease{Projection: cp.Projection, Segment: cp.Segment, Owner: c.w.cfg.WorkerID, Epoch: cp.LeaseEpoch},
		attempts: map[int64]int{}, parked: parked, floorsUntil: sp.Until}
}

// lost forgets a segment whose lease is no longer this worker's.
func (c *coordinator) lost(k string, s *segment) {
	c.w.log.Info("lease lost", "projection", s.lease.Projection, "segment", s.lease.Segment, "epoch", s.lease.Epoch)
	c.w.metrics.losses.WithLabelValues(s.lease.Projection).Inc()
	delete(c.segs, k)
}

// release gives a segment's lease up, so that its next owner need not
// wait for it to expire, and forgets the segment.
func (c *coordinator) release(ctx context.Context, k string, s *segment) {
	if err := checkpoint.Release(ctx, c.w.db, s.lease); err != nil {
		c.w.log.Warn("release failed; the lease will expire", "lease", s.lease.String(), "err", err)
	} else {
		c.w.log.Info("lease released", "projection", s.lease.Projection, "segment", s.lease.Segment, "epoch", s.lease.Epoch)
	}
	delete(c.segs, k)
}

func (c *coordinator) updateOwned() {
	counts := map[string]int{}
	for _, s := range c.segs {
		counts[s.lease.Projection]++
	}
	for _, name := range c.names {
		c.w.metrics.owned.WithLabelValues(name).Set(float64(counts[name]))
	}
	for name := range c.gone {
		if _, back := c.running[name]; back {
			delete(c.gone, name)
		} else if counts[name] == 0 {
			// No segment task of it is left to record anything.
			c.w.metrics.forget(name)
			delete(c.gone, name)
		}
	}
}
