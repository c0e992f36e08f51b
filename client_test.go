package readside_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside"
	"github.com/readside/readside/checkpoint"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/internal/promtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/readmodel"
	"github.com/readside/readside/projectors/shipped"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// counter is a user's projection with a table of its own: it counts
// events per aggregate type.
type counter struct{}

func (counter) Spec() projectors.Spec {
	return projectors.Spec{Name: "per_type", Tables: []string{"per_type"}}
}

func (counter) Schema() string {
	return `CREATE TABLE IF NOT EXISTS per_type (aggregate_type text PRIMARY KEY, n bigint NOT NULL)`
}

func (counter) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	for _, e := range b.Events {
		if _, err := tx.Exec(ctx, `INSERT INTO per_type VALUES ($1, 1) ON CONFLICT (aggregate_type) DO UPDATE SET n = per_type.n + 1`,
			e.AggregateType); err != nil {
			return err
		}
	}
	return nil
}

func (counter) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `TRUNCATE per_type`)
	return err
}

// objects lists the relations, functions and types of each schema other
// than the system's.
func objects(t *testing.T, pool *pgxpool.Pool) map[string][]string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
SELECT n.nspname::text, o.kind || ' ' || o.name FROM (
    SELECT relnamespace AS nsp, 'relation' AS kind, relname::text AS name FROM pg_class
    UNION ALL SELECT pronamespace, 'function', proname::text FROM pg_proc
    UNION ALL SELECT typnamespace, 'type', typname::text FROM pg_type WHERE typrelid = 0 AND typelem = 0) o
  JOIN pg_namespace n ON n.oid = o.nsp
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')`)
	require.NoError(t, err)
	out := map[string][]string{}
	for rows.Next() {
		var nsp, obj string
		require.NoError(t, rows.Scan(&nsp, &obj))
		out[nsp] = append(out[nsp], obj)
	}
	require.NoError(t, rows.Err())
	for _, l := range out {
		sort.Strings(l)
	}
	return out
}

func newClient(t *testing.T, cfg readside.Config) *readside.Client {
	t.Helper()
	cfg.PollInterval = 50 * time.Millisecond
	cfg.LeaseTTL = 2 * time.Second
	c, err := readside.NewClient(cfg)
	require.NoError(t, err)
	return c
}

func start(t *testing.T, c *readside.Client) {
	t.Helper()
	require.NoError(t, c.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		require.NoError(t, c.Stop(ctx))
	})
}

func appendOrders(t *testing.T, pool *pgxpool.Pool, schema string, n int) outbox.Cursor {
	t.Helper()
	ctx := context.Background()
	var last outbox.Cursor
	for i := range n {
		require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			tx, err := readside.InSchema(tx, schema)
			if err != nil {
				return err
			}
			res, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: "Order", ID: fmt.Sprintf("o-%d", i)}, 0,
				[]outbox.NewEvent{{Type: "OrderPlaced", Data: []byte(fmt.Sprintf(
					`{"order_id":"o-%d","customer_name":"c","total_amount":"10.00","placed_at":"2026-12-01T00:00:00Z","items":[]}`, i))}})
			if err == nil {
				last = res.Cursor()
			}
			return err
		}))
	}
	return last
}

// A binary that carries only a user's projection, migrated with a plain
// URL behind an application that has its own events table: everything
// readside creates is in schema readside (its tables, functions, River's
// tables, the user's table), nothing of the shipped domain anywhere, and
// the application's schema untouched.
func TestMigrateCreatesOnlyInItsSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, pgtest.NewEmptyDatabaseURL(t))
	_, err := pool.Exec(ctx, `CREATE TABLE public.events (id bigserial PRIMARY KEY, body jsonb);
		CREATE TABLE public.outbox (id int); CREATE TABLE public.checkpoints (id int); CREATE TABLE public.workers (id int)`)
	require.NoError(t, err)
	before := objects(t, pool)

	c := newClient(t, readside.Config{Pool: pool, Projections: []projectors.Projection{counter{}}})
	res, err := c.Migrate(ctx)
	require.NoError(t, err)
	require.True(t, res.Created)
	require.Equal(t, []string{"per_type"}, res.Projections)
	after := objects(t, pool)
	require.Equal(t, before["public"], after["public"], "nothing created in public")
	for nsp := range after {
		require.Contains(t, []string{"public", "readside"}, nsp, "a schema of readside's own, nothing else")
	}
	rs := after["readside"]
	for _, want := range []string{"relation events", "relation outbox", "relation checkpoints", "relation river_job",
		"relation per_type", "function readside_segment", "type river_job_state"} {
		require.Contains(t, rs, want)
	}
	for _, o := range rs {
		require.NotRegexp(t, `^relation (order_|products)`, o, "the shipped domain's tables are the demo's")
	}

	again, err := c.Migrate(ctx)
	require.NoError(t, err)
	require.Empty(t, again.Applied)
	require.Equal(t, after, objects(t, pool), "migrate is idempotent")
}

