package projectors_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

// tally is a projection that only queues (Batch.Queue): a row per event
// (a primary key catches a double apply) and a count per projection (a
// plain counter: right only if every batch commits once). Its tables are
// in readside's schema, which is not on the session's search_path, and
// public holds decoys of the same names whose columns fit nothing tally
// writes: a statement resolved under the session's search_path fails.
type tally struct {
	name string
	// countOnly queues the counter alone: a batch applied twice is seen
	// only in the count.
	countOnly bool
	// stall, if set, runs at the start of Apply, before anything is
	// queued or the transaction used.
	stall func(b *projectors.Batch)
}

const tallyDDL = `
CREATE TABLE readside.tally (aggregate_id text NOT NULL, version int NOT NULL, PRIMARY KEY (aggregate_id, version));
CREATE TABLE readside.tally_count (projection text PRIMARY KEY, n bigint NOT NULL);
CREATE TABLE public.tally (aggregate_id uuid, version uuid);
CREATE TABLE public.tally_count (projection int PRIMARY KEY, n uuid);`

func (p *tally) Spec() projectors.Spec {
	return projectors.Spec{Name: p.name, Tables: []string{"tally", "tally_count"}}
}

func (p *tally) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	if p.stall != nil {
		p.stall(b)
	}
	ids := make([]string, len(b.Events))
	versions := make([]int32, len(b.Events))
	poisoned := false
	for i, e := range b.Events {
		ids[i], versions[i] = e.AggregateID, int32(e.Version)
		poisoned = poisoned || strings.Contains(string(e.Data), "poison")
	}
	// A poisoned event fails a queued statement: the batch fails, and its
	// failing event is isolated and parked.
	if err := b.Queue(ctx, tx, `SELECT CAST(CASE WHEN $1 THEN 'poison' ELSE '0' END AS int)`, poisoned); err != nil {
		return err
	}
	if !p.countOnly {
		if err := b.Queue(ctx, tx, `INSERT INTO tally (aggregate_id, version) SELECT * FROM unnest($1::text[], $2::int[])`, ids, versions); err != nil {
			return err
		}
	}
	// Parameters typed by the table: resolved in the wrong schema, pgx
	// would encode them for the decoy's columns.
	return b.Queue(ctx, tx, `INSERT INTO tally_count (projection, n) VALUES ($1, $2)
		ON CONFLICT (projection) DO UPDATE SET n = tally_count.n + excluded.n`, p.name, len(b.Events))
}

func (p *tally) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `TRUNCATE tally, tally_count`)
	return err
}

// commits counts, on a pool's connections, the apply transactions
// committed in one pipeline with their BEGIN (a queued batch), those
// committed by a COMMIT of their own, and the queued statements of tally
// sent in a transaction begun before (flushed).
type commits struct{ pipelined, alone, flushed, prepared atomic.Int64 }

// TracePrepareStart counts the statements readside prepares for a
// pipeline (dbschema.CommitBatch).
func (c *commits) TracePrepareStart(ctx context.Context, _ *pgx.Conn, d pgx.TracePrepareStartData) context.Context {
	if strings.HasPrefix(d.Name, "readside_q_") {
		c.prepared.Add(1)
	}
	return ctx
}

func (c *commits) TracePrepareEnd(context.Context, *pgx.Conn, pgx.TracePrepareEndData) {}

func (c *commits) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, sqlKey{}, d.SQL)
}

func (c *commits) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	if sql, _ := ctx.Value(sqlKey{}).(string); sql == "commit" && d.Err == nil {
		c.alone.Add(1)
	}
}

func (c *commits) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	var tally, commit bool
	for _, q := range d.Batch.QueuedQueries {
		tally = tally || strings.Contains(q.SQL, "tally_count")
		commit = commit || q.SQL == "commit"
	}
	if tally && !commit {
		c.flushed.Add(1)
	}
	return ctx
}

func (c *commits) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	if d.SQL == "commit" && d.Err == nil && d.CommandTag.String() == "COMMIT" {
		c.pipelined.Add(1)
	}
}

func (c *commits) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

