package main

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// rawAppendSQL is the physical limit of the writer: events and their outbox
// rows in one statement, the shape readside's Append has (one multi-row
// INSERT INTO events whose trigger writes the outbox), without the trigger's
// checks.
const rawAppendSQL = `
WITH e AS (
    INSERT INTO raw_events (aggregate_type, aggregate_id, event_type, event_data, metadata, schema_version, version)
    SELECT 'Order', $1, t.event_type, t.data, t.meta, 1, $2::int + t.ord::int
      FROM unnest($3::text[], $4::jsonb[], $5::jsonb[]) WITH ORDINALITY AS t(event_type, data, meta, ord)
    RETURNING txid, id, aggregate_type, aggregate_id, event_type, version
)
INSERT INTO raw_outbox (txid, position, aggregate_type, aggregate_id, event_type, version)
SELECT txid, id, aggregate_type, aggregate_id, event_type, version FROM e`

// peerEventsSQL is what the peers' writers append: the events alone (River
// jobs or watermill messages take the outbox's place).
const peerEventsSQL = `
INSERT INTO raw_events (aggregate_type, aggregate_id, event_type, event_data, metadata, schema_version, version)
SELECT 'Order', $1, t.event_type, t.data, t.meta, 1, $2::int + t.ord::int
  FROM unnest($3::text[], $4::jsonb[], $5::jsonb[]) WITH ORDINALITY AS t(event_type, data, meta, ord)`

func appendEvents(ctx context.Context, tx pgx.Tx, sql string, events []event) error {
	types, data, meta := columns(events)
	_, err := tx.Exec(ctx, sql, events[0].AggregateID, events[0].Version-1, types, data, meta)
	return err
}

// rawDrainSQL is the physical limit of the projector: one statement per
// batch reads the gap-safe window after the checkpoint, moves the
// checkpoint, joins the events and upserts the latest version of each
// order behind the version guard. It returns the events read, the orders
// in the batch and the orders the guard let through.
const rawDrainSQL = `
WITH w AS (
    SELECT o.txid, o.position
      FROM raw_checkpoint c
      JOIN raw_outbox o ON (o.txid, o.position) > (c.txid, c.position)
     WHERE c.name = 'raw' AND o.txid < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY o.txid, o.position
     LIMIT $1
), cp AS (
    UPDATE raw_checkpoint c SET txid = l.txid, position = l.position
      FROM (SELECT txid, position FROM w ORDER BY txid DESC, position DESC LIMIT 1) l
     WHERE c.name = 'raw'
), ev AS (
    SELECT e.aggregate_id, e.version, e.event_type, e.event_data
      FROM w JOIN raw_events e ON e.id = w.position
), up AS (
    INSERT INTO bench_orders AS t (id, version, status, data)
    SELECT DISTINCT ON (aggregate_id) aggregate_id, version, event_type, event_data
      FROM ev ORDER BY aggregate_id, version DESC
    ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status, data = excluded.data, updated_at = now()
     WHERE t.version < excluded.version
    RETURNING 1
)
SELECT (SELECT count(*) FROM ev), (SELECT count(DISTINCT aggregate_id) FROM ev), (SELECT count(*) FROM up)`

type result struct {
	events    int
	writeRate float64 // events/s, 0 if not measured
	drainRate float64 // events/s
	ooo       int64
	bad       int // orders not at their final version afterwards
}

func runRaw(ctx context.Context, cfg config, n int) (result, error) {
	var r result
	w := newWorkload(n, cfg.aggregates, cfg.perTx, cfg.writers)
	r.events = w.Events()
	dbURL, drop, err := freshDB(ctx, cfg.dbURL, "raw")
	if err != nil {
		return r, err
	}
	defer drop()
	pool, err := newPool(ctx, dbURL, int32(cfg.writers+2))
	if err != nil {
		return r, err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, peerEventsDDL+";"+readModelDDL("bench_orders")); err != nil {
		return r, err
	}
	elapsed, err := w.write(ctx, pool, func(ctx context.Context, tx pgx.Tx, events []event) error {
		return appendEvents(ctx, tx, rawAppendSQL, events)
	})
	if err != nil {
		return r, err
	}
	r.writeRate = float64(r.events) / elapsed.Seconds()
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE`); err != nil {
		return r, err
	}

	start := time.Now()
	applied := 0
	for {
		var evs, orders, upserted int64
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			return tx.QueryRow(ctx, rawDrainSQL, cfg.batch).Scan(&evs, &orders, &upserted)
		})
		if err != nil {
			return r, err
		}
		if evs == 0 {
			break
		}
		applied += int(evs)
		r.ooo += orders - upserted
	}
	r.drainRate = float64(applied) / time.Since(start).Seconds()
	if applied != r.events {
		return r, errors.New("raw loop applied a different number of events than appended")
	}
	r.bad, err = verify(ctx, pool, "bench_orders", w)
	return r, err
}
