package projectors_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/projectortest"
)

// connUser's Apply first asks the transaction for its connection (to load
// a type, say) and runs its statement on it. stall runs before.
type connUser struct {
	name  string
	stall func()
	// swallow: a statement of Apply whose error the projection ignores
	// (a lookup that falls back to a default), then nothing else.
	swallow   bool
	propagate bool // the control: the same, returning the error
}

func (p *connUser) Spec() projectors.Spec {
	return projectors.Spec{Name: p.name, Tables: []string{"tally_count"}}
}

func (p *connUser) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	if p.stall != nil {
		p.stall()
	}
	if p.swallow || p.propagate {
		var n int
		err := tx.QueryRow(ctx, `SELECT 1`).Scan(&n) // a default when it fails
		if p.propagate {
			return err
		}
		return nil
	}
	// A nil connection (the BEGIN failed) panics here, as it would in a
	// projection's code: the runtime turns that into the BEGIN's error.
	_, err := tx.Conn().Exec(ctx, `INSERT INTO tally_count (projection, n) VALUES ($1, $2)
		ON CONFLICT (projection) DO UPDATE SET n = tally_count.n + excluded.n`, p.name, len(b.Events))
	return err
}

func (p *connUser) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `TRUNCATE tally_count`)
	return err
}

func stealOnce(pool *pgxpool.Pool, name string, stolen *atomic.Bool) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			_, err := pool.Exec(context.Background(), `UPDATE readside.checkpoints
				SET lease_owner = 'thief', lease_epoch = lease_epoch + 1, lease_expires_at = now() WHERE projection = $1`, name)
			stolen.Store(err == nil)
		})
	}
}

// The ordinary path never calls Apply on a fenced lease; the lazy path
// does, and tx.Conn() then returns nil: the projection's use of it does
// not crash the worker, the batch is fenced and applied again.
func TestQueuedLazyConnNilWhenFenced(t *testing.T) {
	t.Parallel()
	pool := tallyPool(t, pgx.QueryExecModeCacheStatement, &commits{})
	appendEvents(t, pool, "a", 0, `{}`, `{}`)
	var stolen atomic.Bool
	p := &connUser{name: "tally"}
	p.stall = stealOnce(pool, "tally", &stolen)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{p},
		LeaseTTL: time.Second, PollInterval: 50 * time.Millisecond, RetryBackoff: 10 * time.Millisecond})
	eventually(t, 20*time.Second, "applied", func() bool {
		return count(t, pool, `SELECT coalesce(sum(n), 0) FROM readside.tally_count`) >= 2
	})
	require.True(t, stolen.Load())
}

// One fence is counted once, also when the projection ignores the error
// of its first statement (the lazy BEGIN's) and returns nil (it was
// counted twice before helper-27's review).
func TestQueuedLazyFenceCountedOnce(t *testing.T) {
	t.Parallel()
	for _, swallow := range []bool{false, true} {
		t.Run(map[bool]string{false: "propagated", true: "swallowed"}[swallow], func(t *testing.T) {
			t.Parallel()
			fenceCount(t, swallow)
		})
	}
}

func fenceCount(t *testing.T, swallow bool) {
	pool := tallyPool(t, pgx.QueryExecModeCacheStatement, &commits{})
	appendEvents(t, pool, "a", 0, `{}`, `{}`)
	var stolen atomic.Bool
	p := &connUser{name: "tally", swallow: swallow, propagate: !swallow}
	var applied atomic.Int64
	steal := stealOnce(pool, "tally", &stolen)
	p.stall = func() { steal(); applied.Add(1) }
	reg := prometheus.NewRegistry()
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{p},
		LeaseTTL: time.Second, PollInterval: 50 * time.Millisecond, RetryBackoff: 10 * time.Millisecond, Registerer: reg})
	eventually(t, 20*time.Second, "checkpoint moved", func() bool {
		return count(t, pool, `SELECT coalesce(sum(events_applied), 0) FROM readside.checkpoints WHERE projection = 'tally'`) >= 2
	})
	require.True(t, stolen.Load())
	require.Equal(t, 1.0, counterValue(t, reg, "readside_projector_fenced_commits_total"), "one fenced batch")
	require.Equal(t, 1.0, batchesOutcome(t, reg, "fenced"), "one fenced batch")
}

