package projectors_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// recorder is a test projection that records every (aggregate, version) it
// applies. A unique constraint catches a double apply, and a predecessor
// check catches an out-of-order apply: either fails the batch, so the event
// ends up parked and the test sees it.
type recorder struct {
	name     string
	segments int
	onError  projectors.ErrorPolicy
	// fail makes Apply fail for events whose payload has "poison": true,
	// unless their aggregate is listed in the cured table.
	failPoison bool
	// hook, if set, runs before each Apply (tests pause workers with it).
	hook func(ctx context.Context, b *projectors.Batch) error
}

const recorderDDL = `
CREATE TABLE IF NOT EXISTS applied (
    projection   text   NOT NULL,
    aggregate_id text   NOT NULL,
    version      int    NOT NULL,
    event_id     bigint NOT NULL,
    replay       bool   NOT NULL DEFAULT false,
    PRIMARY KEY (projection, aggregate_id, version)
);
CREATE TABLE IF NOT EXISTS cured (aggregate_id text PRIMARY KEY);
-- A plain counter: right only if every batch commits exactly once.
CREATE TABLE IF NOT EXISTS applied_count (
    projection text PRIMARY KEY,
    n          bigint NOT NULL
)`

func (r *recorder) Spec() projectors.Spec {
	return projectors.Spec{Name: r.name, Segments: r.segments, OnError: r.onError, Tables: []string{"applied", "applied_count"}}
}

// Apply queues its writes (Batch.Queue): a batch without poison is one
// round trip. The predecessor check fails its statement rather than return
// what it found.
func (r *recorder) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	if r.hook != nil {
		// The hook runs inside the open transaction: one that begins when
		// first used begins now.
		if _, err := tx.Exec(ctx, `SELECT`); err != nil {
			return err
		}
		if err := r.hook(ctx, b); err != nil {
			return err
		}
	}
	ids := make([]string, len(b.Events))
	versions := make([]int32, len(b.Events))
	eventIDs := make([]int64, len(b.Events))
	for i, e := range b.Events {
		if r.failPoison {
			var p struct {
				Poison bool `json:"poison"`
			}
			if err := json.Unmarshal(e.Data, &p); err != nil {
				return fmt.Errorf("event %d: %w", e.ID(), err)
			}
			if p.Poison {
				var cured bool
				if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM cured WHERE aggregate_id = $1)`, e.AggregateID).Scan(&cured); err != nil {
					return err
				}
				if !cured {
					return fmt.Errorf("event %d: poison", e.ID())
				}
			}
		}
		ids[i], versions[i], eventIDs[i] = e.AggregateID, int32(e.Version), e.ID()
	}
	if err := b.Queue(ctx, tx, `
WITH ins AS (
    INSERT INTO applied (projection, aggregate_id, version, event_id, replay)
    SELECT $1, t.id, t.v, t.e, $5 FROM unnest($2::text[], $3::int[], $4::bigint[]) AS t(id, v, e)
    RETURNING aggregate_id, version
)
SELECT CAST(CASE WHEN count(*) = 0 THEN '0' ELSE 'applied before its predecessor' END AS int) FROM ins n
 WHERE n.version > 1
   AND NOT EXISTS (SELECT 1 FROM applied a WHERE a.projection = $1 AND a.aggregate_id = n.aggregate_id AND a.version = n.version - 1)
   AND NOT EXISTS (SELECT 1 FROM unnest($2::text[], $3::int[]) AS t(id, v) WHERE t.id = n.aggregate_id AND t.v = n.version - 1)`,
		r.name, ids, versions, eventIDs, b.Replay); err != nil {
		return err
	}
	return b.Queue(ctx, tx, `INSERT INTO applied_count (projection, n) VALUES ($1, $2)
		ON CONFLICT (projection) DO UPDATE SET n = applied_count.n + excluded.n`, r.name, len(b.Events))
}

func (r *recorder) Reset(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `DELETE FROM applied WHERE projection = $1`, r.name); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `DELETE FROM applied_count WHERE projection = $1`, r.name)
	return err
}

func setupRecorder(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	_, err := pool.Exec(context.Background(), recorderDDL)
	require.NoError(t, err)
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("READSIDE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func startWorker(t *testing.T, cfg projectors.Config) *projectors.Worker {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	w, err := projectors.NewWorker(cfg)
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	var once sync.Once
	stop := func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			require.NoError(t, w.Stop(ctx))
		})
	}
	t.Cleanup(stop)
	return w
}

func appendEvents(t *testing.T, pool *pgxpool.Pool, aggID string, from int, payloads ...string) {
	t.Helper()
	ctx := context.Background()
	events := make([]outbox.NewEvent, len(payloads))
	for i, p := range payloads {
		events[i] = outbox.NewEvent{Type: "Touched", Data: json.RawMessage(p)}
	}
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: "Thing", ID: aggID}, from, events)
		return err
	}))
}

// eventually polls cond until it is true or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", timeout, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}
