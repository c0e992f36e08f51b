package shipped_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
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
	"github.com/readside/readside/projectors/projectortest"
	"github.com/readside/readside/projectors/shipped"
)

// BenchmarkDrain is the same-backlog benchmark of issue 12: a backlog
// written through the writer's command path (internal/loadgen, as `writer
// load` runs it: aggregate.Execute, one event per transaction, real order
// payloads; READSIDE_BENCH_EVENTS events, default 50000), drained from the
// start by each shipped read model through the real runtime
// (projectors.Worker, default settings, Concurrency = segments) and, right
// before it on the same rows, by a plain pgx loop: per transaction, fetch
// the next 1000 rows of the xid8 window joined to events, fold each
// order's latest status in Go, one unnest upsert behind a version guard
// and a checkpoint UPDATE. The plain loop runs with parallel query off
// (SET LOCAL max_parallel_workers_per_gather = 0), as the baseline;
// plain_default_settings measures it at the server's settings.
//
// Rates are outbox rows passed over per second (the whole backlog over the
// time to drain it), so ratio = plain time / runtime time.
func BenchmarkDrain(b *testing.B) {
	n := 50_000
	if s := os.Getenv("READSIDE_BENCH_EVENTS"); s != "" {
		v, err := strconv.Atoi(s)
		require.NoError(b, err, "READSIDE_BENCH_EVENTS")
		n = v
	}
	ctx := context.Background()
	pool := pgtest.NewDB(b)
	start := time.Now()
	repo, err := aggregate.New(pool, aggregate.Config{})
	require.NoError(b, err)
	require.NoError(b, loadgen.Run(ctx, repo, loadgen.Config{Events: n, Aggregates: max(1, min(10_000, n/20)),
		Concurrency: 8, Progress: time.Hour}, io.Discard))
	_, err = pool.Exec(ctx, `
CREATE TABLE plain_order_status (order_id text PRIMARY KEY, status text NOT NULL, version int NOT NULL);
CREATE TABLE plain_checkpoint (segment int PRIMARY KEY, txid xid8 NOT NULL, position bigint NOT NULL)`)
	require.NoError(b, err)
	_, err = pool.Exec(ctx, `VACUUM ANALYZE`)
	require.NoError(b, err)
	var rows int
	require.NoError(b, pool.QueryRow(ctx, `SELECT count(*) FROM readside.outbox`).Scan(&rows))
	b.Logf("backlog: %d events through the command path in %s (%.0f events/s)", rows, time.Since(start).Round(time.Millisecond),
		float64(rows)/time.Since(start).Seconds())

	for _, segs := range []int{1, 2, 4} {
		if segs == 1 {
			b.Run("segments=1/plain_default_settings", func(b *testing.B) {
				var off, def time.Duration
				for b.Loop() {
					off += drainPlain(b, pool, 1, true)
					def += drainPlain(b, pool, 1, false)
				}
				reportDrain(b, rows, def, off)
			})
		}
		for _, p := range shipped.ReadModels() {
			b.Run(fmt.Sprintf("segments=%d/%s", segs, p.Spec().Name), func(b *testing.B) {
				var plain, rt time.Duration
				for b.Loop() {
					plain += drainPlain(b, pool, segs, true)
					rt += drainWorker(b, pool, p, segs)
				}
				reportDrain(b, rows, rt, plain)
			})
		}
	}
}

func reportDrain(b *testing.B, rows int, elapsed, plain time.Duration) {
	loops := float64(b.N)
	b.ReportMetric(loops*float64(rows)/elapsed.Seconds(), "events/s")
	b.ReportMetric(loops*float64(rows)/plain.Seconds(), "plain-events/s")
	b.ReportMetric(plain.Seconds()/elapsed.Seconds(), "ratio")
	b.ReportMetric(0, "ns/op") // a drain is not the unit; events/s is
}

// segmented runs a shipped projection split in a given number of segments.
type segmented struct {
	projectors.Projection
	segments int
}

func (s segmented) Spec() projectors.Spec {
	spec := s.Projection.Spec()
	spec.Segments = s.segments
	return spec
}