func batchesOutcome(t *testing.T, g prometheus.Gatherer, outcome string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != "readside_projector_batches_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					v += m.GetCounter().GetValue()
				}
			}
		}
	}
	return v
}

// guarded applies each event in a savepoint of its own: it queues the
// event's row, then runs a check on the transaction directly; an event
// whose check fails is skipped, its savepoint rolled back, the rest goes
// on (a projection that tolerates bad events rather than park them).
type guarded struct{}

func (guarded) Spec() projectors.Spec {
	return projectors.Spec{Name: "guarded", Tables: []string{"tally"}}
}

func (guarded) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	for _, e := range b.Events {
		sp, err := tx.Begin(ctx)
		if err != nil {
			return err
		}
		if err := b.Queue(ctx, sp, `INSERT INTO tally (aggregate_id, version) VALUES ($1, $2)`, e.AggregateID, e.Version); err != nil {
			return err
		}
		if _, err := sp.Exec(ctx, `SELECT CAST(CASE WHEN $1::jsonb ? 'bad' THEN 'bad' ELSE '0' END AS int)`, string(e.Data)); err != nil {
			if err := sp.Rollback(ctx); err != nil {
				return err
			}
			continue // skipped: nothing of it stays
		}
		if err := sp.Commit(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (guarded) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `TRUNCATE tally`)
	return err
}

// A statement queued on a savepoint that is then rolled back is undone,
// by hand (projectortest) and in the runtime: Queue defers only what is
// queued on the transaction Apply was handed (the runtime sent it after
// Apply, outside the savepoint, and committed it, before helper-27's
// review).
func TestQueuedOnRolledBackSavepoint(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// By hand, as projectortest applies.
	hand := tallyPool(t, pgx.QueryExecModeCacheStatement, &commits{})
	appendEvents(t, hand, "a", 0, `{}`, `{"bad": true}`, `{}`)
	b := fetchAll2(t, hand)
	require.NoError(t, projectortest.InTx(ctx, hand, func(tx pgx.Tx) error {
		return guarded{}.Apply(ctx, tx, &projectors.Batch{Events: b.Events})
	}))
	require.Equal(t, 2, count(t, hand, `SELECT count(*) FROM readside.tally`), "by hand")

	// The runtime.
	pool := tallyPool(t, pgx.QueryExecModeCacheStatement, &commits{})
	appendEvents(t, pool, "a", 0, `{}`, `{"bad": true}`, `{}`)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{guarded{}}, PollInterval: 20 * time.Millisecond})
	eventually(t, 20*time.Second, "applied", func() bool {
		return count(t, pool, `SELECT coalesce(sum(events_applied), 0) FROM readside.checkpoints WHERE projection = 'guarded'`) == 3
	})
	require.Equal(t, 2, count(t, pool, `SELECT count(*) FROM readside.tally`), "the runtime: the skipped event's row committed")
}

// multi queues one statement text of two commands and no arguments,
// which tx.Exec runs (pgx sends a statement without arguments by the
// simple protocol).
type multi struct{}

func (multi) Spec() projectors.Spec {
	return projectors.Spec{Name: "multi", Tables: []string{"tally_count"}}
}

func (multi) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	return b.Queue(ctx, tx, `INSERT INTO tally_count VALUES ('x', 1) ON CONFLICT (projection) DO UPDATE SET n = tally_count.n + 1;
		INSERT INTO tally_count VALUES ('y', 1) ON CONFLICT (projection) DO UPDATE SET n = tally_count.n + 1`)
}

func (multi) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `TRUNCATE tally_count`)
	return err
}

