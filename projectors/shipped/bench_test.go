package shipped_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/projectortest"
	"github.com/readside/readside/projectors/shipped"
)

// benchBatch is the number of outbox rows per batch, as the runtime reads.
const benchBatch = 1000

// BenchmarkApply measures each shipped projection's Apply over a backlog
// (READSIDE_BENCH_EVENTS events, default 50000 so that `make bench` stays
// short; set 200000 for the backlog), in batches of 1000
// outbox rows, each in one transaction with a fetch and a checkpoint-like
// UPDATE, as the runtime runs it. In the same run it measures a
// hand-written SQL loop that does the same work for the same tables with
// one statement per batch (window read, fold per aggregate, upsert,
// checkpoint), and reports both rates, their ratio, and the share of the
// runtime loop spent in outbox.Fetch.
func BenchmarkApply(b *testing.B) {
	n := 50_000
	if s := os.Getenv("READSIDE_BENCH_EVENTS"); s != "" {
		v, err := strconv.Atoi(s)
		require.NoError(b, err, "READSIDE_BENCH_EVENTS")
		n = v
	}
	ctx := context.Background()
	pool := pgtest.NewDB(b)
	start := time.Now()
	appended, err := projectortest.Lifecycles{Orders: int(float64(n) / projectortest.EventsPerOrder), Writers: 8}.Generate(ctx, pool)
	require.NoError(b, err)
	_, err = pool.Exec(ctx, `CREATE TABLE bench_checkpoint (name text PRIMARY KEY, txid xid8 NOT NULL, position bigint NOT NULL)`)
	require.NoError(b, err)
	_, err = pool.Exec(ctx, `VACUUM ANALYZE`)
	require.NoError(b, err)
	b.Logf("backlog: %d events appended in %s", appended, time.Since(start).Round(time.Millisecond))

	for _, p := range shipped.ReadModels() {
		spec := p.Spec()
		b.Run(spec.Name, func(b *testing.B) {
			var applied, rawApplied int
			var elapsed, rawElapsed, fetching time.Duration
			for b.Loop() {
				b.StopTimer()
				resetBench(b, pool, p)
				b.StartTimer()
				t0 := time.Now()
				n, fetch := runtimeLoop(b, pool, p)
				applied += n
				fetching += fetch
				elapsed += time.Since(t0)

				b.StopTimer()
				want := projectortest.DumpTables(b, pool, spec.Tables, []string{"updated_at"})
				resetBench(b, pool, p)
				b.StartTimer()
				t0 = time.Now()
				rawApplied += rawLoop(b, pool, spec.Name)
				rawElapsed += time.Since(t0)
				b.StopTimer()
				require.Equal(b, applied, rawApplied, "both loops apply the same events")
				require.Equal(b, want, projectortest.DumpTables(b, pool, spec.Tables, []string{"updated_at"}),
					"the raw SQL loop builds the same tables")
				b.StartTimer()
			}
			rate := float64(applied) / elapsed.Seconds()
			raw := float64(rawApplied) / rawElapsed.Seconds()
			b.ReportMetric(rate, "events/s")
			b.ReportMetric(raw, "raw-events/s")
			b.ReportMetric(rate/raw, "ratio")
			b.ReportMetric(fetching.Seconds()/elapsed.Seconds(), "fetch-share")
			b.ReportMetric(0, "ns/op") // the loop is not the unit; events/s is
		})
	}
}

