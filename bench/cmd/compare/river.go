package main

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

// applyArgs is one event as a River job: the seed's ActiveJob pattern, one
// job per event carrying the event.
type applyArgs struct {
	AggregateID string          `json:"aggregate_id"`
	Version     int             `json:"version"`
	Type        string          `json:"type"`
	Data        json.RawMessage `json:"data"`
}

func (applyArgs) Kind() string { return "apply_order_event" }

type applyWorker struct {
	river.WorkerDefaults[applyArgs]
	pool    *pgxpool.Pool
	upsert  string
	applied atomic.Int64
	ooo     atomic.Int64
}

func (w *applyWorker) Work(ctx context.Context, job *river.Job[applyArgs]) error {
	a := job.Args
	tag, err := w.pool.Exec(ctx, w.upsert, a.AggregateID, a.Version, a.Type, []byte(a.Data))
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		w.ooo.Add(1)
	}
	w.applied.Add(1)
	return nil
}

type riverSettings struct {
	tuned bool
}

// runRiver appends the workload as events plus one job per event
// (InsertManyTx in the writer's transaction), then starts a River client
// and measures until every job is completed.
func runRiver(ctx context.Context, cfg config, n int, s riverSettings) (result, error) {
	var r result
	w := newWorkload(n, cfg.aggregates, cfg.perTx, cfg.writers)
	r.events = w.Events()
	label := "river_default"
	if s.tuned {
		label = "river_tuned"
	}
	dbURL, drop, err := freshDB(ctx, cfg.dbURL, label)
	if err != nil {
		return r, err
	}
	defer drop()
	pool, err := newPool(ctx, dbURL, int32(cfg.writers+2))
	if err != nil {
		return r, err
	}
	defer pool.Close()
	migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Logger: quietLogger()})
	if err != nil {
		return r, err
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return r, err
	}
	if _, err := pool.Exec(ctx, peerEventsDDL+";"+readModelDDL("bench_orders")); err != nil {
		return r, err
	}

	worker := &applyWorker{upsert: upsertOneSQL("bench_orders")}
	workers := river.NewWorkers()
	river.AddWorker(workers, worker)
	inserter, err := river.NewClient(riverpgxv5.New(pool), &river.Config{Workers: workers, Logger: quietLogger()})
	if err != nil {
		return r, err
	}
	elapsed, err := w.write(ctx, pool, func(ctx context.Context, tx pgx.Tx, events []event) error {
		if err := appendEvents(ctx, tx, peerEventsSQL, events); err != nil {
			return err
		}
		params := make([]river.InsertManyParams, len(events))
		for i, e := range events {
			params[i] = river.InsertManyParams{Args: applyArgs{AggregateID: e.AggregateID, Version: e.Version, Type: e.Type, Data: json.RawMessage(e.Data)}}
		}
		_, err := inserter.InsertManyTx(ctx, tx, params)
		return err
	})
	if err != nil {
		return r, err
	}
	r.writeRate = float64(r.events) / elapsed.Seconds()
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE`); err != nil {
		return r, err
	}

	// The workers' pool: pgxpool's default size at River's defaults, big
	// enough for every worker to hold a connection when tuned.
	var maxConns int32
	rc := &river.Config{
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 100}},
		Workers: workers,
		Logger:  quietLogger(),
	}
	if s.tuned {
		maxConns = int32(cfg.riverPool)
		rc.FetchCooldown = 5 * time.Millisecond
		rc.FetchPollInterval = 5 * time.Millisecond
	}
	wpool, err := newPool(ctx, dbURL, maxConns)
	if err != nil {
		return r, err
	}
	defer wpool.Close()
	worker.pool = wpool
	client, err := river.NewClient(riverpgxv5.New(wpool), rc)
	if err != nil {
		return r, err
	}
	start := time.Now()
	if err := client.Start(ctx); err != nil {
		return r, err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = client.Stop(stopCtx)
	}()
	if err := waitCount(ctx, &worker.applied, int64(r.events), cfg.timeout); err != nil {
		return r, err
	}
	// Done when River has recorded every job as completed.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var left int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state <> 'completed'`).Scan(&left); err != nil {
			return r, err
		}
		if left == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	bad, err := waitVerified(ctx, pool, "bench_orders", w, 10*time.Second)
	if err != nil {
		return r, err
	}
	r.drainRate = float64(r.events) / time.Since(start).Seconds()
	r.load = loadAvg()
	r.bad = bad
	r.ooo = worker.ooo.Load()
	return r, nil
}
