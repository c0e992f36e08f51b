package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
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
// batch reads the gap-safe window of the outbox after the checkpoint, moves
// the checkpoint, joins the events and upserts the latest version of each
// order behind the version guard; nothing travels to the client but three
// counts: the events read, the orders in the batch and the orders the guard
// let through. It reads readside's own outbox and events tables, so that it
// drains exactly the backlog the projector drains.
func rawDrainSQL(table string) string {
	return `
WITH w AS (
    SELECT o.txid, o.position
      FROM raw_checkpoint c
      JOIN readside.outbox o ON (o.txid, o.position) > (c.txid, c.position)
     WHERE c.name = $2 AND o.txid < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY o.txid, o.position
     LIMIT $1
), cp AS (
    UPDATE raw_checkpoint c SET txid = l.txid, position = l.position
      FROM (SELECT txid, position FROM w ORDER BY txid DESC, position DESC LIMIT 1) l
     WHERE c.name = $2
), ev AS (
    SELECT e.aggregate_id, e.version, e.event_type, e.event_data
      FROM w JOIN readside.events e ON e.id = w.position
), up AS (
    INSERT INTO ` + pgx.Identifier{table}.Sanitize() + ` AS t (id, version, status, data)
    SELECT DISTINCT ON (aggregate_id) aggregate_id, version, event_type, event_data
      FROM ev ORDER BY aggregate_id, version DESC
    ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status, data = excluded.data, updated_at = now()
     WHERE t.version < excluded.version
    RETURNING 1
)
SELECT (SELECT count(*) FROM ev), (SELECT count(DISTINCT aggregate_id) FROM ev), (SELECT count(*) FROM up)`
}

type result struct {
	events    int
	writeRate float64 // events/s, 0 if not measured
	drainRate float64 // events/s
	ooo       int64
	bad       int           // orders not at their final version afterwards
	load      float64       // 1-minute load average when the measurement ended
	startup   time.Duration // readside: from Start to the first Apply
}

// rawDrain drains the whole outbox into a new read model table with the
// raw statement, in one loop, checkpointing every batch.
func rawDrain(ctx context.Context, cfg config, pool *pgxpool.Pool, w workload, name string) (result, error) {
	r := result{events: w.Events()}
	if _, err := pool.Exec(ctx, readModelDDL(name)); err != nil {
		return r, err
	}
	if _, err := pool.Exec(ctx, `INSERT INTO raw_checkpoint VALUES ($1, '0', 0)`, name); err != nil {
		return r, err
	}
	sql := rawDrainSQL(name)
	start := time.Now()
	applied := 0
	deadline := start.Add(cfg.timeout)
	for applied < r.events {
		var evs, orders, upserted int64
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			return tx.QueryRow(ctx, sql, cfg.batch, name).Scan(&evs, &orders, &upserted)
		})
		if err != nil {
			return r, err
		}
		if evs == 0 {
			// The window ends below the oldest running transaction of the
			// whole server (other databases included): wait, as the
			// projector does.
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
			continue
		}
		applied += int(evs)
		r.ooo += orders - upserted
	}
	r.drainRate = float64(applied) / time.Since(start).Seconds()
	r.load = loadAvg()
	if applied != r.events {
		return r, fmt.Errorf("raw loop applied %d events, %d were appended", applied, r.events)
	}
	var err error
	r.bad, err = verify(ctx, pool, name, w)
	return r, err
}

// loadAvg is the machine's 1-minute load average (0 where unknown).
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
