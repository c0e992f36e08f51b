package shipped_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/loadgen"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/projectortest"
)

// BenchmarkDrainSameWork is issue 24's measurement: a backlog written as
// `writer load` writes it (aggregate.Execute, one event per transaction,
// real order payloads, 8 writers; READSIDE_BENCH_EVENTS events, default
// 50000, over one order per 20 events up to 10000), drained from the start
// three ways on the same rows, back to back:
//
//   - same_work: a hand-written pgx loop doing order_summary's work on one
//     connection: per transaction, the next 1000 rows of the xid8 window
//     joined to events in (txid, position) order, every payload decoded
//     with encoding/json, folded to one row per order in Go, one unnest
//     upsert behind a version guard into a table created LIKE
//     order_summary INCLUDING ALL (same columns, checks, indexes), and a
//     checkpoint UPDATE. Its rows are checked equal to order_summary's.
//   - floor: the same loop writing only (order_id, status, version) into a
//     primary-key-only table, with no decoding (drainPlain's plain loop).
//   - readside: order_summary through projectors.Worker at its defaults
//     (the projection's own Spec, Config zero values), as `projector run
//     --projections order_summary` runs it.
//
// It reports events/s of each and readside's ratios to the two loops
// (ratio = loop time / readside time).
func BenchmarkDrainSameWork(b *testing.B) {
	n := 50_000
	if s := os.Getenv("READSIDE_BENCH_EVENTS"); s != "" {
		v, err := strconv.Atoi(s)
		require.NoError(b, err, "READSIDE_BENCH_EVENTS")
		n = v
	}
	ctx := context.Background()
	pool := pgtest.NewDB(b)
	repo, err := aggregate.New(pool, aggregate.Config{})
	require.NoError(b, err)
	require.NoError(b, loadgen.Run(ctx, repo, loadgen.Config{Events: n, Aggregates: max(1, min(10_000, n/20)),
		Concurrency: 8, Progress: time.Hour}, io.Discard))
	_, err = pool.Exec(ctx, `
CREATE TABLE same_order_summary (LIKE readside.order_summary INCLUDING ALL);
CREATE TABLE same_checkpoint (id int PRIMARY KEY, txid xid8 NOT NULL, position bigint NOT NULL);
CREATE TABLE plain_order_status (order_id text PRIMARY KEY, status text NOT NULL, version int NOT NULL);
CREATE TABLE plain_checkpoint (segment int PRIMARY KEY, txid xid8 NOT NULL, position bigint NOT NULL)`)
	require.NoError(b, err)
	_, err = pool.Exec(ctx, `VACUUM ANALYZE`)
	require.NoError(b, err)
	var rows int
	require.NoError(b, pool.QueryRow(ctx, `SELECT count(*) FROM readside.outbox`).Scan(&rows))

	var same, floor, rt time.Duration
	for b.Loop() {
		same += drainSameWork(b, pool)
		floor += drainPlain(b, pool, 1, true)
		rt += drainDefaults(b, pool)
	}
	requireSameRows(b, pool)
	loops := float64(b.N)
	b.ReportMetric(loops*float64(rows)/rt.Seconds(), "events/s")
	b.ReportMetric(loops*float64(rows)/same.Seconds(), "same-work-events/s")
	b.ReportMetric(loops*float64(rows)/floor.Seconds(), "floor-events/s")
	b.ReportMetric(same.Seconds()/rt.Seconds(), "ratio-same-work")
	b.ReportMetric(floor.Seconds()/rt.Seconds(), "ratio-floor")
	b.ReportMetric(0, "ns/op")
	b.Logf("%d events, GOMAXPROCS %d: readside %.0f/s, same-work loop %.0f/s, floor %.0f/s", rows, runtime.GOMAXPROCS(0),
		float64(rows)/rt.Seconds()*loops, float64(rows)/same.Seconds()*loops, float64(rows)/floor.Seconds()*loops)
}

