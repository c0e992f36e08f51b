package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/migrations"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// orderProjection is the benchmark's read model as a readside projection:
// per batch, one set-based upsert of each order's latest event behind the
// version guard.
type orderProjection struct {
	name     string
	table    string
	segments int
	applied  atomic.Int64
	ooo      atomic.Int64
	first    atomic.Int64 // when the first Apply began, Unix nanoseconds
	upsert   string
}

func newOrderProjection(name string, segments int) *orderProjection {
	t := pgx.Identifier{name}.Sanitize()
	return &orderProjection{name: name, table: name, segments: segments, upsert: `
WITH up AS (
    INSERT INTO ` + t + ` AS t (id, version, status, data)
    SELECT DISTINCT ON (id) id, version, status, data
      FROM unnest($1::text[], $2::int[], $3::text[], $4::jsonb[]) AS u(id, version, status, data)
     ORDER BY id, version DESC
    ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status, data = excluded.data, updated_at = now()
     WHERE t.version < excluded.version
    RETURNING 1
)
SELECT count(*) FROM up`}
}

func (p *orderProjection) Spec() projectors.Spec {
	return projectors.Spec{Name: p.name, Segments: p.segments, Tables: []string{p.table}}
}

func (p *orderProjection) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	p.first.CompareAndSwap(0, time.Now().UnixNano())
	n := len(b.Events)
	ids := make([]string, 0, n)
	versions := make([]int32, 0, n)
	types := make([]string, 0, n)
	data := make([][]byte, 0, n)
	last := make(map[string]int, n)
	var ooo int64
	for i := range b.Events {
		e := &b.Events[i]
		// Applied one by one, an event not newer than the order's previous
		// event in this batch would be rejected by the guard.
		if v, ok := last[e.AggregateID]; ok && e.Version <= v {
			ooo++
		}
		last[e.AggregateID] = e.Version
		ids = append(ids, e.AggregateID)
		versions = append(versions, int32(e.Version))
		types = append(types, e.Type)
		data = append(data, e.Data)
	}
	var upserted int64
	if err := tx.QueryRow(ctx, p.upsert, ids, versions, types, data).Scan(&upserted); err != nil {
		return err
	}
	// Orders whose latest event here is not newer than the stored version.
	ooo += int64(len(last)) - upserted
	p.ooo.Add(ooo)
	p.applied.Add(int64(n))
	return nil
}

func (p *orderProjection) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `TRUNCATE `+pgx.Identifier{p.table}.Sanitize())
	return err
}

type readsideGrid struct {
	segments, workers int
}

func (g readsideGrid) String() string { return fmt.Sprintf("%d seg / %d wkr", g.segments, g.workers) }

// readsideRun is one repetition of the readside scenario with its raw SQL
// baselines, each measured next to it in time on the same database.
type readsideRun struct {
	rawWrite, write result
	raw, proj       map[readsideGrid]result
}