// Queue runs sql in tx as tx.Exec would, also a statement of several
// commands without arguments (the runtime parked every event before
// helper-27's review: a prepared statement takes one command).
func TestQueuedMultiStatement(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	hand := tallyPool(t, pgx.QueryExecModeCacheStatement, &commits{})
	appendEvents(t, hand, "a", 0, `{}`)
	b := fetchAll2(t, hand)
	require.NoError(t, projectortest.InTx(ctx, hand, func(tx pgx.Tx) error {
		return multi{}.Apply(ctx, tx, &projectors.Batch{Events: b.Events})
	}), "by hand")

	pool := tallyPool(t, pgx.QueryExecModeCacheStatement, &commits{})
	appendEvents(t, pool, "a", 0, `{}`, `{}`)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{multi{}}, PollInterval: 20 * time.Millisecond,
		MaxAttempts: 1, RetryBackoff: time.Millisecond})
	eventually(t, 20*time.Second, "passed", func() bool {
		return count(t, pool, `SELECT coalesce(sum(events_applied), 0) FROM readside.checkpoints WHERE projection = 'multi'`)+
			count(t, pool, `SELECT count(*) FROM readside.dead_letters`) >= 2
	})
	var msg string
	_ = pool.QueryRow(ctx, `SELECT coalesce(max(error), '') FROM readside.dead_letters`).Scan(&msg)
	require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.dead_letters`), "parked: %s", msg)
}

// partitioned creates, when first needed, the table its row goes to
// (IF NOT EXISTS), and writes its row there: two queued statements.
type partitioned struct{}

func (partitioned) Spec() projectors.Spec { return projectors.Spec{Name: "partitioned"} }

func (partitioned) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	for _, e := range b.Events {
		if err := b.Queue(ctx, tx, `CREATE TABLE IF NOT EXISTS readside.part_a (id text, v int)`); err != nil {
			return err
		}
		if err := b.Queue(ctx, tx, `INSERT INTO part_a VALUES ($1, $2)`, e.AggregateID, e.Version); err != nil {
			return err
		}
	}
	return nil
}

func (partitioned) Reset(context.Context, pgx.Tx) error { return nil }

// A queued statement that needs what a queued DDL statement creates: the
// DDL, without arguments, runs at once, so pgx describes the INSERT after
// the table exists (both were described before either ran, and every
// event parked, before helper-27's review).
func TestQueuedDependsOnQueuedDDL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	hand := tallyPool(t, pgx.QueryExecModeCacheStatement, &commits{})
	appendEvents(t, hand, "a", 0, `{}`)
	b := fetchAll2(t, hand)
	require.NoError(t, projectortest.InTx(ctx, hand, func(tx pgx.Tx) error {
		return partitioned{}.Apply(ctx, tx, &projectors.Batch{Events: b.Events})
	}), "by hand")

	pool := tallyPool(t, pgx.QueryExecModeCacheStatement, &commits{})
	appendEvents(t, pool, "a", 0, `{}`, `{}`)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{partitioned{}}, PollInterval: 20 * time.Millisecond,
		MaxAttempts: 1, RetryBackoff: time.Millisecond})
	eventually(t, 20*time.Second, "passed", func() bool {
		return count(t, pool, `SELECT coalesce(sum(events_applied), 0) FROM readside.checkpoints WHERE projection = 'partitioned'`)+
			count(t, pool, `SELECT count(*) FROM readside.dead_letters`) >= 2
	})
	var msg string
	_ = pool.QueryRow(ctx, `SELECT coalesce(max(error), '') FROM readside.dead_letters`).Scan(&msg)
	require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.dead_letters`), "parked: %s", msg)
}

// ordered queues a row's insert and then updates the row directly.
type ordered struct{}

func (ordered) Spec() projectors.Spec {
	return projectors.Spec{Name: "ordered", Tables: []string{"tally_count"}}
}

