package projectors_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/internal/promtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

func TestPipelineMetricsLagGrowsWithoutWorkersAndDropsWhenCaughtUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	const name, segments = "lagrec", 2
	require.NoError(t, checkpoint.Register(ctx, pool, name, segments, string(projectors.Park)))

	reg := prometheus.NewPedanticRegistry()
	registerUncached(t, reg, pool)
	require.NoError(t, observe.RegisterPoolMetrics(reg, pool, "test"))
	families, err := reg.Gather()
	require.NoError(t, err)
	problems, err := promlint.NewWithMetricFamilies(families).Lint()
	require.NoError(t, err)
	require.Empty(t, problems, "metric names and help must follow Prometheus conventions")

	m := promtest.Scrape(t, reg)
	require.Equal(t, 0.0, m["readside_pipeline_scrape_error"])
	for s := range segments {
		require.Equal(t, 0.0, m[promtest.Segment("readside_projection_lag_events", name, s)], "empty outbox: no lag")
		require.Equal(t, 0.0, m[promtest.Segment("readside_projection_lag_seconds", name, s)])
		require.Equal(t, 0.0, m[promtest.Segment("readside_projection_segment_owned", name, s)], "no worker yet")
		require.Equal(t, 1.0, m[promtest.Segment("readside_projection_segment_running", name, s)])
	}
	require.Equal(t, 0.0, m["readside_fleet_live_workers"])
	require.Contains(t, m, `readside_pgxpool_max_conns{pool="test"}`)

	// No worker runs: every appended event is lag, and the seconds behind
	// grow with the clock, not with the (absent) worker's progress.
	for i := range 3 {
		appendEvents(t, pool, fmt.Sprintf("agg%d", i), 0, `{}`, `{}`)
	}
	m = promtest.Scrape(t, reg)
	head := m["readside_outbox_head_position"]
	require.Positive(t, head)
	require.Equal(t, 6.0, m["readside_outbox_rows"])
	require.Positive(t, m["readside_outbox_size_bytes"])
	// A segment counts the rows of its own buckets (it reads only those).
	own := make([]float64, segments)
	for i := range 3 {
		own[segmentOf(t, pool, fmt.Sprintf("agg%d", i), segments)] += 2
	}
	for s := range segments {
		require.Equal(t, own[s], m[promtest.Segment("readside_projection_lag_events", name, s)])
		require.Equal(t, 0.0, m[promtest.Segment("readside_projection_checkpoint_position", name, s)])
	}
	lagged := segmentOf(t, pool, "agg0", segments)
	first := m[promtest.Segment("readside_projection_lag_seconds", name, lagged)]
	eventually(t, 5*time.Second, "lag_seconds and stalled_seconds grow while no worker runs", func() bool {
		m := promtest.Scrape(t, reg)
		return m[promtest.Segment("readside_projection_lag_seconds", name, lagged)] > first+0.2 &&
			m[promtest.Segment("readside_projection_stalled_seconds", name, lagged)] > 0.2
	})
	appendEvents(t, pool, "agg0", 2, `{}`)
	m = promtest.Scrape(t, reg)
	require.Equal(t, own[lagged]+1, m[promtest.Segment("readside_projection_lag_events", name, lagged)], "lag events rise with the log")

	// A worker catches up: lag, seconds behind and stall drop to 0.
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{&recorder{name: name, segments: segments}},
		LeaseTTL: 2 * time.Second, Registerer: prometheus.NewRegistry()})
	// (A segment with no event of its own moves its checkpoint to the head
	// at the poll.)
	eventually(t, 10*time.Second, "lag drops to 0 once the worker has caught up", func() bool {
		m := promtest.Scrape(t, reg)
		for s := range segments {
			if m[promtest.Segment("readside_projection_lag_events", name, s)] != 0 || m[promtest.Segment("readside_projection_lag_seconds", name, s)] != 0 ||
				m[promtest.Segment("readside_projection_segment_owned", name, s)] != 1 ||
				m[promtest.Segment("readside_projection_checkpoint_position", name, s)] != m["readside_outbox_head_position"] {
				return false
			}
		}
		return true
	})
	m = promtest.Scrape(t, reg)
	var applied float64
	for s := range segments {
		require.Equal(t, 0.0, m[promtest.Segment("readside_projection_stalled_seconds", name, s)])
		require.Equal(t, m["readside_outbox_head_position"], m[promtest.Segment("readside_projection_checkpoint_position", name, s)])
		require.Equal(t, m["readside_outbox_head_position"], m[promtest.Segment("readside_projection_high_water_position", name, s)])
		applied += m[promtest.Segment("readside_projection_events_applied", name, s)]
	}
	require.Equal(t, 7.0, applied, "every event applied once, by exactly one segment")
	require.Equal(t, 1.0, m["readside_fleet_live_workers"])
	require.Equal(t, 0.0, m["readside_pipeline_scrape_error"])
}

