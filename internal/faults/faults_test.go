package faults

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/internal/pgtemp"
	"github.com/readside/readside/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// plan is the size of a run.
type plan struct {
	name           string
	events         int           // events `writer load` writes in total (over its restarts)
	rate           float64       // writer commands per second
	killEvery      time.Duration // mean time between projector SIGKILLs
	minKills       int           // the run goes on (without the writer) until this many kills
	pgRestarts     int
	sigstops       int
	terminateEvery time.Duration // mean time between pg_terminate_backend calls
	injectEvery    time.Duration // one malformed or unknown event this often (~1% of the load)
	catchUp        time.Duration // how long the fleet may take to catch up afterwards
	scales         []scaling     // `projector scale` runs while the writer runs
}

func (p plan) duration() time.Duration {
	return time.Duration(float64(p.events) / p.rate * float64(time.Second))
}

var (
	shortPlan = plan{name: "short", events: 3000, rate: 100, killEvery: 2500 * time.Millisecond, minKills: 5,
		pgRestarts: 1, sigstops: 1, terminateEvery: 1500 * time.Millisecond, injectEvery: time.Second, catchUp: time.Minute, scales: scalesUpAndDown(1)}
	longPlan = plan{name: "long", events: 30000, rate: 100, killEvery: 4 * time.Second, minKills: 50,
		pgRestarts: 3, sigstops: 3, terminateEvery: 1500 * time.Millisecond, injectEvery: time.Second, catchUp: 3 * time.Minute, scales: scalesUpAndDown(3)}
)

const (
	projectors3  = 3 // fleet size of TestFaults
	leaseTTL     = 2 * time.Second
	pollInterval = 200 * time.Millisecond
	harnessApp   = "faults-harness" // application_name of the test's own connections
	dbName       = "readside"
)

// fleet runs the projector processes and the writer.
type fleet struct {
	t        *testing.T
	url      string
	proj     string // projector binary
	logs     string
	counters *counters
	extra    []string // more `projector run` flags

	mu      sync.Mutex
	procs   []*proc
	ids     []string
	inc     []int
	stopped []bool // SIGSTOPped: not to be killed meanwhile
}

// newFleet returns a fleet of n projector slots; start starts them.
func newFleet(t *testing.T, n int, url, proj, logs string, c *counters, extra ...string) *fleet {
	return &fleet{t: t, url: url, proj: proj, logs: logs, counters: c, extra: extra,
		procs: make([]*proc, n), ids: make([]string, n), inc: make([]int, n), stopped: make([]bool, n)}
}

func (f *fleet) start() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.procs {
		f.startLocked(i)
	}
}

// logTails logs the last lines of every projector's log and the writer's.
func (f *fleet) logTails() {
	for i := range f.procs {
		b, _ := os.ReadFile(filepath.Join(f.logs, fmt.Sprintf("projector-%d.log", i)))
		f.t.Logf("projector %d log (last lines):\n%s", i, lastLines(string(b), 30))
	}
	b, _ := os.ReadFile(filepath.Join(f.logs, "writer.log"))
	f.t.Logf("writer log (last lines):\n%s", lastLines(string(b), 20))
}

func (f *fleet) startLocked(i int) {
	f.inc[i]++
	f.ids[i] = fmt.Sprintf("faults-%d-%d", i, f.inc[i])
	p, err := startProc(f.t, filepath.Join(f.logs, fmt.Sprintf("projector-%d.log", i)), f.proj, append([]string{"run",
		"--database-url", f.url, "--worker-id", f.ids[i], "--metrics-addr", "",
		"--lease-ttl", leaseTTL.String(), "--poll-interval", pollInterval.String(), "--soft-stop-timeout", "2s"}, f.extra...)...)
	if err != nil {
		f.t.Errorf("start projector %d: %v", i, err)
		return
	}
	f.procs[i] = p
}

// killRandom SIGKILLs a random running projector and starts it again.
func (f *fleet) killRandom() {
	f.mu.Lock()
	defer f.mu.Unlock()
	var cand []int
	for i := range f.procs {
		if !f.stopped[i] {
			cand = append(cand, i)
		}
	}
	if len(cand) == 0 {
		return
	}
	i := cand[rand.N(len(cand))]
	if !f.procs[i].exited() {
		f.procs[i].kill()
		f.counters.add(func(c *counters) { c.kills++ })
	}
	f.startLocked(i)
}