func tallyPool(t *testing.T, mode pgx.QueryExecMode, tracer *commits) *pgxpool.Pool {
	t.Helper()
	url := pgtest.NewDatabaseURL(t)
	setup := pgtest.Pool(t, url)
	_, err := setup.Exec(context.Background(), tallyDDL)
	require.NoError(t, err)
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.ConnConfig.DefaultQueryExecMode = mode
	cfg.ConnConfig.Tracer = tracer
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// oneConn is a pool of one connection to pool's database, pool's
// settings and tracer.
func oneConn(t *testing.T, pool *pgxpool.Pool) *pgxpool.Pool {
	t.Helper()
	cfg := pool.Config()
	cfg.MaxConns = 1
	one, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(one.Close)
	return one
}

// A projection that only queues has each batch applied in one round trip
// where pgx can send it so (its statements resolved under the projection's
// search_path, not the session's), and through a transaction begun first
// where it cannot; every event once either way.
func TestQueuedBatchesInEveryExecMode(t *testing.T) {
	t.Parallel()
	for _, m := range []struct {
		mode      pgx.QueryExecMode
		pipelined bool
	}{
		{pgx.QueryExecModeCacheStatement, true},
		{pgx.QueryExecModeExec, true},
		{pgx.QueryExecModeSimpleProtocol, true},
		{pgx.QueryExecModeCacheDescribe, false},
		{pgx.QueryExecModeDescribeExec, false},
	} {
		t.Run(m.mode.String(), func(t *testing.T) {
			t.Parallel()
			tr := &commits{}
			pool := tallyPool(t, m.mode, tr)
			const aggregates, versions = 20, 5
			startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{&tally{name: "tally"}},
				BatchSize: 7, PollInterval: 20 * time.Millisecond})
			for v := range versions {
				for a := range aggregates {
					appendEvents(t, pool, fmt.Sprintf("agg-%d", a), v, `{}`)
				}
			}
			const n = aggregates * versions
			eventually(t, 30*time.Second, "every event applied", func() bool {
				return count(t, pool, `SELECT coalesce(sum(n), 0) FROM readside.tally_count`) == n
			})
			require.Equal(t, n, count(t, pool, `SELECT count(*) FROM readside.tally`))
			require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.dead_letters`))
			if m.pipelined {
				require.Positive(t, tr.pipelined.Load(), "no batch was applied in one round trip")
				require.Zero(t, tr.flushed.Load(), "a batch was applied in a transaction begun first")
			} else {
				require.Zero(t, tr.pipelined.Load())
				require.Positive(t, tr.flushed.Load())
			}
		})
	}
}

// Fencing of a batch sent in one round trip: while the worker is in Apply,
// before its transaction began, its lease is taken over (the epoch moves,
// as a claim after expiry moves it). When the worker sends its pipeline,
// the advance fails and nothing behind it runs, its COMMIT included; the
// worker claims the segment again and applies the batch once: the count
// shows every event once.
func TestQueuedBatchFencedCommitsNothing(t *testing.T) {
	t.Parallel()
	tr := &commits{}
	pool := tallyPool(t, pgx.QueryExecModeCacheStatement, tr)
	appendEvents(t, pool, "a", 0, `{}`, `{}`, `{}`)
	var once sync.Once
	var stolen atomic.Bool
	thief := &tally{name: "tally", countOnly: true, stall: func(*projectors.Batch) {
		once.Do(func() {
			_, err := pool.Exec(context.Background(), `UPDATE readside.checkpoints
				SET lease_owner = 'thief', lease_epoch = lease_epoch + 1, lease_expires_at = now() WHERE projection = 'tally'`)
			stolen.Store(err == nil)
		})
	}}
	reg := prometheus.NewRegistry()
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{thief},
		LeaseTTL: time.Second, PollInterval: 50 * time.Millisecond, RetryBackoff: 10 * time.Millisecond, Registerer: reg})
	eventually(t, 20*time.Second, "batch applied", func() bool {
		return count(t, pool, `SELECT coalesce(sum(n), 0) FROM readside.tally_count`) >= 3
	})
	require.True(t, stolen.Load())
	require.Positive(t, counterValue(t, reg, "readside_projector_fenced_commits_total"))
	appendEvents(t, pool, "a", 3, `{}`)
	eventually(t, 10*time.Second, "the next event applied", func() bool {
		return count(t, pool, `SELECT coalesce(sum(n), 0) FROM readside.tally_count`) >= 4
	})
	time.Sleep(200 * time.Millisecond)
	require.Equal(t, 4, count(t, pool, `SELECT n FROM readside.tally_count`), "a batch applied twice")
	require.Positive(t, tr.pipelined.Load())
}

// typed queues one statement per event whose parameters take their types
// from its table (no casts), and, with named, passes them as pgx.NamedArgs.
type typed struct{ named bool }

func (typed) Spec() projectors.Spec { return projectors.Spec{Name: "typed", Tables: []string{"typed"}} }

func (p typed) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	for _, e := range b.Events {
		var err error
		if p.named {
			err = b.Queue(ctx, tx, `INSERT INTO typed (id, v) VALUES (@id, @v) ON CONFLICT (id) DO UPDATE SET v = excluded.v`,
				pgx.NamedArgs{"id": e.AggregateID, "v": string(e.Data)})
		} else {
			err = b.Queue(ctx, tx, `INSERT INTO typed (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = excluded.v`, e.AggregateID, string(e.Data))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (typed) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `TRUNCATE typed`)
	return err
}

// The statements readside prepares for a batch's one round trip are its
// own: after the read model's column changes type and a reset replays the
// log through Apply's ordinary path (a replay is never sent with its
// BEGIN), the projection's statements of the same text are planned for the
// new type, not run as the statement prepared for the old one (which
// would fail every event of the replay and park it). And statements with
// pgx.NamedArgs, which pgx rewrites as it sends them, are applied in a
// transaction begun first.
func TestQueuedStatementsSurviveTheirTable(t *testing.T) {
	t.Parallel()
	for _, named := range []bool{false, true} {
		t.Run(fmt.Sprintf("named=%v", named), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			tr := &commits{}
			pool := tallyPool(t, pgx.QueryExecModeCacheStatement, tr)
			_, err := pool.Exec(ctx, `CREATE TABLE readside.typed (id text PRIMARY KEY, v text NOT NULL)`)
			require.NoError(t, err)
			p := typed{named: named}
			// One connection: the replay runs where the statements were
			// prepared.
			one := oneConn(t, pool)
			w := startWorker(t, projectors.Config{Pool: one, Projections: []projectors.Projection{p}, PollInterval: 20 * time.Millisecond, Concurrency: 1})
			for i := range 10 {
				appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 0, `{"n": 1}`)
			}
			eventually(t, 20*time.Second, "applied", func() bool { return count(t, pool, `SELECT count(*) FROM readside.typed`) == 10 })
			if named {
				require.Zero(t, tr.pipelined.Load(), "named arguments sent with the BEGIN")
				require.Zero(t, tr.prepared.Load(), "named arguments prepared as they are")
			} else {
				require.Positive(t, tr.pipelined.Load())
			}
			stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			require.NoError(t, w.Stop(stopCtx))

			_, err = pool.Exec(ctx, `ALTER TABLE readside.typed ALTER COLUMN v TYPE jsonb USING v::jsonb`)
			require.NoError(t, err)
			require.NoError(t, control.MoveCheckpoints(ctx, pool, p, "start"))
			startWorker(t, projectors.Config{Pool: one, Projections: []projectors.Projection{p}, PollInterval: 20 * time.Millisecond, Concurrency: 1})
			for i := range 10 {
				appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 1, `{"n": 2}`)
			}
			eventually(t, 20*time.Second, "replayed and applied", func() bool {
				return count(t, pool, `SELECT count(*) FROM readside.typed WHERE v = '{"n": 2}'`) == 10
			})
			require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.dead_letters`))
		})
	}
}

