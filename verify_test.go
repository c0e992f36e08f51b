package readside_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/internal/promtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/orderstatistics"
	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/projectortest"
)

// scratchSchemas lists the schemas a verification may leave behind.
func scratchSchemas(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT nspname::text FROM pg_namespace WHERE nspname LIKE '%\_verify\_%' ORDER BY 1`)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

// caughtUp runs a fleet member over projs until it has applied every event
// written so far, and leaves it running.
func caughtUp(t *testing.T, pool *pgxpool.Pool, reg prometheus.Registerer, projs ...projectors.Projection) *readside.Client {
	t.Helper()
	c := newClient(t, readside.Config{Pool: pool, Projections: projs, Registerer: reg})
	start(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, c.WaitCaughtUp(ctx))
	return c
}

// Verify finds nothing on a healthy read model (a parked event, which the
// live projection never applied, included), names the order whose row was
// altered by hand, restricts the comparison to the aggregates asked for,
// repairs with Repair, and leaves no scratch schema behind.
func TestVerify(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := projectortest.Lifecycles{Orders: 40, Writers: 2}.Generate(ctx, pool)
	require.NoError(t, err)
	bad := projectortest.MalformedDomainEvents("OrderPlaced")[0]
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := outbox.Append(ctx, tx, bad.Aggregate, 0, []outbox.NewEvent{bad.Event})
		return err
	}))
	c := caughtUp(t, pool, nil, ordersummary.New(), orderstatistics.New())
	var parked int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.dead_letters WHERE projection = 'order_summary' AND status = 'parked'`).Scan(&parked))
	require.Equal(t, 1, parked, "the malformed event is parked")

	v, err := c.Verify(ctx, ordersummary.Name, readside.VerifyOptions{})
	require.NoError(t, err)
	require.False(t, v.Differs(), "a healthy read model differs: %+v", v)
	require.Equal(t, readside.VerifyOK, v.Result())
	require.Positive(t, v.Events)
	require.Empty(t, scratchSchemas(t, pool))

	const id = "ord-0-000003"
	_, err = pool.Exec(ctx, `UPDATE readside.order_summary SET total_amount = total_amount + 1 WHERE order_id = $1`, id)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `UPDATE readside.order_summary SET updated_at = now() - interval '1 day'`)
	require.NoError(t, err)
	v, err = c.Verify(ctx, ordersummary.Name, readside.VerifyOptions{})
	require.NoError(t, err)
	require.True(t, v.Differs())
	require.Equal(t, readside.VerifyDiffers, v.Result())
	require.Len(t, v.Aggregates, 1, "only the altered order differs (updated_at is volatile): %+v", v.Aggregates)
	require.Equal(t, readside.DifferingAggregate{Type: "Order", ID: id, Tables: []string{"order_summary"}, OnlyLive: 1, OnlyCopy: 1}, v.Aggregates[0])
	require.Equal(t, []readside.VerifiedTable{{Name: "order_summary", Key: "order_id", Compared: true, OnlyLive: 1, OnlyCopy: 1}}, v.Tables)

	v, err = c.Verify(ctx, ordersummary.Name, readside.VerifyOptions{AggregateIDs: []string{"ord-1-000003"}})
	require.NoError(t, err)
	require.False(t, v.Differs(), "another order's rows are the same")

	// A counter table has no key: a difference there names no aggregate.
	_, err = pool.Exec(ctx, `UPDATE readside.order_statistics SET order_count = order_count + 1 WHERE status = 'shipped'`)
	require.NoError(t, err)
	v, err = c.Verify(ctx, orderstatistics.Name, readside.VerifyOptions{})
	require.NoError(t, err)
	require.True(t, v.Differs())
	require.Empty(t, v.Aggregates)
	require.Equal(t, []string{"order_statistics"}, v.Unkeyed())
	v, err = c.Verify(ctx, orderstatistics.Name, readside.VerifyOptions{AggregateIDs: []string{id}})
	require.NoError(t, err)
	require.False(t, v.Differs(), "restricted to aggregates, the counter table is not compared")
	require.False(t, v.Tables[0].Compared)

	v, err = c.Verify(ctx, ordersummary.Name, readside.VerifyOptions{Repair: true})
	require.NoError(t, err)
	require.Equal(t, readside.VerifyRepaired, v.Result())
	require.Len(t, v.Repaired, 1)
	require.Equal(t, id, v.Repaired[0].ID)
	v, err = c.Verify(ctx, ordersummary.Name, readside.VerifyOptions{})
	require.NoError(t, err)
	require.False(t, v.Differs(), "repaired: %+v", v.Aggregates)
	require.Empty(t, scratchSchemas(t, pool))
}