// drainWorker resets p's read model and registration, then runs a Worker
// until it has applied every event of p's aggregate types, and returns the
// time from Start.
func drainWorker(b *testing.B, pool *pgxpool.Pool, p projectors.Projection, segs int) time.Duration {
	b.Helper()
	ctx := context.Background()
	spec := p.Spec()
	require.NoError(b, projectortest.InTx(ctx, pool, func(tx pgx.Tx) error {
		if err := p.Reset(ctx, tx); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM readside.projections WHERE name = $1`, spec.Name)
		return err
	}))
	for _, t := range spec.Tables {
		_, err := pool.Exec(ctx, `VACUUM ANALYZE `+pgx.Identifier{"readside", t}.Sanitize())
		require.NoError(b, err)
	}
	var want float64
	require.NoError(b, pool.QueryRow(ctx, `SELECT count(*)::float8 FROM readside.events
		WHERE (cardinality($1::text[]) = 0 OR aggregate_type = ANY ($1::text[]))
		  AND (cardinality($2::text[]) = 0 OR event_type = ANY ($2::text[]))`,
		nonNil(spec.AggregateTypes), nonNil(spec.EventTypes)).Scan(&want))

	reg := prometheus.NewRegistry()
	w, err := projectors.NewWorker(projectors.Config{Pool: pool, Projections: []projectors.Projection{segmented{p, segs}},
		Concurrency: segs, Registerer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(b, err)
	t0 := time.Now()
	require.NoError(b, w.Start(ctx))
	deadline := t0.Add(10 * time.Minute)
	for applied(b, reg, spec.Name) < want {
		if time.Now().After(deadline) {
			b.Fatalf("%s: applied %.0f of %.0f events in 10m", spec.Name, applied(b, reg, spec.Name), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(t0)
	stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(b, w.Stop(stopCtx))
	var parked int
	require.NoError(b, pool.QueryRow(ctx, `SELECT count(*) FROM readside.dead_letters WHERE projection = $1`, spec.Name).Scan(&parked))
	require.Zero(b, parked, "%s parked events of a valid backlog", spec.Name)
	return elapsed
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func applied(tb testing.TB, reg *prometheus.Registry, name string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	require.NoError(tb, err)
	for _, mf := range mfs {
		if mf.GetName() != "readside_projector_events_applied_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "projection" && l.GetValue() == name {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// drainPlain empties plain_order_status and its checkpoints and runs the
// plain loop with segs goroutines (segment s of n reads the rows whose
// bucket % n = s), returning the time to drain the backlog.
func drainPlain(b *testing.B, pool *pgxpool.Pool, segs int, parallelOff bool) time.Duration {
	b.Helper()
	ctx := context.Background()
	_, err := pool.Exec(ctx, `TRUNCATE plain_order_status, plain_checkpoint`)
	require.NoError(b, err)
	_, err = pool.Exec(ctx, `VACUUM ANALYZE plain_order_status`)
	require.NoError(b, err)
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, segs)
	for s := range segs {
		wg.Go(func() { errs[s] = plainLoop(ctx, pool, s, segs, parallelOff) })
	}
	wg.Wait()
	elapsed := time.Since(t0)
	for _, err := range errs {
		require.NoError(b, err)
	}
	return elapsed
}

func plainLoop(ctx context.Context, pool *pgxpool.Pool, seg, segs int, parallelOff bool) error {
	filter := ""
	if segs > 1 {
		filter = fmt.Sprintf(" AND o.bucket %% %d = %d", segs, seg)
	}
	fetch := `
SELECT o.txid, o.position, e.aggregate_type, e.aggregate_id, e.event_type, e.version, e.event_data
  FROM readside.outbox o JOIN readside.events e ON e.id = o.position
 WHERE (o.txid, o.position) > ($1::xid8, $2::bigint) AND o.txid < pg_snapshot_xmin(pg_current_snapshot())` + filter + `
 ORDER BY o.txid, o.position
 LIMIT 1000`
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `INSERT INTO plain_checkpoint VALUES ($1, '0', 0)`, seg); err != nil {
		return err
	}
	var txid uint64
	var pos int64
	type order struct {
		status  string
		version int32
	}
	for {
		done := false
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if parallelOff {
				if _, err := tx.Exec(ctx, `SET LOCAL max_parallel_workers_per_gather = 0`); err != nil {
					return err
				}
			}
			rows, err := tx.Query(ctx, fetch, txid, pos)
			if err != nil {
				return err
			}
			orders := map[string]*order{}
			var ids []string
			n := 0
			for rows.Next() {
				var aggType, aggID, typ string
				var version int32
				var data []byte
				if err := rows.Scan(&txid, &pos, &aggType, &aggID, &typ, &version, &data); err != nil {
					return err
				}
				n++
				if aggType != domain.OrderAggregate {
					continue
				}
				o := orders[aggID]
				if o == nil {
					o = &order{}
					orders[aggID] = o
					ids = append(ids, aggID)
				}
				o.status, o.version = plainStatus[typ], version
			}
			if err := rows.Err(); err != nil {
				return err
			}
			if n == 0 {
				done = true
				return nil
			}
			statuses, versions := make([]string, len(ids)), make([]int32, len(ids))
			for i, id := range ids {
				statuses[i], versions[i] = orders[id].status, orders[id].version
			}
			if _, err := tx.Exec(ctx, `
INSERT INTO plain_order_status AS s (order_id, status, version)
SELECT * FROM unnest($1::text[], $2::text[], $3::int[])
ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, version = excluded.version
 WHERE s.version < excluded.version`, ids, statuses, versions); err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `UPDATE plain_checkpoint SET txid = $2, position = $3 WHERE segment = $1`, seg, txid, pos)
			return err
		})
		if err != nil || done {
			return err
		}
	}
}

var plainStatus = map[string]string{
	domain.OrderPlacedType: "pending", domain.OrderConfirmedType: "confirmed",
	domain.OrderShippedType: "shipped", domain.OrderCancelledType: "cancelled",
}
