package shipped_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
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
	"github.com/readside/readside/internal/syncbuf"
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
// (ratio = loop time / readside time), and logs each drain's CPU time per
// 1000 events, this process's and the server's (when the server runs on
// this machine; see cpuClock), and how many cores it kept busy.
//
// READSIDE_BENCH_BACKLOG_URL drains an existing backlog instead of writing
// one (the issue's: `writer load --events 200000 --aggregates 10000
// --concurrency 8` into a database of a cluster of its own, so that the
// server's CPU is this benchmark's alone); READSIDE_BENCH_SEGMENTS="2,4,8"
// also drains order_summary split in those segment counts.
func BenchmarkDrainSameWork(b *testing.B) {
	n := 50_000
	if s := os.Getenv("READSIDE_BENCH_EVENTS"); s != "" {
		v, err := strconv.Atoi(s)
		require.NoError(b, err, "READSIDE_BENCH_EVENTS")
		n = v
	}
	ctx := context.Background()
	pool := backlog(b, n)
	_, err := pool.Exec(ctx, `
DROP TABLE IF EXISTS same_order_summary, same_checkpoint, plain_order_status, plain_checkpoint;
CREATE TABLE same_order_summary (LIKE readside.order_summary INCLUDING ALL);
CREATE TABLE same_checkpoint (id int PRIMARY KEY, txid xid8 NOT NULL, position bigint NOT NULL);
CREATE TABLE plain_order_status (order_id text PRIMARY KEY, status text NOT NULL, version int NOT NULL);
CREATE TABLE plain_checkpoint (segment int PRIMARY KEY, txid xid8 NOT NULL, position bigint NOT NULL)`)
	require.NoError(b, err)
	_, err = pool.Exec(ctx, `VACUUM ANALYZE`)
	require.NoError(b, err)
	var rows int
	require.NoError(b, pool.QueryRow(ctx, `SELECT count(*) FROM readside.outbox`).Scan(&rows))

	// READSIDE_BENCH_SEGMENTS (e.g. "1,2,4") also drains order_summary
	// at those segment counts (Concurrency at its default), besides the
	// defaults.
	var segs []int
	for _, f := range strings.FieldsFunc(os.Getenv("READSIDE_BENCH_SEGMENTS"), func(r rune) bool { return r == ',' }) {
		v, err := strconv.Atoi(f)
		require.NoError(b, err, "READSIDE_BENCH_SEGMENTS")
		segs = append(segs, v)
	}
	// READSIDE_BENCH_BINARY=1 also drains it with the projector binary
	// (READSIDE_BENCH_BINARY_ARGS: more arguments for `projector run`).
	var bin string
	if os.Getenv("READSIDE_BENCH_BINARY") != "" {
		bin = buildProjector(b)
	}
	// READSIDE_BENCH_VARIANTS="4x2,15x4" also drains it through a pool of
	// 4 connections at Concurrency 2, of 15 at 4, ...: how the statements
	// in flight on the server change its work per event.
	type variant struct{ conns, concurrency int }
	var variants []variant
	for _, f := range strings.FieldsFunc(os.Getenv("READSIDE_BENCH_VARIANTS"), func(r rune) bool { return r == ',' }) {
		var v variant
		_, err := fmt.Sscanf(f, "%dx%d", &v.conns, &v.concurrency)
		require.NoError(b, err, "READSIDE_BENCH_VARIANTS: want CONNSxCONCURRENCY")
		variants = append(variants, v)
	}
	clock := newCPUClock(b, pool)
	var same, floor, rt, binary cpuSpent
	bySegs := make([]cpuSpent, len(segs))
	byVariant := make([]cpuSpent, len(variants))
	for b.Loop() {
		same.add(clock.measure(func() time.Duration { return drainSameWork(b, pool) }))
		floor.add(clock.measure(func() time.Duration { return drainPlain(b, pool, 1, true) }))
		rt.add(clock.measure(func() time.Duration { return drainDefaults(b, pool, 0) }))
		requireSameRows(b, pool)
		if bin != "" {
			binary.add(clock.measure(func() time.Duration { return drainBinary(b, pool, bin) }))
			requireSameRows(b, pool)
		}
		for i, n := range segs {
			bySegs[i].add(clock.measure(func() time.Duration { return drainDefaults(b, pool, n) }))
			requireSameRows(b, pool)
		}
		for i, v := range variants {
			vp := variantPool(b, pool, v.conns)
			byVariant[i].add(clock.measure(func() time.Duration { return drainWith(b, vp, 0, v.concurrency) }))
			vp.Close()
			requireSameRows(b, pool)
		}
	}
	loops := float64(b.N)
	b.ReportMetric(loops*float64(rows)/rt.wall.Seconds(), "events/s")
	b.ReportMetric(loops*float64(rows)/same.wall.Seconds(), "same-work-events/s")
	b.ReportMetric(loops*float64(rows)/floor.wall.Seconds(), "floor-events/s")
	b.ReportMetric(same.wall.Seconds()/rt.wall.Seconds(), "ratio-same-work")
	b.ReportMetric(floor.wall.Seconds()/rt.wall.Seconds(), "ratio-floor")
	b.ReportMetric(0, "ns/op")
	b.Logf("%d events, GOMAXPROCS %d: readside %.0f/s, same-work loop %.0f/s, floor %.0f/s", rows, runtime.GOMAXPROCS(0),
		float64(rows)/rt.wall.Seconds()*loops, float64(rows)/same.wall.Seconds()*loops, float64(rows)/floor.wall.Seconds()*loops)
	perK := func(d time.Duration) float64 { return d.Seconds() * 1000 / (loops * float64(rows) / 1000) }
	line := func(name string, s cpuSpent) {
		b.Logf("%-22s %8.0f events/s  ratio-same-work %.2f  CPU ms per 1000 events: client %6.1f  server %6.1f  (busy cores %.2f)",
			name, loops*float64(rows)/s.wall.Seconds(), same.wall.Seconds()/s.wall.Seconds(), perK(s.client), perK(s.server),
			(s.client+s.server).Seconds()/s.wall.Seconds())
	}
	line("same-work loop", same)
	line("floor", floor)
	line("readside defaults", rt)
	if bin != "" {
		line("projector run binary", binary)
	}
	for i, n := range segs {
		line(fmt.Sprintf("readside %d segments", n), bySegs[i])
	}
	for i, v := range variants {
		line(fmt.Sprintf("readside %d conns, conc %d", v.conns, v.concurrency), byVariant[i])
	}
}