// ensure restarts projectors that exited on their own, counting why.
func (f *fleet) ensure() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, p := range f.procs {
		if p.exited() {
			reason := lastLines(p.output(), 1)
			if idx := strings.Index(reason, "projector: "); idx >= 0 {
				reason = reason[idx:]
			}
			f.counters.add(func(c *counters) { c.projectorExits++; c.projectorReason[trimReason(reason)]++ })
			f.startLocked(i)
		}
	}
}

// trimReason keeps a failure's reason short and free of ids.
func trimReason(s string) string {
	if len(s) > 160 {
		s = s[:160]
	}
	return s
}

// sigstop SIGSTOPs the projector that holds the most leases, for longer than
// its lease, checks that other workers took its leases over meanwhile, then
// SIGCONTs it and counts the "lease lost" it logs.
func (f *fleet) sigstop(ctx context.Context, pool *pgxpool.Pool) error {
	type lease struct {
		projection string
		segment    int
		epoch      int64
	}
	var (
		slot   = -1
		p      *proc
		leases []lease
	)
	deadline := time.Now().Add(10 * time.Second)
	for slot < 0 {
		if time.Now().After(deadline) {
			return errors.New("sigstop: no projector held a lease for 10s")
		}
		f.mu.Lock()
		held := map[string][]lease{}
		rows, err := pool.Query(ctx, `SELECT lease_owner, projection, segment, lease_epoch FROM readside.checkpoints
			WHERE lease_owner IS NOT NULL AND lease_expires_at > now()`)
		if err == nil {
			for rows.Next() {
				var owner string
				var l lease
				if rows.Scan(&owner, &l.projection, &l.segment, &l.epoch) == nil {
					held[owner] = append(held[owner], l)
				}
			}
			rows.Close()
		}
		best := 0
		for i, id := range f.ids {
			if n := len(held[id]); n > best && !f.procs[i].exited() && !f.stopped[i] {
				slot, best = i, n
			}
		}
		if slot >= 0 {
			p, leases = f.procs[slot], held[f.ids[slot]]
			f.stopped[slot] = true
			p.signal(syscall.SIGSTOP)
		}
		f.mu.Unlock()
		if slot < 0 {
			time.Sleep(200 * time.Millisecond)
		}
	}
	// Past the lease, and past idle_in_transaction_session_timeout (the TTL)
	// of a transaction the stopped worker may have left open; then wait
	// (bounded: the other workers may be restarting after a kill) until the
	// others have taken its leases over.
	time.Sleep(2*leaseTTL + 500*time.Millisecond)
	taken := 0
	for deadline := time.Now().Add(6 * leaseTTL); ; {
		taken = 0
		for _, l := range leases {
			var epoch int64
			var owner *string
			err := pool.QueryRow(ctx, `SELECT lease_epoch, lease_owner FROM readside.checkpoints WHERE projection = $1 AND segment = $2`,
				l.projection, l.segment).Scan(&epoch, &owner)
			if err == nil && epoch > l.epoch {
				taken++
			}
		}
		if taken == len(leases) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	off := logSize(p.log)
	p.signal(syscall.SIGCONT)
	f.mu.Lock()
	f.stopped[slot] = false
	f.mu.Unlock()
	time.Sleep(leaseTTL + time.Second)
	lost := strings.Count(readFrom(p.log, off), "lease lost")
	f.counters.add(func(c *counters) {
		c.sigstops++
		c.stopLeases += len(leases)
		c.stopTakenOver += taken
		c.stopLeaseLost += lost
	})
	return nil
}

func logSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

func readFrom(path string, off int64) string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < off {
		return ""
	}
	return string(b[off:])
}

func (f *fleet) stopAll(t *testing.T) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, p := range f.procs {
		if p != nil && !p.exited() && !p.stop(15*time.Second) {
			t.Errorf("projector %d (%s) did not stop within 15s of SIGTERM", i, f.ids[i])
		}
	}
}

// every runs fn at jittered intervals around mean until ctx is done.
func every(ctx context.Context, wg *sync.WaitGroup, mean time.Duration, fn func()) {
	wg.Go(func() {
		for {
			d := mean/2 + rand.N(mean)
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
			fn()
		}
	})
}