// A schema other than the default, end to end through the Client: no
// statement may reach schema readside (it does not exist, so any that
// did would fail), and a member applies, resets and reports.
func TestClientInAnotherSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, pgtest.NewEmptyDatabaseURL(t))
	const schema = "rs_custom"
	projs := []projectors.Projection{counter{}, ordersummary.New()}
	reg := prometheus.NewPedanticRegistry()
	c := newClient(t, readside.Config{Pool: pool, Schema: schema, Projections: projs, Registerer: reg})
	_, err := c.Migrate(ctx)
	require.NoError(t, err)
	require.NotContains(t, objects(t, pool), "readside")
	start(t, c)

	token := appendOrders(t, pool, schema, 20)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, c.WaitFor(wctx, token, "per_type", "order_summary"))
	var n int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT n FROM rs_custom.per_type WHERE aggregate_type = 'Order'`).Scan(&n))
	require.EqualValues(t, 20, n)
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM rs_custom.order_summary`).Scan(&n))
	require.EqualValues(t, 20, n)

	job, err := c.Reset(ctx, "per_type", readside.ResetToStart())
	require.NoError(t, err)
	var phases []readside.Phase
	require.NoError(t, c.Wait(wctx, job, func(p readside.Progress) { phases = append(phases, p.Phase) }))
	require.Equal(t, readside.PhaseDone, phases[len(phases)-1])
	require.NoError(t, pool.QueryRow(ctx, `SELECT n FROM rs_custom.per_type WHERE aggregate_type = 'Order'`).Scan(&n))
	require.EqualValues(t, 20, n, "the reset emptied the table and the replay counted each event once")

	rep, err := c.Status(ctx)
	require.NoError(t, err)
	require.Len(t, rep.Segments, readmodel.DefaultSegments+1, "order_summary's segments and per_type's one")
	for _, s := range rep.Segments {
		require.Equal(t, checkpoint.Running, s.Status)
		require.Zero(t, s.LagEvents)
	}

	// The read fence in this schema: an event writer held open is the
	// window's holder in the status and the metrics.
	held, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = held.Rollback(ctx) }()
	heldTx, err := readside.InSchema(held, schema)
	require.NoError(t, err)
	heldRes, err := outbox.Append(ctx, heldTx, outbox.Aggregate{Type: "Thing", ID: "held"}, 0, []outbox.NewEvent{{Type: "Touched", Data: []byte(`{}`)}})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		rep, err := c.Status(ctx)
		require.NoError(t, err)
		return rep.WindowHolder != nil && rep.WindowHolder.TxID == heldRes.TxID
	}, 20*time.Second, 50*time.Millisecond, "the held writer is named")
	m := promtest.Scrape(t, reg)
	require.Zero(t, m["readside_pipeline_scrape_error"])
	require.Positive(t, m["readside_read_window_holder_age_seconds"])
	require.Contains(t, m, "readside_read_fence_refusals_total")
	require.NoError(t, held.Commit(ctx))

	job, err = c.Rebuild(ctx, "order_summary")
	require.NoError(t, err)
	require.NoError(t, c.Wait(wctx, job, nil))
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM rs_custom.order_summary`).Scan(&n))
	require.EqualValues(t, 20, n, "rebuilt in place")
	var stray int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rs_custom_%'`).Scan(&stray))
	require.Zero(t, stray, "the rebuild's schemas are gone")
}