// variantPool opens a pool of conns connections to pool's database.
func variantPool(b *testing.B, pool *pgxpool.Pool, conns int) *pgxpool.Pool {
	b.Helper()
	cfg := pool.Config().Copy()
	cfg.MaxConns = int32(conns)
	vp, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(b, err)
	return vp
}

// backlog returns a database holding a backlog written as `writer load`
// writes it, n events. READSIDE_BENCH_BACKLOG_URL names an existing one
// (written by `writer load`, e.g. in a cluster of its own for CPU
// figures): it is used as it is, and its order_summary is replaced.
func backlog(b *testing.B, n int) *pgxpool.Pool {
	b.Helper()
	ctx := context.Background()
	if url := os.Getenv("READSIDE_BENCH_BACKLOG_URL"); url != "" {
		pool, err := pgxpool.New(ctx, url)
		require.NoError(b, err)
		b.Cleanup(pool.Close)
		return pool
	}
	pool := pgtest.NewDB(b)
	repo, err := aggregate.New(pool, aggregate.Config{})
	require.NoError(b, err)
	require.NoError(b, loadgen.Run(ctx, repo, loadgen.Config{Events: n, Aggregates: max(1, min(10_000, n/20)),
		Concurrency: 8, Progress: time.Hour}, io.Discard))
	return pool
}