// A segment with a parked aggregate reads which of a batch's aggregates are
// parked before it applies: a later event of the parked aggregate is
// parked behind it, not applied (no order check in tally would catch it),
// while the others flow.
func TestQueuedParkedAggregateStaysParked(t *testing.T) {
	t.Parallel()
	tr := &commits{}
	pool := tallyPool(t, pgx.QueryExecModeCacheStatement, tr)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{&tally{name: "tally"}},
		MaxAttempts: 1, RetryBackoff: time.Millisecond, PollInterval: 20 * time.Millisecond})
	appendTx(t, pool, [3]string{"A", "0", `{}`}, [3]string{"B", "0", `{"poison": true}`})
	eventually(t, 20*time.Second, "B1 parked", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE aggregate_id = 'B'`) == 1
	})
	appendTx(t, pool, [3]string{"A", "1", `{}`}, [3]string{"B", "1", `{}`})
	eventually(t, 20*time.Second, "A2 applied", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.tally WHERE aggregate_id = 'A'`) == 2
	})
	eventually(t, 20*time.Second, "B2 parked behind B1", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE aggregate_id = 'B' AND reason = 'blocked'`) == 1
	})
	require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.tally WHERE aggregate_id = 'B'`), "an event of a parked aggregate applied")
	require.Equal(t, 2, count(t, pool, `SELECT n FROM readside.tally_count`))
}