// Verify while writers append and the fleet applies finds no difference:
// the copy and the live tables are compared at one snapshot.
func TestVerifyWhileTheFleetRuns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := projectortest.Lifecycles{Orders: 30, Writers: 2}.Generate(ctx, pool)
	require.NoError(t, err)
	c := caughtUp(t, pool, nil, ordersummary.New(), orderstatistics.New())

	wctx, stop := context.WithCancel(ctx)
	defer stop()
	written := make(chan int, 1)
	go func() { written <- writeOrders(wctx, pool) }()
	moved := 0
	var last outbox.Cursor
	for range 4 {
		v, err := c.Verify(ctx, ordersummary.Name, readside.VerifyOptions{})
		require.NoError(t, err)
		require.False(t, v.Differs(), "a false positive while the fleet runs: %+v %+v", v.Tables, v.Aggregates)
		s, err := c.Verify(ctx, orderstatistics.Name, readside.VerifyOptions{})
		require.NoError(t, err)
		require.False(t, s.Differs(), "a false positive while the fleet runs: %+v %+v", s.Tables, s.Aggregates)
		if v.Checkpoints[0] != last {
			moved++
		}
		last = v.Checkpoints[0]
	}
	stop()
	n := <-written
	require.Positive(t, n, "the writer wrote nothing meanwhile")
	require.Greater(t, moved, 1, "the live checkpoint never moved between verifications: the fleet did not run meanwhile")
	require.Empty(t, scratchSchemas(t, pool))
}

// writeOrders places an order and confirms the one before in each
// transaction until ctx ends, and returns how many transactions committed.
func writeOrders(ctx context.Context, pool *pgxpool.Pool) int {
	n := 0
	for ; ctx.Err() == nil; n++ {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			placed := fmt.Sprintf(`{"order_id":"live-%d","customer_name":"c","total_amount":"%d.50","placed_at":"2026-12-01T00:00:00Z","items":[]}`, n, n)
			if _, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: "Order", ID: fmt.Sprintf("live-%d", n)}, 0,
				[]outbox.NewEvent{{Type: "OrderPlaced", Data: []byte(placed)}}); err != nil || n == 0 {
				return err
			}
			confirmed := fmt.Sprintf(`{"order_id":"live-%d","confirmed_at":"2026-12-01T00:01:00Z"}`, n-1)
			_, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: "Order", ID: fmt.Sprintf("live-%d", n-1)}, 1,
				[]outbox.NewEvent{{Type: "OrderConfirmed", Data: []byte(confirmed)}})
			return err
		})
		if err != nil {
			return n
		}
	}
	return n
}

// cancelling wraps a projection so that its Apply cancels the
// verification's context once armed.
type cancelling struct {
	projectors.Projection
	armed  atomic.Bool
	cancel context.CancelFunc
}

func (p *cancelling) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	if p.armed.Load() {
		p.cancel()
		return ctx.Err()
	}
	return p.Projection.Apply(ctx, tx, b)
}

// A verification cancelled while it builds the copy drops its scratch
// schema; so does one that fails, and a schema a killed verification left
// is dropped by the next.
func TestVerifyCleansUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := projectortest.Lifecycles{Orders: 10, Writers: 1}.Generate(ctx, pool)
	require.NoError(t, err)
	vctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := &cancelling{Projection: ordersummary.New(), cancel: cancel}
	c := caughtUp(t, pool, nil, p)

	p.armed.Store(true)
	_, err = c.Verify(vctx, ordersummary.Name, readside.VerifyOptions{})
	require.ErrorIs(t, err, context.Canceled)
	require.Empty(t, scratchSchemas(t, pool), "a cancelled verification left its scratch schema")
	var result, msg string
	require.NoError(t, pool.QueryRow(ctx, `SELECT result, error FROM readside.verifications ORDER BY id DESC LIMIT 1`).Scan(&result, &msg))
	require.Equal(t, "error", result)
	require.Contains(t, msg, "context canceled")

	_, err = pool.Exec(ctx, `CREATE SCHEMA readside_verify_order_summary; CREATE TABLE readside_verify_order_summary.order_summary (x int)`)
	require.NoError(t, err)
	p.armed.Store(false)
	v, err := c.Verify(ctx, ordersummary.Name, readside.VerifyOptions{})
	require.NoError(t, err, "a schema left by a killed verification is in the way")
	require.False(t, v.Differs())
	require.Empty(t, scratchSchemas(t, pool))
}