// drainDefaults runs order_summary from the start through a Worker at its
// defaults (segments > 0: split in that many segments instead;
// READSIDE_BENCH_BATCH: that BatchSize) and returns the time until it has
// applied every Order event.
func drainDefaults(b *testing.B, pool *pgxpool.Pool, segments int) time.Duration {
	b.Helper()
	return drainWith(b, pool, segments, 0)
}

// drainWith is drainDefaults at that Concurrency (0: the default).
func drainWith(b *testing.B, pool *pgxpool.Pool, segments, concurrency int) time.Duration {
	b.Helper()
	ctx := context.Background()
	var p projectors.Projection = ordersummary.New()
	if segments > 0 {
		p = segmented{p, segments}
	}
	spec := p.Spec()
	resetSummary(b, pool, p)
	var want float64
	require.NoError(b, pool.QueryRow(ctx, `SELECT count(*)::float8 FROM readside.events WHERE aggregate_type = 'Order'`).Scan(&want))
	reg := prometheus.NewRegistry()
	batch, _ := strconv.Atoi(os.Getenv("READSIDE_BENCH_BATCH")) // 0: the default
	w, err := projectors.NewWorker(projectors.Config{Pool: pool, Projections: []projectors.Projection{p},
		BatchSize: batch, Concurrency: concurrency, Registerer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(b, err)
	t0 := time.Now()
	require.NoError(b, w.Start(ctx))
	for applied(b, reg, spec.Name) < want {
		if time.Since(t0) > 10*time.Minute {
			b.Fatalf("applied %.0f of %.0f events in 10m", applied(b, reg, spec.Name), want)
		}
		time.Sleep(20 * time.Millisecond)
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

// drainBinary runs order_summary from the start as a user runs it: the
// projector binary (built from this tree into a temporary directory),
// `projector run --projections order_summary` with the database in
// DATABASE_URL and no other flag, and returns the time from starting the
// process until every segment's checkpoint stands at the log's head.
// (PROJECTOR_METRICS_ADDR=127.0.0.1:0 keeps it off the default port.)
func drainBinary(b *testing.B, pool *pgxpool.Pool, bin string) time.Duration {
	b.Helper()
	ctx := context.Background()
	p := ordersummary.New()
	resetSummary(b, pool, p)
	args := append([]string{"run", "--projections", ordersummary.Name}, strings.Fields(os.Getenv("READSIDE_BENCH_BINARY_ARGS"))...)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+pool.Config().ConnString(), "PROJECTOR_METRICS_ADDR=127.0.0.1:0")
	var out syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	require.NoError(b, cmd.Start())
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	for {
		var registered, behind int
		require.NoError(b, pool.QueryRow(ctx, `
SELECT count(*), count(*) FILTER (WHERE (c.cursor_txid, c.cursor_position) < (h.txid, h.position))
  FROM readside.checkpoints c,
       (SELECT txid, position FROM readside.outbox ORDER BY txid DESC, position DESC LIMIT 1) h
 WHERE c.projection = $1`, ordersummary.Name).Scan(&registered, &behind))
		if registered > 0 && behind == 0 {
			return time.Since(t0)
		}
		if cmd.ProcessState != nil || time.Since(t0) > 10*time.Minute {
			b.Fatalf("projector run did not catch up: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// buildProjector builds cmd/projector into a temporary directory.
func buildProjector(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "projector")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/readside/readside/cmd/projector")
	out, err := cmd.CombinedOutput()
	require.NoError(b, err, "%s", out)
	return bin
}

// resetSummary empties order_summary and forgets its registration (and so
// its checkpoints), so that the next drain starts from the log's start.
func resetSummary(b *testing.B, pool *pgxpool.Pool, p projectors.Projection) {
	b.Helper()
	ctx := context.Background()
	require.NoError(b, projectortest.InTx(ctx, pool, func(tx pgx.Tx) error {
		if err := p.Reset(ctx, tx); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM readside.projections WHERE name = $1`, ordersummary.Name)
		return err
	}))
	_, err := pool.Exec(ctx, `VACUUM ANALYZE readside.order_summary`)
	require.NoError(b, err)
}