func TestPipelineMetricsPausedAndDeadLetters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	reg := prometheus.NewPedanticRegistry()
	registerUncached(t, reg, pool)

	const name = "lagpoison"
	startWorker(t, projectors.Config{Pool: pool, LeaseTTL: 2 * time.Second, MaxAttempts: 1, RetryBackoff: time.Millisecond,
		Projections: []projectors.Projection{&recorder{name: name, segments: 1, failPoison: true}}})
	appendEvents(t, pool, "bad", 0, `{"poison": true}`, `{}`)
	appendEvents(t, pool, "good", 0, `{}`)
	eventually(t, 10*time.Second, "poison event and its successor parked, the rest applied", func() bool {
		m := promtest.Scrape(t, reg)
		return m[promtest.Segment("readside_projection_dead_letters", name, 0)] == 2 && m[promtest.Segment("readside_projection_lag_events", name, 0)] == 0
	})

	_, err := checkpoint.SetStatus(ctx, pool, name, checkpoint.Paused)
	require.NoError(t, err)
	appendEvents(t, pool, "good", 1, `{}`)
	eventually(t, 10*time.Second, "paused segment: not owned, lag and stall grow", func() bool {
		m := promtest.Scrape(t, reg)
		return m[promtest.Segment("readside_projection_segment_paused", name, 0)] == 1 &&
			m[promtest.Segment("readside_projection_segment_running", name, 0)] == 0 &&
			m[promtest.Segment("readside_projection_segment_owned", name, 0)] == 0 &&
			m[promtest.Segment("readside_projection_lag_events", name, 0)] == 1 &&
			m[promtest.Segment("readside_projection_stalled_seconds", name, 0)] > 0.1
	})
}

func TestPipelineMetricsReportScrapeErrors(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t, pgtest.NewDatabaseURL(t))
	reg := prometheus.NewPedanticRegistry()
	registerUncached(t, reg, pool)
	require.Equal(t, 0.0, promtest.Scrape(t, reg)["readside_pipeline_scrape_error"])

	// The database is gone: the scrape still succeeds (Prometheus keeps
	// the target up) and says so in readside_pipeline_scrape_error.
	pool.Close()
	m := promtest.Scrape(t, reg)
	require.Equal(t, 1.0, m["readside_pipeline_scrape_error"])
	for k := range m {
		require.False(t, strings.HasPrefix(k, "readside_projection_lag"), "no stale lag series without a database: %s", k)
	}
}