func resetBench(tb testing.TB, pool *pgxpool.Pool, p projectors.Projection) {
	tb.Helper()
	ctx := context.Background()
	require.NoError(tb, projectortest.InTx(ctx, pool, func(tx pgx.Tx) error {
		if err := p.Reset(ctx, tx); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO bench_checkpoint VALUES ($1, '0', 0)
			ON CONFLICT (name) DO UPDATE SET txid = '0', position = 0`, p.Spec().Name)
		return err
	}))
	_, err := pool.Exec(ctx, `VACUUM ANALYZE `+pgx.Identifier{p.Spec().Tables[0]}.Sanitize())
	require.NoError(tb, err)
}

// runtimeLoop is what a segment runner does: per batch, one transaction
// with Fetch, Apply and the checkpoint UPDATE. It returns the events
// applied and the time spent in Fetch.
func runtimeLoop(tb testing.TB, pool *pgxpool.Pool, p projectors.Projection) (int, time.Duration) {
	tb.Helper()
	ctx := context.Background()
	spec := p.Spec()
	f := outbox.Filter{EventTypes: spec.EventTypes, AggregateTypes: spec.AggregateTypes}
	cursor, applied, fetching := outbox.Start, 0, time.Duration(0)
	for {
		var batch *outbox.Batch
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			var err error
			t0 := time.Now()
			batch, err = outbox.Fetch(ctx, tx, cursor, benchBatch, f)
			fetching += time.Since(t0)
			if err != nil || batch.Scanned == 0 {
				return err
			}
			if len(batch.Events) > 0 {
				if err := p.Apply(ctx, tx, &projectors.Batch{Events: batch.Events}); err != nil {
					return err
				}
			}
			_, err = tx.Exec(ctx, `UPDATE bench_checkpoint SET txid = $2, position = $3 WHERE name = $1`,
				spec.Name, batch.Next.TxID, batch.Next.Position)
			return err
		})
		require.NoError(tb, err)
		if batch.Scanned == 0 {
			return applied, fetching
		}
		cursor, applied = batch.Next, applied+len(batch.Events)
	}
}

// rawLoop runs the projection's hand-written statement until the window is
// empty; each statement reads the batch after the stored checkpoint, does
// the projection's work and moves the checkpoint.
func rawLoop(tb testing.TB, pool *pgxpool.Pool, name string) int {
	tb.Helper()
	ctx := context.Background()
	sql := rawSQL[name]
	require.NotEmpty(tb, sql, "no raw SQL for %s", name)
	applied := 0
	for {
		var n int
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			return tx.QueryRow(ctx, rawWindow+sql, name, benchBatch).Scan(&n)
		})
		if errors.Is(err, pgx.ErrNoRows) {
			return applied
		}
		require.NoError(tb, err)
		applied += n
	}
}

// rawWindow reads the next batch after the checkpoint ($1 names it): w is
// the window of outbox rows, cp moves the checkpoint past it, e are the
// window's events of the projection's types (filtered by each statement).
const rawWindow = `
WITH w AS (
    SELECT o.txid, o.position, o.event_type, o.aggregate_type
      FROM bench_checkpoint c
      JOIN readside.outbox o ON (o.txid, o.position) > (c.txid, c.position)
     WHERE c.name = $1 AND o.txid < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY o.txid, o.position
     LIMIT $2
), cp AS (
    UPDATE bench_checkpoint c SET txid = l.txid, position = l.position
      FROM (SELECT txid, position FROM w ORDER BY txid DESC, position DESC LIMIT 1) l
     WHERE c.name = $1
    RETURNING 1
), ev AS (
    SELECT e.aggregate_id, e.event_type, e.version, e.event_data, e.schema_version
      FROM w JOIN readside.events e ON e.id = w.position
)`

var rawSQL = map[string]string{
	"order_summary": `, e AS (
    SELECT * FROM ev WHERE event_type IN ('OrderPlaced', 'OrderConfirmed', 'OrderShipped', 'OrderCancelled')
), r AS (
    SELECT aggregate_id AS order_id,
           max(event_data->>'customer_name') FILTER (WHERE event_type = 'OrderPlaced') AS customer_name,
           max((event_data->>'total_amount')::numeric) FILTER (WHERE event_type = 'OrderPlaced') AS total_amount,
           CASE (array_agg(event_type ORDER BY version DESC))[1]
               WHEN 'OrderPlaced' THEN 'pending' WHEN 'OrderConfirmed' THEN 'confirmed'
               WHEN 'OrderShipped' THEN 'shipped' ELSE 'cancelled' END AS status,
           max((event_data->>'placed_at')::timestamptz) FILTER (WHERE event_type = 'OrderPlaced') AS placed_at,
           max((event_data->>'confirmed_at')::timestamptz) FILTER (WHERE event_type = 'OrderConfirmed') AS confirmed_at,
           max((event_data->>'shipped_at')::timestamptz) FILTER (WHERE event_type = 'OrderShipped') AS shipped_at,
           max((event_data->>'cancelled_at')::timestamptz) FILTER (WHERE event_type = 'OrderCancelled') AS cancelled_at,
           max(version) AS version
      FROM e GROUP BY aggregate_id
), up AS (
    INSERT INTO readside.order_summary AS s
           (order_id, customer_name, total_amount, status, placed_at, confirmed_at, shipped_at, cancelled_at, version, updated_at)
    SELECT r.order_id, coalesce(r.customer_name, cur.customer_name), coalesce(r.total_amount, cur.total_amount), r.status,
           coalesce(r.placed_at, cur.placed_at), coalesce(r.confirmed_at, cur.confirmed_at),
           coalesce(r.shipped_at, cur.shipped_at), coalesce(r.cancelled_at, cur.cancelled_at), r.version, now()
      FROM r LEFT JOIN readside.order_summary cur ON cur.order_id = r.order_id
    ON CONFLICT (order_id) DO UPDATE SET
           customer_name = excluded.customer_name, total_amount = excluded.total_amount, status = excluded.status,
           placed_at = excluded.placed_at, confirmed_at = excluded.confirmed_at, shipped_at = excluded.shipped_at,
           cancelled_at = excluded.cancelled_at, version = excluded.version, updated_at = excluded.updated_at
     WHERE s.version < excluded.version
)
SELECT (SELECT count(*) FROM e) FROM cp`,

	"order_details": `, e AS (
    SELECT * FROM ev WHERE event_type IN ('OrderPlaced', 'OrderConfirmed', 'OrderShipped', 'OrderCancelled')
), r AS (
    SELECT aggregate_id AS order_id,
           max(event_data->>'customer_name') FILTER (WHERE event_type = 'OrderPlaced') AS customer_name,
           max((event_data->>'total_amount')::numeric) FILTER (WHERE event_type = 'OrderPlaced') AS total_amount,
           CASE (array_agg(event_type ORDER BY version DESC))[1]
               WHEN 'OrderPlaced' THEN 'pending' WHEN 'OrderConfirmed' THEN 'confirmed'
               WHEN 'OrderShipped' THEN 'shipped' ELSE 'cancelled' END AS status,
           max(jsonb_array_length(event_data->'items')) FILTER (WHERE event_type = 'OrderPlaced') AS item_count,
           max((event_data->>'placed_at')::timestamptz) FILTER (WHERE event_type = 'OrderPlaced') AS placed_at,
           max((event_data->>'confirmed_at')::timestamptz) FILTER (WHERE event_type = 'OrderConfirmed') AS confirmed_at,
           max((event_data->>'shipped_at')::timestamptz) FILTER (WHERE event_type = 'OrderShipped') AS shipped_at,
           max(nullif(event_data->>'tracking_number', '')) FILTER (WHERE event_type = 'OrderShipped') AS tracking_number,
           max((event_data->>'cancelled_at')::timestamptz) FILTER (WHERE event_type = 'OrderCancelled') AS cancelled_at,
           max(nullif(event_data->>'reason', '')) FILTER (WHERE event_type = 'OrderCancelled') AS cancel_reason,
           max(version) AS version
      FROM e GROUP BY aggregate_id
), up AS (
    INSERT INTO readside.order_details AS d
           (order_id, customer_name, total_amount, status, item_count, placed_at, confirmed_at, shipped_at,
            tracking_number, cancelled_at, cancel_reason, version, updated_at)
    SELECT r.order_id, coalesce(r.customer_name, cur.customer_name), coalesce(r.total_amount, cur.total_amount), r.status,
           coalesce(r.item_count, cur.item_count), coalesce(r.placed_at, cur.placed_at),
           coalesce(r.confirmed_at, cur.confirmed_at), coalesce(r.shipped_at, cur.shipped_at),
           coalesce(r.tracking_number, cur.tracking_number), coalesce(r.cancelled_at, cur.cancelled_at),
           coalesce(r.cancel_reason, cur.cancel_reason), r.version, now()
      FROM r LEFT JOIN readside.order_details cur ON cur.order_id = r.order_id
    ON CONFLICT (order_id) DO UPDATE SET
           customer_name = excluded.customer_name, total_amount = excluded.total_amount, status = excluded.status,
           item_count = excluded.item_count, placed_at = excluded.placed_at, confirmed_at = excluded.confirmed_at,
           shipped_at = excluded.shipped_at, tracking_number = excluded.tracking_number,
           cancelled_at = excluded.cancelled_at, cancel_reason = excluded.cancel_reason,
           version = excluded.version, updated_at = excluded.updated_at
     WHERE d.version < excluded.version
), items AS (
    INSERT INTO readside.order_items (order_id, line_no, product_id, product_name, quantity, unit_price, subtotal)
    SELECT e.aggregate_id, i.ord, i.item->>'product_id', i.item->>'product_name', (i.item->>'quantity')::int,
           (i.item->>'unit_price')::numeric, (i.item->>'quantity')::int * (i.item->>'unit_price')::numeric
      FROM e, jsonb_array_elements(e.event_data->'items') WITH ORDINALITY AS i(item, ord)
     WHERE e.event_type = 'OrderPlaced'
    ON CONFLICT (order_id, line_no) DO NOTHING
)
SELECT (SELECT count(*) FROM e) FROM cp`,

	"products": `, e AS (
    SELECT * FROM ev WHERE event_type IN ('ProductCreated', 'PriceUpdated', 'ProductDeleted')
), r AS (
    SELECT aggregate_id AS product_id,
           max(event_data->>'name') FILTER (WHERE event_type = 'ProductCreated') AS name,
           ((array_agg(coalesce(event_data->>'new_price', event_data->>'price') ORDER BY version DESC)
               FILTER (WHERE event_type IN ('ProductCreated', 'PriceUpdated')))[1])::numeric AS price,
           bool_or(event_type = 'ProductCreated') AS created,
           max(nullif(event_data->>'category_id', '')) FILTER (WHERE event_type = 'ProductCreated') AS category_id,
           max(coalesce(event_data->>'sku', left('SKU-' || upper(replace(aggregate_id, '-', '')), 12)))
               FILTER (WHERE event_type = 'ProductCreated') AS sku,
           max((event_data->>'created_at')::timestamptz) FILTER (WHERE event_type = 'ProductCreated') AS created_at,
           bool_or(event_type = 'ProductDeleted') AS deleted,
           max((event_data->>'deleted_at')::timestamptz) FILTER (WHERE event_type = 'ProductDeleted') AS deleted_at,
           max(version) AS version
      FROM e GROUP BY aggregate_id
), up AS (
    INSERT INTO readside.products AS p (product_id, name, price, category_id, sku, created_at, deleted, deleted_at, version, updated_at)
    SELECT r.product_id, coalesce(r.name, cur.name), coalesce(r.price, cur.price),
           CASE WHEN r.created THEN r.category_id ELSE cur.category_id END, coalesce(r.sku, cur.sku),
           coalesce(r.created_at, cur.created_at), r.deleted OR coalesce(cur.deleted, false),
           coalesce(r.deleted_at, cur.deleted_at), r.version, now()
      FROM r LEFT JOIN readside.products cur ON cur.product_id = r.product_id
    ON CONFLICT (product_id) DO UPDATE SET
           name = excluded.name, price = excluded.price, category_id = excluded.category_id, sku = excluded.sku,
           created_at = excluded.created_at, deleted = excluded.deleted, deleted_at = excluded.deleted_at,
           version = excluded.version, updated_at = excluded.updated_at
     WHERE p.version < excluded.version
)
SELECT (SELECT count(*) FROM e) FROM cp`,

	"order_statistics": `, e AS (
    SELECT * FROM ev WHERE event_type IN ('OrderPlaced', 'OrderConfirmed', 'OrderShipped', 'OrderCancelled')
), b AS (
    SELECT aggregate_id AS order_id,
           CASE (array_agg(event_type ORDER BY version DESC))[1]
               WHEN 'OrderPlaced' THEN 'pending' WHEN 'OrderConfirmed' THEN 'confirmed'
               WHEN 'OrderShipped' THEN 'shipped' ELSE 'cancelled' END AS status,
           bool_or(event_type = 'OrderPlaced') AS placed,
           max((event_data->>'total_amount')::numeric) FILTER (WHERE event_type = 'OrderPlaced') AS total_amount
      FROM e GROUP BY aggregate_id
), prev AS (
    SELECT o.order_id, o.status, o.total_amount
      FROM b JOIN readside.order_statistics_orders o ON o.order_id = b.order_id
     WHERE NOT b.placed
), moved AS (
    SELECT b.order_id, b.status, coalesce(b.total_amount, p.total_amount) AS total_amount
      FROM b LEFT JOIN prev p ON p.order_id = b.order_id
), tracked AS (
    INSERT INTO readside.order_statistics_orders AS o (order_id, status, total_amount)
    SELECT order_id, status, total_amount FROM moved
    ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, total_amount = excluded.total_amount
), delta AS (
    SELECT status, -1 AS orders, -total_amount AS revenue FROM prev
    UNION ALL
    SELECT status, 1, total_amount FROM moved
), counted AS (
    INSERT INTO readside.order_statistics AS s (status, order_count, total_revenue)
    SELECT status, sum(orders), sum(revenue) FROM delta GROUP BY status ORDER BY status
    ON CONFLICT (status) DO UPDATE SET
           order_count = s.order_count + excluded.order_count, total_revenue = s.total_revenue + excluded.total_revenue
)
SELECT (SELECT count(*) FROM e) FROM cp`,
}