// runReadside appends the workload twice, with raw SQL into raw_events and
// raw_outbox and with outbox.Append into readside's tables (the order
// alternating between repetitions), then, for each grid point, drains the
// whole backlog of readside's outbox with the raw SQL loop and with a new
// projection (its own read model and checkpoints, starting from the first
// event) run by the given number of projectors.Worker instances, each with
// its own pool.
func runReadside(ctx context.Context, cfg config, rep, n int, grid []readsideGrid) (readsideRun, error) {
	out := readsideRun{raw: map[readsideGrid]result{}, proj: map[readsideGrid]result{}}
	w := newWorkload(n, cfg.aggregates, cfg.perTx, cfg.writers)
	dbURL, drop, err := freshDB(ctx, cfg.dbURL, "readside")
	if err != nil {
		return out, err
	}
	defer drop()
	pool, err := newPool(ctx, dbURL, int32(cfg.writers+2))
	if err != nil {
		return out, err
	}
	defer pool.Close()
	if _, err := migrations.Migrate(ctx, pool, migrations.Config{Logger: quietLogger()}); err != nil {
		return out, err
	}
	if _, err := pool.Exec(ctx, peerEventsDDL); err != nil {
		return out, err
	}
	rawAppend := func() error {
		elapsed, err := w.write(ctx, pool, func(ctx context.Context, tx pgx.Tx, events []event) error {
			return appendEvents(ctx, tx, rawAppendSQL, events)
		})
		out.rawWrite = result{events: w.Events(), writeRate: float64(w.Events()) / elapsed.Seconds(), load: loadAvg()}
		return err
	}
	readsideAppend := func() error {
		elapsed, err := w.write(ctx, pool, func(ctx context.Context, tx pgx.Tx, events []event) error {
			evs := make([]outbox.NewEvent, len(events))
			for i, e := range events {
				evs[i] = outbox.NewEvent{Type: e.Type, Data: []byte(e.Data),
					Metadata: outbox.Metadata{CorrelationID: "c-1", UserID: "u-1"}}
			}
			_, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: "Order", ID: events[0].AggregateID}, events[0].Version-1, evs)
			return err
		})
		out.write = result{events: w.Events(), writeRate: float64(w.Events()) / elapsed.Seconds(), load: loadAvg()}
		return err
	}
	first, second := rawAppend, readsideAppend
	if rep%2 == 1 {
		first, second = second, first
	}
	if err := first(); err != nil {
		return out, err
	}
	if err := second(); err != nil {
		return out, err
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE`); err != nil {
		return out, err
	}

	for i, g := range grid {
		raw := func() error {
			r, err := rawDrain(ctx, cfg, pool, w, fmt.Sprintf("raw_orders_s%d_w%d", g.segments, g.workers))
			out.raw[g] = r
			return err
		}
		proj := func() error {
			r, err := drainReadside(ctx, cfg, dbURL, pool, w, g)
			out.proj[g] = r
			return err
		}
		first, second := raw, proj
		if (rep+i)%2 == 1 {
			first, second = second, first
		}
		if err := first(); err != nil {
			return out, fmt.Errorf("%s: %w", g, err)
		}
		if err := second(); err != nil {
			return out, fmt.Errorf("%s: %w", g, err)
		}
	}
	return out, nil
}

func drainReadside(ctx context.Context, cfg config, dbURL string, pool *pgxpool.Pool, w workload, g readsideGrid) (result, error) {
	r := result{events: w.Events()}
	name := fmt.Sprintf("bench_orders_s%d_w%d", g.segments, g.workers)
	if _, err := pool.Exec(ctx, readModelDDL(name)); err != nil {
		return r, err
	}
	p := newOrderProjection(name, g.segments)
	var workers []*projectors.Worker
	var pools []*pgxpool.Pool
	defer func() {
		for _, wk := range workers {
			stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_ = wk.Stop(stopCtx)
			cancel()
		}
		for _, pl := range pools {
			pl.Close()
		}
	}()
	for i := range g.workers {
		// The runtime's default concurrency (4) and the pool it asks for.
		pl, err := newPool(ctx, dbURL, int32(2*projectors.ConcurrencyDefault+2))
		if err != nil {
			return r, err
		}
		pools = append(pools, pl)
		wk, err := projectors.NewWorker(projectors.Config{
			Pool:        pl,
			Projections: []projectors.Projection{p},
			WorkerID:    fmt.Sprintf("bench-%s-%d", name, i),
			BatchSize:   cfg.batch,
			Logger:      quietLogger(),
		})
		if err != nil {
			return r, err
		}
		workers = append(workers, wk)
	}
	start := time.Now()
	for _, wk := range workers {
		if err := wk.Start(ctx); err != nil {
			return r, err
		}
	}
	if err := waitCount(ctx, &p.applied, int64(r.events), cfg.timeout); err != nil {
		return r, err
	}
	bad, err := waitVerified(ctx, pool, name, w, 10*time.Second)
	if err != nil {
		return r, err
	}
	r.drainRate = float64(r.events) / time.Since(start).Seconds()
	r.load = loadAvg()
	r.startup = time.Unix(0, p.first.Load()).Sub(start)
	r.bad = bad
	r.ooo = p.ooo.Load()
	if got := p.applied.Load(); got != int64(r.events) {
		logf("readside %s: %d events applied for %d appended (retried batches count twice)", g, got, r.events)
	}
	return r, nil
}

// waitCount waits until c reaches n.
func waitCount(ctx context.Context, c *atomic.Int64, n int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for c.Load() < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s with %d of %d events applied", timeout, c.Load(), n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
