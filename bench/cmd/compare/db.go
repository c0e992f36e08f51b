package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var dbSeq atomic.Int64

// freshDB creates an empty database on the server baseURL names and returns
// its URL and a function that drops it.
func freshDB(ctx context.Context, baseURL, label string) (string, func(), error) {
	admin, err := pgx.Connect(ctx, baseURL)
	if err != nil {
		return "", nil, err
	}
	defer admin.Close(ctx)
	name := fmt.Sprintf("readside_bench_%d_%d_%s", os.Getpid(), dbSeq.Add(1), label)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", nil, err
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		return "", nil, err
	}
	u.Path = "/" + name
	drop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, baseURL)
		if err != nil {
			logf("drop %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			logf("drop %s: %v", name, err)
		}
	}
	return u.String(), drop, nil
}

func newPool(ctx context.Context, dbURL string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, err
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	return pgxpool.NewWithConfig(ctx, cfg)
}

// peerEventsDDL is the event store without readside: the same columns,
// constraint and index as readside's events table, and an outbox table of
// the same shape, without triggers.
const peerEventsDDL = `
CREATE TABLE raw_events (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    event_data     jsonb       NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}',
    schema_version integer     NOT NULL DEFAULT 1,
    version        integer     NOT NULL CHECK (version > 0),
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    txid           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT raw_events_aggregate_version_key UNIQUE (aggregate_type, aggregate_id, version)
);
CREATE INDEX raw_events_txid_id_idx ON raw_events (txid, id);
CREATE TABLE raw_outbox (
    txid           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    position       bigint      NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    version        integer     NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (txid, position)
);
CREATE TABLE raw_checkpoint (name text PRIMARY KEY, txid xid8 NOT NULL, position bigint NOT NULL);
`

// readModelDDL is the read model every system maintains: one row per order,
// upserted per event behind a version guard.
func readModelDDL(table string) string {
	t := pgx.Identifier{table}.Sanitize()
	return `CREATE TABLE ` + t + ` (
    id         text PRIMARY KEY,
    version    integer NOT NULL,
    status     text NOT NULL,
    data       jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)`
}

// upsertOneSQL applies one event; it affects no row when the guard rejects
// an event not newer than the stored one (an out-of-order application).
func upsertOneSQL(table string) string {
	t := pgx.Identifier{table}.Sanitize()
	return `INSERT INTO ` + t + ` AS t (id, version, status, data) VALUES ($1, $2, $3, $4)
ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status, data = excluded.data, updated_at = now()
 WHERE t.version < excluded.version`
}

// verify checks the read model's final state: every order at its last
// version. It returns the number of orders that are not.
func verify(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, table string, w workload) (int, error) {
	var ok int
	err := q.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{table}.Sanitize()+` WHERE version = $1`, w.EventsPerAgg).Scan(&ok)
	return w.Aggregates - ok, err
}

// waitVerified polls verify until the read model is complete or timeout.
func waitVerified(ctx context.Context, pool *pgxpool.Pool, table string, w workload, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		bad, err := verify(ctx, pool, table, w)
		if err != nil || bad == 0 || time.Now().After(deadline) {
			return bad, err
		}
		time.Sleep(5 * time.Millisecond)
	}
}
