package observe_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/internal/promtest"
	"github.com/readside/readside/projectors"
)

// explaining runs every statement the collector sends twice: once under
// EXPLAIN (ANALYZE, BUFFERS) to add up the shared buffers it touched, then
// for real. Buffers touched are the deterministic cost of a reading: they do
// not depend on the machine's load.
type explaining struct {
	pool *pgxpool.Pool
	tb   testing.TB

	mu         sync.Mutex
	explain    bool
	buffers    int64
	statements int
}

func (e *explaining) note(ctx context.Context, sql string, args []any) {
	e.mu.Lock()
	e.statements++
	explain := e.explain
	e.mu.Unlock()
	if !explain {
		return
	}
	var out []byte
	require.NoError(e.tb, e.pool.QueryRow(ctx, `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) `+sql, args...).Scan(&out))
	var plans []struct {
		Plan struct {
			Hit  int64 `json:"Shared Hit Blocks"`
			Read int64 `json:"Shared Read Blocks"`
		} `json:"Plan"`
	}
	require.NoError(e.tb, json.Unmarshal(out, &plans))
	e.mu.Lock()
	e.buffers += plans[0].Plan.Hit + plans[0].Plan.Read
	e.mu.Unlock()
}

func (e *explaining) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	e.note(ctx, sql, args)
	return e.pool.Exec(ctx, sql, args...)
}

func (e *explaining) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	e.note(ctx, sql, args)
	return e.pool.Query(ctx, sql, args...)
}

func (e *explaining) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	e.note(ctx, sql, args)
	return e.pool.QueryRow(ctx, sql, args...)
}

var _ checkpoint.DB = (*explaining)(nil)

// scrapeCost fills a fresh database with rows outbox rows that a 4-segment
// projection has not read, and returns the shared buffers one reading of
// the pipeline metrics touches.
func scrapeCost(t *testing.T, rows int) int64 {
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := pool.Exec(ctx, `
INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
SELECT 'Thing', 't-' || i, 'Touched', '{"n": 1}', 1 FROM generate_series(1, $1::int) i`, rows)
	require.NoError(t, err)
	require.NoError(t, checkpoint.Register(ctx, pool, "costly", 4, string(projectors.Park)))
	_, err = pool.Exec(ctx, `VACUUM ANALYZE readside.outbox`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `VACUUM ANALYZE readside.events`)
	require.NoError(t, err)

	db := &explaining{pool: pool, tb: t}
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(observe.NewPipelineCollector(db, -1)))
	m := promtest.Scrape(t, reg) // warms the caches
	require.Equal(t, 0.0, m["readside_pipeline_scrape_error"])
	require.InDelta(t, float64(rows), m["readside_outbox_rows"], float64(rows)/10, "outbox rows, exact or estimated")
	// Each segment counts the rows of its own buckets, a quarter of them.
	for s := range 4 {
		require.InDelta(t, float64(rows)/4, m[promtest.Segment("readside_projection_lag_events", "costly", s)], float64(rows)/10,
			"lag, exact or estimated from positions")
	}
	db.explain, db.statements = true, 0
	m = promtest.Scrape(t, reg)
	require.Equal(t, 0.0, m["readside_pipeline_scrape_error"])
	t.Logf("%d outbox rows: one reading ran %d statements touching %d shared buffers", rows, db.statements, db.buffers)
	return db.buffers
}

// TestScrapeCostDoesNotGrowWithBacklog: a /metrics scrape reads O(segments)
// state, not O(rows): with a thousand rows waiting or a million, it touches
// about the same number of buffers (it used to count the outbox, and count
// each segment's lag up to a million rows).
func TestScrapeCostDoesNotGrowWithBacklog(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a million events")
	}
	// Not parallel: the million-row insert would starve the package's
	// parallel tests, which wait on workers with deadlines.
	small := scrapeCost(t, 1_000)
	large := scrapeCost(t, 1_000_000)
	require.LessOrEqual(t, large, 2*small, "a scrape over 1M waiting rows costs %d buffers, over 1k %d", large, small)
}

// TestPipelineMetricsShareOneReading: scrapes within the TTL, concurrent or
// not, are served from one reading of the database.
func TestPipelineMetricsShareOneReading(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "shared", 2, string(projectors.Park)))
	appendThing(t, pool, 1)

	db := &explaining{pool: pool, tb: t}
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(observe.NewPipelineCollector(db, time.Hour)))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			_, err := reg.Gather()
			require.NoError(t, err)
		})
	}
	wg.Wait()
	one := db.statements
	require.Positive(t, one)

	appendThing(t, pool, 2)
	m := promtest.Scrape(t, reg)
	require.Equal(t, one, db.statements, "8 concurrent scrapes and a later one within the TTL: one reading")
	lag := func(m map[string]float64) float64 {
		return m[promtest.Segment("readside_projection_lag_events", "shared", 0)] + m[promtest.Segment("readside_projection_lag_events", "shared", 1)]
	}
	require.Equal(t, 1.0, lag(m), "the cached reading")

	uncached := prometheus.NewPedanticRegistry()
	require.NoError(t, uncached.Register(observe.NewPipelineCollector(db, -1)))
	m = promtest.Scrape(t, uncached)
	require.Equal(t, 2.0, lag(m), "a new reading")
}

// appendThing writes version v of aggregate Thing/a (the events table's
// trigger feeds the outbox).
func appendThing(t *testing.T, pool *pgxpool.Pool, v int) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
		VALUES ('Thing', 'a', 'Touched', '{}', $1)`, v)
	require.NoError(t, err)
}