func TestFaults(t *testing.T) {
	p := shortPlan
	if os.Getenv("READSIDE_FAULTS") == "long" {
		p = longPlan
	}
	ctx := context.Background()
	cl, url := startCluster(ctx, t)

	bin := t.TempDir()
	projBin, writerBin := buildBinaries(t, bin)
	logs := t.TempDir()
	if out, err := exec.Command(projBin, "migrate", "--database-url", url).CombinedOutput(); err != nil {
		t.Fatalf("projector migrate: %v\n%s", err, out)
	}
	pool := harnessPool(t, url)

	c := newCounters()
	f := newFleet(t, projectors3, url, projBin, logs, c)
	f.start()
	defer func() {
		if t.Failed() {
			f.logTails()
		}
	}()

	start := time.Now()
	faultCtx, stopFaults := context.WithCancel(ctx)
	defer stopFaults()
	var wg sync.WaitGroup
	every(faultCtx, &wg, p.killEvery, f.killRandom)
	every(faultCtx, &wg, 200*time.Millisecond, f.ensure)
	every(faultCtx, &wg, p.terminateEvery, func() { terminateRandom(faultCtx, pool, c) })
	inj := &injector{pool: pool, c: c}
	every(faultCtx, &wg, p.injectEvery, func() { inj.inject(faultCtx) })
	sc := &scaler{t: t, pool: pool, bin: projBin, url: url, logs: logs, c: c}
	if p.pgRestarts > 0 {
		sc.restarting = make(chan struct{})
	}
	sc.start(&wg, p, start)
	// The timeline: PostgreSQL restarts and SIGSTOPs at fixed points of the
	// writer's expected run.
	wg.Go(func() {
		// A timeline that ends before its first restart (the faults
		// stopped early) lets the scale waiting for it run at once.
		defer sc.restartBegins()
		d := p.duration()
		type event struct {
			at time.Duration
			do func()
		}
		var evs []event
		for i := range p.pgRestarts {
			evs = append(evs, event{d * time.Duration(i+1) / time.Duration(p.pgRestarts+1), func() {
				if i == 0 {
					sc.restartBegins()
				}
				rctx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				before := appliedCounts(rctx, pool)
				if err := restartPostgres(rctx, cl); err != nil {
					t.Errorf("restart PostgreSQL: %v", err)
					return
				}
				after := appliedCounts(rctx, pool)
				c.add(func(c *counters) {
					c.pgRestarts++
					for k, n := range before {
						if a, ok := after[k]; ok && a < n {
							c.undone += n - a
						}
					}
				})
			}})
		}
		for i := range p.sigstops {
			evs = append(evs, event{time.Duration(float64(d) * (float64(i) + 0.3) / float64(p.sigstops)), func() {
				if err := f.sigstop(faultCtx, pool); err != nil {
					t.Errorf("%v", err)
				}
			}})
		}
		for len(evs) > 0 {
			next := 0
			for i, e := range evs {
				if e.at < evs[next].at {
					next = i
				}
			}
			e := evs[next]
			evs = append(evs[:next], evs[next+1:]...)
			select {
			case <-faultCtx.Done():
				return
			case <-time.After(time.Until(start.Add(e.at))):
			}
			e.do()
		}
	})

	// The writer: run `writer load` until the planned number of events is
	// written, restarting it whenever it fails.
	writerErr := runWriter(ctx, t, pool, writerBin, url, logs, p, c)
	if writerErr == nil {
		// Faults go on until enough projectors were killed.
		deadline := time.Now().Add(time.Duration(p.minKills+5) * p.killEvery * 2)
		for time.Now().Before(deadline) {
			var kills int
			c.add(func(c *counters) { kills = c.kills })
			if kills >= p.minKills {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Let the timeline finish (a SIGSTOP in progress ends with SIGCONT).
	stopFaults()
	wg.Wait()
	faultTime := time.Since(start)
	if writerErr != nil {
		t.Fatal(writerErr)
	}
	f.ensure()

	// Catch up: every segment at the head of the outbox.
	caughtUp := time.Now()
	if err := waitCaughtUp(ctx, pool, p.catchUp); err != nil {
		t.Fatal(err)
	}
	catchUp := time.Since(caughtUp)
	f.stopAll(t)
	pool.Close()

	r := verify(t, cl.URL, url)
	r.plan, r.faultTime, r.catchUp = p, faultTime, catchUp
	r.print(t, c)
	r.check(t, c, p)
}

func harnessPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 4
	cfg.ConnConfig.RuntimeParams["application_name"] = harnessApp
	cfg.ConnConfig.ConnectTimeout = 3 * time.Second
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func exec1(ctx context.Context, url, sql string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// terminateRandom ends one random client backend of the database that is
// not the harness's own.
func terminateRandom(ctx context.Context, pool *pgxpool.Pool, c *counters) {
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var n int
	err := pool.QueryRow(qctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM (
		SELECT pid FROM pg_stat_activity
		 WHERE datname = current_database() AND backend_type = 'client backend'
		   AND pid <> pg_backend_pid() AND application_name <> $1
		 ORDER BY random() LIMIT 1) x`, harnessApp).Scan(&n)
	if err == nil {
		c.add(func(c *counters) { c.terminated += n })
	}
}

// runWriter runs `writer load` until plan.events non-injected events exist.
func runWriter(ctx context.Context, t *testing.T, pool *pgxpool.Pool, bin, url, logs string, p plan, c *counters) error {
	deadline := time.Now().Add(4*p.duration() + time.Minute)
	for time.Now().Before(deadline) {
		var written int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM readside.events WHERE aggregate_id NOT LIKE 'faults-%'`).Scan(&written)
		if err != nil {
			time.Sleep(200 * time.Millisecond) // PostgreSQL restarting
			continue
		}
		remaining := p.events - written
		if remaining <= 0 {
			return nil
		}
		w, err := startProc(t, filepath.Join(logs, "writer.log"), bin, "load", "--database-url", url,
			"--events", fmt.Sprint(remaining), "--aggregates", "100", "--concurrency", "4",
			"--rate", fmt.Sprint(p.rate), "--progress", "5s")
		if err != nil {
			return err
		}
		c.add(func(c *counters) { c.writerRuns++ })
		select {
		case <-w.done:
		case <-time.After(time.Until(deadline)):
			w.kill()
			return fmt.Errorf("writer load did not finish in %s", 4*p.duration()+time.Minute)
		}
		if w.err == nil {
			continue // check the count again
		}
		reason := lastLines(w.output(), 1)
		c.add(func(c *counters) { c.writerFailures++; c.writerReasons[classify(reason)]++ })
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("writer load: deadline passed")
}

// connectionErrors are the telling parts of the errors of a connection to
// PostgreSQL that ended or was refused (a terminated backend, a restart:
// "no such file or directory" is its socket, gone meanwhile).
var connectionErrors = []string{"terminating connection due to administrator command", "unreachable", "connection refused",
	"unexpected EOF", "conn closed", "the database system is shutting down", "the database system is starting up",
	"broken pipe", "connection reset", "no such file or directory"}

// classify names a failure by the error text's telling part.
func classify(s string) string {
	for _, k := range connectionErrors {
		if strings.Contains(s, k) {
			return k
		}
	}
	return trimReason(s)
}

// waitCaughtUp waits until every segment is running with nothing after its
// cursor (parked events count as handled: the cursor passed them).
func waitCaughtUp(ctx context.Context, pool *pgxpool.Pool, d time.Duration) error {
	deadline := time.Now().Add(d)
	var last string
	for time.Now().Before(deadline) {
		segs, err := observe.Status(ctx, pool)
		if err == nil {
			done := len(segs) > 0
			var b strings.Builder
			for _, s := range segs {
				if s.Status != "running" {
					return fmt.Errorf("segment %s/%d is %s: %s", s.Projection, s.Segment, s.Status, s.LastError)
				}
				if s.LagEvents > 0 {
					done = false
				}
				fmt.Fprintf(&b, "%s/%d lag %d owner %q; ", s.Projection, s.Segment, s.LagEvents, s.LeaseOwner)
			}
			if done {
				return nil
			}
			last = b.String()
		} else {
			last = err.Error()
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("the fleet did not catch up within %s: %s", d, last)
}

// injector appends malformed and unknown-type events through the SQL
// contract (a plain INSERT INTO events; the trigger writes the outbox), each
// on a fresh aggregate with correct versions:
//   - faults-bad-order-N: OrderPlaced v1 whose payload does not decode
//     (wrong field types), and for every other one a valid OrderConfirmed
//     v2 appended a moment later, in its own transaction (it must be parked
//     as blocked behind v1, keeping the aggregate's order);
//   - faults-bad-product-N: ProductCreated v1 that does not decode;
//   - faults-unknown-N: an OrderTeleported v1 (no projection knows it).
type injector struct {
	pool     *pgxpool.Pool
	c        *counters
	n        int
	followUp []string // bad orders waiting for their v2
}

const (
	badOrderData   = `{"order_id": 7, "customer_name": 42, "items": "none", "total_amount": 12.50, "placed_at": "yesterday"}`
	badProductData = `{"product_id": 7, "name": 42, "price": 9.99, "sku": 1, "created_at": "never"}`
)

func (in *injector) inject(ctx context.Context) {
	var typ, agg, id, data string
	version := 1
	switch {
	case len(in.followUp) > 0:
		typ, agg, id, version = "OrderConfirmed", "Order", in.followUp[0], 2
		data = fmt.Sprintf(`{"order_id": %q, "confirmed_at": %q}`, id, time.Now().UTC().Format(time.RFC3339Nano))
	default:
		in.n++
		switch in.n % 3 {
		case 0:
			typ, agg, id, data = "OrderPlaced", "Order", fmt.Sprintf("faults-bad-order-%d", in.n), badOrderData
		case 1:
			typ, agg, id, data = "OrderTeleported", "Order", fmt.Sprintf("faults-unknown-%d", in.n), `{"to": "Mars"}`
		case 2:
			typ, agg, id, data = "ProductCreated", "Product", fmt.Sprintf("faults-bad-product-%d", in.n), badProductData
		}
	}
	qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err := in.pool.Exec(qctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, metadata, version)
		VALUES ($1, $2, $3, $4::jsonb, '{"user_id": "faults-injector"}', $5)`, agg, id, typ, data, version)
	var pgErr *pgconn.PgError
	done := err == nil || (errors.As(err, &pgErr) && pgErr.Code == "23505") // committed before the connection died
	in.c.add(func(c *counters) {
		c.injectAttempts++
		if err != nil && !done {
			c.injectErrors++
		}
	})
	switch {
	case !done && version == 1:
		in.n-- // try the same aggregate again
	case done && version == 2:
		in.followUp = in.followUp[1:]
	case done && typ == "OrderPlaced" && in.n%2 == 0:
		in.followUp = append(in.followUp, id)
	}
}

// appliedCounts is the events each checkpoint counts as applied (none when
// the server does not answer): a checkpoint whose count went down across a
// crash lost batches it had committed.
func appliedCounts(ctx context.Context, pool *pgxpool.Pool) map[string]int {
	for range 50 {
		rows, err := pool.Query(ctx, `SELECT projection || '/' || segment, events_applied FROM readside.checkpoints`)
		if err == nil {
			m := map[string]int{}
			var k string
			var n int
			_, err = pgx.ForEachRow(rows, []any{&k, &n}, func() error { m[k] = n; return nil })
			if err == nil {
				return m
			}
		}
		time.Sleep(100 * time.Millisecond) // the restart's recovery
	}
	return nil
}

// startCluster starts a disposable PostgreSQL cluster for the test, stopped
// at cleanup, and returns it with the URL of its database dbName.
func startCluster(ctx context.Context, t *testing.T) (*pgtemp.Cluster, string) {
	t.Helper()
	cl, err := pgtemp.Start(ctx)
	if err != nil {
		t.Fatalf("pgtemp: %v", err)
	}
	t.Cleanup(func() { _ = cl.Stop() })
	if err := exec1(ctx, cl.URL, `CREATE DATABASE `+dbName); err != nil {
		t.Fatal(err)
	}
	// As in production: writers, operators and control jobs commit
	// synchronously (pgtemp's server does not, for speed: a database's
	// setting overrides the server's command line), apply transactions
	// asynchronously (their default), and the WAL writer writes their
	// commits late (1 s rather than 200 ms), so that the crash of
	// restartPostgres finds applied batches to undo.
	for _, sql := range []string{`ALTER DATABASE ` + dbName + ` SET synchronous_commit = on`,
		`ALTER SYSTEM SET wal_writer_delay = '1s'`, `SELECT pg_reload_conf()`} {
		if err := exec1(ctx, cl.URL, sql); err != nil {
			t.Fatal(err)
		}
	}
	return cl, pgtest.WithDatabase(cl.URL, dbName)
}