func TestPipelineMetricsRiverQueueDepth(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	reg := prometheus.NewPedanticRegistry()
	registerUncached(t, reg, pool)
	for k := range promtest.Scrape(t, reg) {
		require.False(t, strings.HasPrefix(k, "readside_river_"), "no queue registered yet: %s", k)
	}

	// A queue as a River client registers it, with two due jobs, one
	// running and one scheduled for later.
	_, err := pool.Exec(ctx, `INSERT INTO readside.river_queue (name) VALUES ($1)`, control.Queue)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO readside.river_job (args, kind, max_attempts, queue, state, scheduled_at)
		VALUES ('{}', 'test', 1, $1, 'available', now() - interval '30 seconds'),
		       ('{}', 'test', 1, $1, 'available', now()),
		       ('{}', 'test', 1, $1, 'running', now()),
		       ('{}', 'test', 1, $1, 'scheduled', now() + interval '1 hour')`, control.Queue)
	require.NoError(t, err)
	m := promtest.Scrape(t, reg)
	require.Equal(t, 0.0, m["readside_pipeline_scrape_error"])
	q := func(state string) string {
		return fmt.Sprintf("readside_river_jobs{queue=%q,state=%q}", control.Queue, state)
	}
	require.Equal(t, 2.0, m[q("available")])
	require.Equal(t, 1.0, m[q("running")])
	require.Equal(t, 1.0, m[q("scheduled")])
	require.Contains(t, m, q("retryable"), "every state is reported, 0 included")
	require.Equal(t, 0.0, m[q("retryable")])
	oldest := m[fmt.Sprintf("readside_river_oldest_available_seconds{queue=%q}", control.Queue)]
	require.InDelta(t, 30, oldest, 5)
}

// registerUncached registers the pipeline metrics without the cache, so that
// each scrape reads the state the test just wrote.
func registerUncached(t *testing.T, reg prometheus.Registerer, pool *pgxpool.Pool) {
	t.Helper()
	require.NoError(t, observe.RegisterPipelineMetricsConfig(reg,
		observe.PipelineMetricsConfig{Pool: pool, Logger: testLogger(t), CacheTTL: -1}))
}

// A planned operation is a series the alert rules are inhibited by: the
// reset or rebuild job queued or running, then the replay below the
// high-water mark.
func TestPipelineMetricsOperation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	reg := prometheus.NewPedanticRegistry()
	registerUncached(t, reg, pool)
	_, err := pool.Exec(ctx, `INSERT INTO readside.river_queue (name) VALUES ($1)`, control.Queue)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO readside.projections (name, segments) VALUES ('p', 1);
		INSERT INTO readside.checkpoints (projection, segment) VALUES ('p', 0)`)
	require.NoError(t, err)
	m := promtest.Scrape(t, reg)
	for _, kind := range []string{"reset", "rebuild", "replay"} {
		v, ok := m[`readside_projection_operation{kind="`+kind+`",projection="p"}`]
		require.True(t, ok, "present at 0 for the alert rules: %s", kind)
		require.Zero(t, v)
	}
	_, err = pool.Exec(ctx, `INSERT INTO readside.river_job (args, kind, max_attempts, queue, state, finalized_at)
		VALUES ('{"projection":"p","to":"start"}', 'readside_reset', 1, $1, 'available', NULL),
		       ('{"projection":"q"}', 'readside_rebuild', 1, $1, 'completed', now())`, control.Queue)
	require.NoError(t, err)
	m = promtest.Scrape(t, reg)
	require.Equal(t, 1.0, m[`readside_projection_operation{kind="reset",projection="p"}`])
	require.Zero(t, m[`readside_projection_operation{kind="rebuild",projection="p"}`])

	_, err = pool.Exec(ctx, `UPDATE readside.river_job SET state = 'completed', finalized_at = now()`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET high_txid = '5', high_position = 9 WHERE projection = 'p'`)
	require.NoError(t, err)
	m = promtest.Scrape(t, reg)
	require.Zero(t, m[`readside_projection_operation{kind="reset",projection="p"}`])
	require.Equal(t, 1.0, m[`readside_projection_operation{kind="replay",projection="p"}`])
}

// The read window's holder as a fleet running as an ordinary role sees it:
// an event writer of another role is listed, but its start is hidden, so
// readside_read_window_holder_age_unknown is 1 and the age is how long the
// collector has seen it (growing, never a silent 0); with pg_read_all_stats
// the age is the transaction's. Writers the fence refused are counted.
func TestPipelineMetricsWindowHolderForAnOrdinaryRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, dbURL)
	var role string
	require.NoError(t, pool.QueryRow(ctx, `SELECT 'fleet_' || substr(md5(random()::text), 1, 12)`).Scan(&role))
	_, err := pool.Exec(ctx, `CREATE ROLE `+role+` LOGIN; GRANT USAGE ON SCHEMA readside TO `+role+`;
		GRANT SELECT ON ALL TABLES IN SCHEMA readside TO `+role+`; GRANT SELECT ON readside.read_fence_refusals TO `+role)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), `DROP OWNED BY `+role+`; DROP ROLE IF EXISTS `+role)
	})
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	u.User = url.User(role)

	w, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = w.Rollback(ctx) }()
	_, err = outbox.Append(ctx, w, outbox.Aggregate{Type: "Thing", ID: "held"}, 0, []outbox.NewEvent{{Type: "Touched", Data: []byte(`{}`)}})
	require.NoError(t, err)

	reg := prometheus.NewPedanticRegistry()
	registerUncached(t, reg, pgtest.Pool(t, u.String()))
	m := promtest.Scrape(t, reg)
	require.Equal(t, 0.0, m["readside_pipeline_scrape_error"])
	require.Equal(t, 1.0, m["readside_read_window_holder_age_unknown"])
	first := m["readside_read_window_holder_age_seconds"]
	eventually(t, 10*time.Second, "the age seen grows", func() bool {
		return promtest.Scrape(t, reg)["readside_read_window_holder_age_seconds"] > first+0.2
	})

	_, err = pool.Exec(ctx, `GRANT pg_read_all_stats TO `+role)
	require.NoError(t, err)
	granted := prometheus.NewPedanticRegistry()
	registerUncached(t, granted, pgtest.Pool(t, u.String()))
	var xactAge float64
	require.NoError(t, w.QueryRow(ctx, `SELECT extract(epoch FROM now() - xact_start)::float8 FROM pg_stat_activity WHERE pid = pg_backend_pid()`).Scan(&xactAge))
	m = promtest.Scrape(t, granted)
	require.Equal(t, 0.0, m["readside_read_window_holder_age_unknown"])
	require.GreaterOrEqual(t, m["readside_read_window_holder_age_seconds"], xactAge)

	// A refusal: a transaction that took its xid before the fence passed it.
	require.Equal(t, 0.0, m["readside_read_fence_refusals_total"])
	_, err = pool.Exec(ctx, `CREATE TABLE app_rows (n int)`)
	require.NoError(t, err)
	early, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = early.Rollback(ctx) }()
	_, err = early.Exec(ctx, `INSERT INTO app_rows VALUES (1)`)
	require.NoError(t, err)
	var ex uint64
	require.NoError(t, early.QueryRow(ctx, `SELECT pg_current_xact_id()`).Scan(&ex))
	appendEvents(t, pool, "later", 0, `{}`)
	eventually(t, 10*time.Second, "the fence passes the early transaction", func() bool {
		_, err := outbox.ReadHead(ctx, pool)
		require.NoError(t, err)
		var f uint64
		require.NoError(t, pool.QueryRow(ctx, `SELECT coalesce(pg_sequence_last_value('readside.read_fence'), 0)`).Scan(&f))
		return f > ex
	})
	_, err = outbox.Append(ctx, early, outbox.Aggregate{Type: "Thing", ID: "early"}, 0, []outbox.NewEvent{{Type: "Touched", Data: []byte(`{}`)}})
	require.ErrorIs(t, err, outbox.ErrReadFence)
	require.Equal(t, 1.0, promtest.Scrape(t, granted)["readside_read_fence_refusals_total"])
}