// drainDefaults runs order_summary from the start through a Worker at its
// defaults and returns the time until it has applied every Order event.
func drainDefaults(b *testing.B, pool *pgxpool.Pool) time.Duration {
	b.Helper()
	ctx := context.Background()
	p := ordersummary.New()
	spec := p.Spec()
	require.NoError(b, projectortest.InTx(ctx, pool, func(tx pgx.Tx) error {
		if err := p.Reset(ctx, tx); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM readside.projections WHERE name = $1`, spec.Name)
		return err
	}))
	_, err := pool.Exec(ctx, `VACUUM ANALYZE readside.order_summary`)
	require.NoError(b, err)
	var want float64
	require.NoError(b, pool.QueryRow(ctx, `SELECT count(*)::float8 FROM readside.events WHERE aggregate_type = 'Order'`).Scan(&want))
	reg := prometheus.NewRegistry()
	w, err := projectors.NewWorker(projectors.Config{Pool: pool, Projections: []projectors.Projection{p},
		Registerer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(b, err)
	t0 := time.Now()
	require.NoError(b, w.Start(ctx))
	for applied(b, reg, spec.Name) < want {
		if time.Since(t0) > 10*time.Minute {
			b.Fatalf("applied %.0f of %.0f events in 10m", applied(b, reg, spec.Name), want)
		}
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := time.Since(t0)
	stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(b, w.Stop(stopCtx))
	return elapsed
}

// summaryRow is the hand loop's order: every column of order_summary.
type summaryRow struct {
	id                                        string
	customer                                  string
	total                                     string
	status                                    string
	placed, confirmed, shipped, cancelled     *time.Time
	version                                   int32
	hasPlaced, hasConfirm, hasShip, hasCancel bool
}

// payload is every field the order events carry that order_summary needs.
type payload struct {
	CustomerName string          `json:"customer_name"`
	TotalAmount  json.RawMessage `json:"total_amount"`
	PlacedAt     *time.Time      `json:"placed_at"`
	ConfirmedAt  *time.Time      `json:"confirmed_at"`
	ShippedAt    *time.Time      `json:"shipped_at"`
	CancelledAt  *time.Time      `json:"cancelled_at"`
}

// drainSameWork empties same_order_summary and its checkpoint and runs the
// same-work loop on one connection until the window is drained.
func drainSameWork(b *testing.B, pool *pgxpool.Pool) time.Duration {
	b.Helper()
	ctx := context.Background()
	_, err := pool.Exec(ctx, `TRUNCATE same_order_summary, same_checkpoint`)
	require.NoError(b, err)
	_, err = pool.Exec(ctx, `VACUUM ANALYZE same_order_summary`)
	require.NoError(b, err)
	conn, err := pool.Acquire(ctx)
	require.NoError(b, err)
	defer conn.Release()
	_, err = conn.Exec(ctx, `INSERT INTO same_checkpoint VALUES (0, '0', 0)`)
	require.NoError(b, err)
	const fetch = `
SELECT o.txid, o.position, e.aggregate_type, e.aggregate_id, e.event_type, e.version, e.event_data
  FROM readside.outbox o JOIN readside.events e ON e.id = o.position
 WHERE (o.txid, o.position) > ($1::xid8, $2::bigint) AND o.txid < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY o.txid, o.position
 LIMIT 1000`
	const upsert = `
INSERT INTO same_order_summary AS s (order_id, customer_name, total_amount, status, placed_at, confirmed_at, shipped_at, cancelled_at, version, updated_at)
SELECT r.order_id, coalesce(r.customer_name, cur.customer_name), coalesce(r.total_amount::numeric, cur.total_amount), r.status,
       coalesce(r.placed_at, cur.placed_at), coalesce(r.confirmed_at, cur.confirmed_at), coalesce(r.shipped_at, cur.shipped_at),
       coalesce(r.cancelled_at, cur.cancelled_at), r.version, now()
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::int[])
       AS r(order_id, customer_name, total_amount, status, placed_at, confirmed_at, shipped_at, cancelled_at, version)
  LEFT JOIN same_order_summary cur ON cur.order_id = r.order_id
ON CONFLICT (order_id) DO UPDATE SET customer_name = excluded.customer_name, total_amount = excluded.total_amount,
       status = excluded.status, placed_at = excluded.placed_at, confirmed_at = excluded.confirmed_at,
       shipped_at = excluded.shipped_at, cancelled_at = excluded.cancelled_at, version = excluded.version, updated_at = now()
 WHERE s.version < excluded.version`
	t0 := time.Now()
	var txid uint64
	var pos int64
	for {
		done := false
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL max_parallel_workers_per_gather = 0`); err != nil {
				return err
			}
			rs, err := tx.Query(ctx, fetch, txid, pos)
			if err != nil {
				return err
			}
			orders := map[string]*summaryRow{}
			var ids []string
			n := 0
			for rs.Next() {
				var aggType, aggID, typ string
				var version int32
				var data []byte
				if err := rs.Scan(&txid, &pos, &aggType, &aggID, &typ, &version, &data); err != nil {
					return err
				}
				n++
				if aggType != domain.OrderAggregate {
					continue
				}
				var p payload
				if err := json.Unmarshal(data, &p); err != nil {
					return fmt.Errorf("event %d: %w", pos, err)
				}
				o := orders[aggID]
				if o == nil {
					o = &summaryRow{id: aggID}
					orders[aggID] = o
					ids = append(ids, aggID)
				}
				switch typ {
				case domain.OrderPlacedType:
					total := string(p.TotalAmount) // a JSON number, or a string holding one
					if len(total) > 0 && total[0] == '"' {
						if err := json.Unmarshal(p.TotalAmount, &total); err != nil {
							return fmt.Errorf("event %d: total_amount: %w", pos, err)
						}
					}
					o.customer, o.total, o.placed, o.status, o.hasPlaced = p.CustomerName, total, p.PlacedAt, "pending", true
				case domain.OrderConfirmedType:
					o.confirmed, o.status, o.hasConfirm = p.ConfirmedAt, "confirmed", true
				case domain.OrderShippedType:
					o.shipped, o.status, o.hasShip = p.ShippedAt, "shipped", true
				case domain.OrderCancelledType:
					o.cancelled, o.status, o.hasCancel = p.CancelledAt, "cancelled", true
				}
				o.version = version
			}
			if err := rs.Err(); err != nil {
				return err
			}
			if n == 0 {
				done = true
				return nil
			}
			slices.Sort(ids)
			k := len(ids)
			custs, totals, statuses := make([]*string, k), make([]*string, k), make([]string, k)
			placed, confirmed, shipped, cancelled := make([]*time.Time, k), make([]*time.Time, k), make([]*time.Time, k), make([]*time.Time, k)
			versions := make([]int32, k)
			for i, id := range ids {
				o := orders[id]
				if o.hasPlaced {
					custs[i], totals[i] = &o.customer, &o.total
				}
				statuses[i], versions[i] = o.status, o.version
				placed[i], confirmed[i], shipped[i], cancelled[i] = o.placed, o.confirmed, o.shipped, o.cancelled
			}
			if _, err := tx.Exec(ctx, upsert, ids, custs, totals, statuses, placed, confirmed, shipped, cancelled, versions); err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `UPDATE same_checkpoint SET txid = $1, position = $2 WHERE id = 0`, txid, pos)
			return err
		})
		require.NoError(b, err)
		if done {
			return time.Since(t0)
		}
	}
}

// requireSameRows checks that the hand loop did order_summary's work.
func requireSameRows(b *testing.B, pool *pgxpool.Pool) {
	b.Helper()
	var differ int
	require.NoError(b, pool.QueryRow(context.Background(), `
SELECT count(*) FROM (
  (SELECT order_id, customer_name, total_amount, status, placed_at, confirmed_at, shipped_at, cancelled_at, version FROM readside.order_summary
   EXCEPT SELECT order_id, customer_name, total_amount, status, placed_at, confirmed_at, shipped_at, cancelled_at, version FROM same_order_summary)
  UNION ALL
  (SELECT order_id, customer_name, total_amount, status, placed_at, confirmed_at, shipped_at, cancelled_at, version FROM same_order_summary
   EXCEPT SELECT order_id, customer_name, total_amount, status, placed_at, confirmed_at, shipped_at, cancelled_at, version FROM readside.order_summary)) d`).Scan(&differ))
	require.Zero(b, differ, "the same-work loop's rows equal order_summary's")
}