// The operations refuse what the fleet would refuse, before queueing.
func TestClientOperationsRefuse(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	c := newClient(t, readside.Config{Pool: pool, Projections: append(shipped.All(), counter{})})
	_, err := c.Migrate(ctx)
	require.NoError(t, err)

	_, err = c.Reset(ctx, "nope", readside.ResetToStart())
	var unknown *readside.UnknownProjectionError
	require.ErrorAs(t, err, &unknown)
	require.ErrorIs(t, err, checkpoint.ErrUnknownProjection)
	_, err = c.Reset(ctx, "order_summary", readside.ResetToStart())
	require.ErrorIs(t, err, checkpoint.ErrUnknownProjection, "never run: not registered")
	_, err = c.Rebuild(ctx, "order_notifications")
	require.ErrorIs(t, err, readside.ErrNoTables)
	_, err = c.Pause(ctx, "nope")
	require.ErrorAs(t, err, &unknown)
	require.Contains(t, err.Error(), "registered in the database: none")
	_, err = c.DiscardAllDeadLetters(ctx, "")
	require.ErrorIs(t, err, readside.ErrNothingToDiscard)
	_, err = c.DiscardDeadLetters(ctx, "", nil)
	require.ErrorContains(t, err, "no dead-letter ids", "nil ids never means all")
	_, err = c.Reset(ctx, "order_summary", readside.ResetTarget{})
	require.ErrorContains(t, err, "no target", "the zero target is not a reset to the start")

	start(t, c)
	require.Eventually(t, func() bool { r, err := c.Status(ctx); return err == nil && len(r.NeverRun) == 0 }, 20*time.Second, 50*time.Millisecond)
	_, err = c.Reset(ctx, "order_summary", readside.ResetToCursor(outbox.Cursor{TxID: 1 << 40, Position: 1}))
	require.ErrorIs(t, err, readside.ErrBeyondHead)
	_, err = c.RetryDeadLetters(ctx, "order_summary", nil)
	require.ErrorIs(t, err, readside.ErrNothingToRetry)
	_, err = c.Repair(ctx, "per_type", readside.RepairOptions{AggregateIDs: []string{"x"}})
	require.ErrorIs(t, err, readside.ErrRepairUnsupported, "counter has no Forget")
	n, err := c.Pause(ctx, "order_summary")
	require.NoError(t, err)
	require.Equal(t, readmodel.DefaultSegments, n, "every segment paused")

	// A reset of a paused projection: Wait says it is blocked.
	job, err := c.Reset(ctx, "order_summary", readside.ResetToStart())
	require.NoError(t, err)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var blocked *readside.BlockedError
	require.ErrorAs(t, c.Wait(wctx, job, nil), &blocked)
	require.Equal(t, checkpoint.Paused, blocked.Status)
	_, err = c.Resume(ctx, "order_summary")
	require.NoError(t, err)
	require.NoError(t, c.Wait(wctx, job, nil))
}

// A database migrated by the previous release (everything in public, the
// migrations of testdata/release10 as that release ran them) keeps
// running with Schema "public": migrate applies what is new there, and a
// member projects the events written before and after.
func TestClientOnReleaseTenInPublic(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, pgtest.NewEmptyDatabaseURL(t))
	migrator, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	require.NoError(t, err)
	_, err = migrator.Migrate(ctx, rivermigrate.DirectionUp, nil)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `CREATE TABLE readside_migrations (version integer PRIMARY KEY, name text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`)
	require.NoError(t, err)
	files, err := filepath.Glob("migrations/testdata/release10/*.up.sql")
	require.NoError(t, err)
	require.Len(t, files, 10)
	slices.Sort(files)
	for i, f := range files {
		sql, err := os.ReadFile(f)
		require.NoError(t, err)
		_, err = pool.Exec(ctx, string(sql))
		require.NoError(t, err, f)
		_, err = pool.Exec(ctx, `INSERT INTO readside_migrations (version, name) VALUES ($1, $2)`, i+1, filepath.Base(f))
		require.NoError(t, err)
	}
	// Written by the old release's SQL contract: unqualified, in public.
	_, err = pool.Exec(ctx, `INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data, version)
		SELECT 'Order', 'old-' || i, 'OrderPlaced', jsonb_build_object('order_id', 'old-' || i, 'customer_name', 'c',
		       'total_amount', '1.00', 'placed_at', '2026-11-01T00:00:00Z', 'items', '[]'::jsonb), 1
		  FROM generate_series(1, 5) i`)
	require.NoError(t, err)

	c := newClient(t, readside.Config{Pool: pool, Schema: "public", Projections: shipped.All()})
	_, err = c.Migrate(ctx)
	require.NoError(t, err)
	require.NoError(t, c.CheckSchema(ctx))
	var exists bool
	require.NoError(t, pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'readside')`).Scan(&exists))
	require.False(t, exists, "with Schema public nothing goes to schema readside")
	start(t, c)
	token := appendOrders(t, pool, "public", 5)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, c.WaitFor(wctx, token, "order_summary", "order_statistics"))
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM public.order_summary`).Scan(&n))
	require.Equal(t, 10, n, "events from before and after the upgrade")

	// The same database through the new default schema is not migrated:
	// a clear error, not a silent second install.
	other := newClient(t, readside.Config{Pool: pool, Projections: shipped.All()})
	err = other.CheckSchema(ctx)
	require.Error(t, err)
	require.Contains(t, err.Error(), "--schema")
}