func (ordered) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	for _, e := range b.Events {
		if err := b.Queue(ctx, tx, `INSERT INTO tally_count VALUES ($1, 0) ON CONFLICT DO NOTHING`, e.AggregateID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE tally_count SET n = n + 1 WHERE projection = $1`, e.AggregateID); err != nil {
			return err
		}
	}
	return nil
}

func (ordered) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `TRUNCATE tally_count`)
	return err
}

// projectortest's ApplyStream and the runtime give the same tables for the
// same events: both send what Apply queued after it returns
// (projectors.ApplyBatch).
func TestQueuedOrderConformance(t *testing.T) {
	t.Parallel()
	hand := tallyPool(t, pgx.QueryExecModeCacheStatement, &commits{})
	appendEvents(t, hand, "a", 0, `{}`, `{}`)
	projectortest.ApplyStream(t, hand, ordered{}, outbox.Filter{}, 1)
	pool := tallyPool(t, pgx.QueryExecModeCacheStatement, &commits{})
	appendEvents(t, pool, "a", 0, `{}`, `{}`)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{ordered{}}, PollInterval: 20 * time.Millisecond, BatchSize: 1})
	eventually(t, 20*time.Second, "applied", func() bool {
		return count(t, pool, `SELECT coalesce(sum(events_applied), 0) FROM readside.checkpoints WHERE projection = 'ordered'`) == 2
	})
	require.Equal(t, count(t, hand, `SELECT n FROM readside.tally_count`), count(t, pool, `SELECT n FROM readside.tally_count`))
}

// varying queues a statement of constant text and one whose text varies
// with the batch (which Batch.Queue's doc advises against, but allows).
type varying struct{ applies atomic.Int64 }

func (*varying) Spec() projectors.Spec {
	return projectors.Spec{Name: "varying", Tables: []string{"tally_count"}}
}

func (p *varying) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	p.applies.Add(1)
	if err := b.Queue(ctx, tx, `INSERT INTO tally_count (projection, n) VALUES ('varying', $1)
		ON CONFLICT (projection) DO UPDATE SET n = tally_count.n + excluded.n`, len(b.Events)); err != nil {
		return err
	}
	return b.Queue(ctx, tx, fmt.Sprintf(`SELECT %d + $1::int`, b.Events[0].Version), 0)
}

func (*varying) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `TRUNCATE tally_count`)
	return err
}

// Past dbschema.MaxPrepared, prepareProjection deallocates every statement
// it prepared, those of the batch at hand included, and prepares the
// batch's again: the pipeline never names a statement deallocated (which
// failed it, and had the batch applied again the ordinary way, Apply
// twice, before helper-27's review).
func TestQueuedPastMaxPreparedNoFallback(t *testing.T) {
	t.Parallel()
	tr := &commits{}
	pool := tallyPool(t, pgx.QueryExecModeCacheStatement, tr)
	one := oneConn(t, pool)
	const n = 140
	payloads := make([]string, n)
	for i := range payloads {
		payloads[i] = `{}`
	}
	appendEvents(t, pool, "a", 0, payloads...)
	p := &varying{}
	startWorker(t, projectors.Config{Pool: one, Projections: []projectors.Projection{p}, BatchSize: 1,
		PollInterval: 20 * time.Millisecond, Concurrency: 1})
	eventually(t, 60*time.Second, "applied", func() bool {
		return count(t, pool, `SELECT coalesce(sum(n), 0) FROM readside.tally_count`) == n
	})
	require.Zero(t, tr.flushed.Load(), "batches applied again the ordinary way")
	require.EqualValues(t, n, p.applies.Load(), "Apply calls")
}

func TestQueuedFencedEveryMode(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			tr := &commits{}
			pool := tallyPool(t, mode, tr)
			appendEvents(t, pool, "a", 0, `{}`, `{}`, `{}`)
			var stolen atomic.Bool
			steal := stealOnce(pool, "tally", &stolen)
			thief := &tally{name: "tally", countOnly: true, stall: func(*projectors.Batch) { steal() }}
			startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{thief},
				LeaseTTL: time.Second, PollInterval: 50 * time.Millisecond, RetryBackoff: 10 * time.Millisecond})
			eventually(t, 20*time.Second, "batch applied", func() bool {
				return count(t, pool, `SELECT coalesce(sum(n), 0) FROM readside.tally_count`) >= 3
			})
			time.Sleep(300 * time.Millisecond)
			require.True(t, stolen.Load())
			require.Equal(t, 3, count(t, pool, `SELECT n FROM readside.tally_count`))
			require.Equal(t, 3, count(t, pool, `SELECT sum(events_applied) FROM readside.checkpoints WHERE projection = 'tally'`))
		})
	}
}

// fetchAll2 reads every event appended, waiting for the read window.
func fetchAll2(t *testing.T, pool *pgxpool.Pool) *outbox.Batch {
	t.Helper()
	want := count(t, pool, `SELECT count(*) FROM readside.events`)
	var b *outbox.Batch
	eventually(t, 20*time.Second, "events readable", func() bool {
		var err error
		b, err = outbox.Fetch(context.Background(), pool, outbox.Start, 100, outbox.Filter{})
		require.NoError(t, err)
		return len(b.Events) == want
	})
	return b
}