// Each verification is recorded, and the latest one's result, differences
// and time are exported per projection.
func TestVerifyRecordsAndExports(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := projectortest.Lifecycles{Orders: 10, Writers: 1}.Generate(ctx, pool)
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	c := caughtUp(t, pool, reg, ordersummary.New())
	const (
		ok      = `readside_verify_last_result{projection="order_summary",result="ok"}`
		differs = `readside_verify_last_result{projection="order_summary",result="differs"}`
		diffs   = `readside_verify_differences{projection="order_summary"}`
		last    = `readside_verify_last_timestamp_seconds{projection="order_summary"}`
		good    = `readside_verify_last_success_timestamp_seconds{projection="order_summary"}`
	)
	require.NotContains(t, promtest.Scrape(t, reg), last, "never verified: no series")

	v, err := c.Verify(ctx, ordersummary.Name, readside.VerifyOptions{})
	require.NoError(t, err)
	require.False(t, v.Differs())
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		m := promtest.Scrape(t, reg)
		assert.Equal(ct, 1.0, m[ok])
		assert.Equal(ct, 0.0, m[diffs])
		assert.InDelta(ct, float64(v.Finished.Unix()), m[last], 2)
		assert.Equal(ct, m[last], m[good])
	}, 10*time.Second, 100*time.Millisecond)

	_, err = pool.Exec(ctx, `UPDATE readside.order_summary SET customer_name = 'Mallory' WHERE order_id IN ('ord-0-000001', 'ord-0-000002')`)
	require.NoError(t, err)
	v, err = c.Verify(ctx, ordersummary.Name, readside.VerifyOptions{})
	require.NoError(t, err)
	require.True(t, v.Differs())
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		m := promtest.Scrape(t, reg)
		assert.Equal(ct, 1.0, m[differs])
		assert.NotContains(ct, m, ok, "only the latest result has a series")
		assert.Equal(ct, 2.0, m[diffs])
		assert.Less(ct, m[good], m[last])
	}, 10*time.Second, 100*time.Millisecond)

	rows, err := pool.Query(ctx, `SELECT result, differing, differing_rows FROM readside.verifications WHERE projection = 'order_summary' ORDER BY id`)
	require.NoError(t, err)
	type row struct {
		Result         string
		Differing      int
		Differing_rows int64
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	require.NoError(t, err)
	require.Equal(t, []row{{"ok", 0, 0}, {"differs", 2, 4}}, got)
}

// truncating wraps a projection so that, once armed, its Apply (in the
// verification's copy) has another session TRUNCATE the live table: what a
// reset to the start committing during a verification does.
type truncating struct {
	projectors.Projection
	pool  *pgxpool.Pool
	armed atomic.Bool
}

func (p *truncating) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	if p.armed.CompareAndSwap(true, false) {
		if _, err := p.pool.Exec(ctx, `TRUNCATE readside.order_summary`); err != nil {
			return err
		}
	}
	return p.Projection.Apply(ctx, tx, b)
}

// TRUNCATE is not MVCC-safe: a live table truncated during a verification
// would look empty to its snapshot. The verification says so instead of
// reporting every row as differing.
func TestVerifyRefusesATruncatedLiveTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := projectortest.Lifecycles{Orders: 10, Writers: 1}.Generate(ctx, pool)
	require.NoError(t, err)
	p := &truncating{Projection: ordersummary.New(), pool: pool}
	c := caughtUp(t, pool, nil, p)

	p.armed.Store(true)
	v, err := c.Verify(ctx, ordersummary.Name, readside.VerifyOptions{})
	require.ErrorIs(t, err, readside.ErrLiveTablesReplaced, "%+v", v)
	require.Empty(t, scratchSchemas(t, pool))
}

// After a scale, a segment's cursor may lie below its buckets' floors: the
// events in between were applied before the scale and are passed over.
// The copy applies them (as repair reads them), so a projection verifies
// clean right after a scale.
func TestVerifyBelowBucketFloors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := projectortest.Lifecycles{Orders: 10, Writers: 1}.Generate(ctx, pool)
	require.NoError(t, err)
	p := ordersummary.New()
	projectortest.ApplyStream(t, pool, p, outbox.Filter{AggregateTypes: p.Spec().AggregateTypes}, 100)
	// As a scale leaves it: the segment's cursor at its buckets' least
	// floor (here the start), every bucket's floor at the last event.
	_, err = pool.Exec(ctx, `INSERT INTO readside.projections (name, segments) VALUES ('order_summary', 1);
		INSERT INTO readside.checkpoints (projection, segment) VALUES ('order_summary', 0);
		INSERT INTO readside.checkpoint_buckets (projection, bucket, floor_txid, floor_position, high_txid, high_position)
		SELECT 'order_summary', b, e.txid, e.id, e.txid, e.id
		  FROM generate_series(0, 63) b, (SELECT txid, id FROM readside.events ORDER BY txid DESC, id DESC LIMIT 1) e`)
	require.NoError(t, err)
	c := newClient(t, readside.Config{Pool: pool, Projections: []projectors.Projection{p}})
	v, err := c.Verify(ctx, ordersummary.Name, readside.VerifyOptions{})
	require.NoError(t, err)
	require.False(t, v.Differs(), "%+v %+v", v.Tables, v.Aggregates)
	require.Positive(t, v.Events)
}