// Stop is safe before Start and twice; Start twice is refused.
func TestClientLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	c := newClient(t, readside.Config{Pool: pool, Projections: shipped.All()})
	require.NoError(t, c.Stop(ctx))
	require.NotEmpty(t, c.WorkerID(), "chosen at NewClient")
	require.NoError(t, c.Start(ctx))
	require.NotEmpty(t, c.WorkerID())
	require.Error(t, c.Start(ctx))
	require.NoError(t, c.Stop(ctx))
	require.NoError(t, c.Stop(ctx))
	select {
	case <-c.Stopped():
	case <-time.After(10 * time.Second):
		t.Fatal("Stopped not closed after Stop")
	}

	_, err := readside.NewClient(readside.Config{Pool: pool})
	require.ErrorContains(t, err, "Projections")
	_, err = readside.NewClient(readside.Config{Pool: pool, Projections: shipped.All(), Schema: "Bad Schema"})
	require.ErrorContains(t, err, "lower-case")
	_, err = readside.NewClient(readside.Config{Pool: pool, Projections: append(shipped.All(), ordersummary.New())})
	require.ErrorContains(t, err, "given twice")
}

// Status for a role that cannot see other roles' sessions (no
// pg_read_all_stats): an event writer of another role holding the window
// is reported, its age unknown rather than 0 (and not left out for being
// "younger than a second"), while the log lags.
func TestClientStatusWindowHolderOfAnotherRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, dbURL)
	var role string
	require.NoError(t, pool.QueryRow(ctx, `SELECT 'ops_' || substr(md5(random()::text), 1, 12)`).Scan(&role))
	_, err := pool.Exec(ctx, `CREATE ROLE `+role+` LOGIN; GRANT USAGE ON SCHEMA readside TO `+role+`;
		GRANT SELECT ON ALL TABLES IN SCHEMA readside TO `+role)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP OWNED BY `+role+`; DROP ROLE IF EXISTS `+role) })
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	u.User = url.User(role)
	c := newClient(t, readside.Config{Pool: pgtest.Pool(t, u.String()), Projections: []projectors.Projection{counter{}}})

	appendOrders(t, pool, "readside", 1)
	held, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = held.Rollback(ctx) }()
	res, err := outbox.Append(ctx, held, outbox.Aggregate{Type: "Thing", ID: "held"}, 0, []outbox.NewEvent{{Type: "Touched", Data: []byte(`{}`)}})
	require.NoError(t, err)

	var rep *readside.Report
	require.Eventually(t, func() bool {
		rep, err = c.Status(ctx)
		require.NoError(t, err)
		return rep.NeverRunLag.Seconds > 1
	}, 20*time.Second, 50*time.Millisecond, "the never-run projection lags")
	require.NotNil(t, rep.WindowHolder)
	require.Equal(t, res.TxID, rep.WindowHolder.TxID)
	require.True(t, rep.WindowHolder.AgeUnknown)
	require.Zero(t, rep.WindowHolder.Age)
}
