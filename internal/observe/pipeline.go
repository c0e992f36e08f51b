package observe

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/outbox"
)

// LagScrapeTimeout bounds the queries a scrape of the pipeline collector
// runs; a scrape that times out reports readside_pipeline_scrape_error 1.
const LagScrapeTimeout = 5 * time.Second

// PipelineCacheTTLDefault is how long one reading of pipeline state serves
// later scrapes (see PipelineMetricsConfig.CacheTTL).
const PipelineCacheTTLDefault = time.Second

// PipelineMetricsConfig configures RegisterPipelineMetricsConfig.
type PipelineMetricsConfig struct {
	// Pool is the database the state is read from, in readside's schema
	// (a dbschema handle; a plain pool means the default schema).
	Pool checkpoint.DB
	// Logger logs failed readings; nil means none.
	Logger *slog.Logger
	// CacheTTL is how long one reading serves later scrapes: a fleet of N
	// workers scraped every 15s by two Prometheus servers reads once per
	// worker per TTL, not per scrape. Concurrent scrapes always share one
	// reading. 0 means PipelineCacheTTLDefault; a negative value reads on
	// every scrape that does not overlap another.
	CacheTTL time.Duration
}

// pipelineCollector derives lag and pipeline health from database state at
// scrape time, so that a dead or stuck fleet shows growing lag rather than a
// frozen last value. Every worker exports the same series from the same
// database: aggregate them with max by (projection, segment), never sum.
//
// A reading costs O(segments), whatever the backlog: per segment, a count of
// at most LagCountCap rows and index probes (TestScrapeCostDoesNotGrowWithBacklog).
type pipelineCollector struct {
	db  checkpoint.DB
	log *slog.Logger
	ttl time.Duration

	mu      sync.Mutex // held while reading: concurrent scrapes wait for one reading
	readAt  time.Time
	reading []prometheus.Metric
	// The window holder this collector has seen, and since when: its age
	// when this role cannot see the holder's start (a lower bound).
	holderXID  uint64
	holderSeen time.Time

	lagEvents, lagSeconds, stalled, cursorPos, highPos, applied, parked, owned, running, paused, failed *prometheus.Desc
	headPos, liveWorkers, holderAge, holderUnknown, fenceRefusals, outboxRows, outboxBytes, scrapeErr   *prometheus.Desc
	riverJobs, riverOldest                                                                              *prometheus.Desc
	operation                                                                                           *prometheus.Desc
	verifyResult, verifyDiffs, verifyLast, verifyLastGood                                               *prometheus.Desc
}

// RegisterPipelineMetrics registers, on reg, the database-derived lag and
// health metrics, with the default cache TTL.
func RegisterPipelineMetrics(reg prometheus.Registerer, pool checkpoint.DB, log *slog.Logger) error {
	return RegisterPipelineMetricsConfig(reg, PipelineMetricsConfig{Pool: pool, Logger: log})
}

// RegisterPipelineMetricsConfig registers, on reg, the database-derived lag
// and health metrics.
func RegisterPipelineMetricsConfig(reg prometheus.Registerer, cfg PipelineMetricsConfig) error {
	if cfg.Pool == nil {
		return errors.New("observe: PipelineMetricsConfig.Pool is required")
	}
	return reg.Register(newPipelineCollector(cfg.Pool, cfg.Logger, cfg.CacheTTL))
}

func newPipelineCollector(db checkpoint.DB, log *slog.Logger, ttl time.Duration) *pipelineCollector {
	seg := []string{"projection", "segment"}
	return &pipelineCollector{db: db, log: log, ttl: cmp.Or(ttl, PipelineCacheTTLDefault),
		lagEvents:   prometheus.NewDesc("readside_projection_lag_events", "Committed outbox rows of the segment's buckets after its checkpoint (exact up to 1000, estimated from event ids above).", seg, nil),
		lagSeconds:  prometheus.NewDesc("readside_projection_lag_seconds", "Age of the oldest committed outbox row after the segment's checkpoint; 0 when caught up.", seg, nil),
		stalled:     prometheus.NewDesc("readside_projection_stalled_seconds", "Time since the segment's checkpoint last moved while events wait; 0 when caught up.", seg, nil),
		cursorPos:   prometheus.NewDesc("readside_projection_checkpoint_position", "Position (event id) of the segment's checkpoint.", seg, nil),
		highPos:     prometheus.NewDesc("readside_projection_high_water_position", "Furthest position the segment ever committed (replays stay below it).", seg, nil),
		applied:     prometheus.NewDesc("readside_projection_events_applied", "Events the segment has applied since registration, replays included (from the checkpoint row).", seg, nil),
		parked:      prometheus.NewDesc("readside_projection_dead_letters", "Events of the segment parked in the dead-letter table.", seg, nil),
		owned:       prometheus.NewDesc("readside_projection_segment_owned", "1 when a worker holds an unexpired lease on the segment.", seg, nil),
		running:     prometheus.NewDesc("readside_projection_segment_running", "1 when the segment's status is running.", seg, nil),
		paused:      prometheus.NewDesc("readside_projection_segment_paused", "1 when the segment is paused by an operator.", seg, nil),
		failed:      prometheus.NewDesc("readside_projection_segment_failed", "1 when the segment halted on a failing event (policy halt).", seg, nil),
		headPos:     prometheus.NewDesc("readside_outbox_head_position", "Position of the last committed outbox row.", nil, nil),
		liveWorkers: prometheus.NewDesc("readside_fleet_live_workers", "Workers whose heartbeat is younger than their lease TTL.", nil, nil),
		holderAge: prometheus.NewDesc("readside_read_window_holder_age_seconds",
			"Age of the oldest event-writing transaction of the database, which holds the read window back; 0 when none. "+
				"When the role cannot see its start (readside_read_window_holder_age_unknown 1), how long this process has seen it: a lower bound.", nil, nil),
		holderUnknown: prometheus.NewDesc("readside_read_window_holder_age_unknown",
			"1 when a transaction holds the read window whose start, state and query pg_stat_activity hides from this role "+
				"(another role's session; grant pg_read_all_stats or pg_monitor); the age shown is then a lower bound.", nil, nil),
		fenceRefusals: prometheus.NewDesc("readside_read_fence_refusals_total",
			"Transactions the events trigger refused (SQLSTATE 40001, readside_read_fence) because they wrote their first event "+
				"after readers had passed their xid; they retry. Counted in the database; reset by a database crash.", nil, nil),
		outboxRows:  prometheus.NewDesc("readside_outbox_rows", "Rows in the outbox table (exact up to 1000, above that an estimate from the table's size and statistics).", nil, nil),
		outboxBytes: prometheus.NewDesc("readside_outbox_size_bytes", "Total size of the outbox table with indexes and TOAST.", nil, nil),
		scrapeErr:   prometheus.NewDesc("readside_pipeline_scrape_error", "1 when the last scrape of pipeline state failed.", nil, nil),
		riverJobs: prometheus.NewDesc("readside_river_jobs", "Jobs of each River queue (control operations: reset, rebuild, dead-letter retry, pruning; "+
			"side effects) by state: available, scheduled, running, retryable.", []string{"queue", "state"}, nil),
		operation: prometheus.NewDesc("readside_projection_operation",
			"1 while a planned operation runs on the projection: kind reset or rebuild (its control job is queued or running), "+
				"replay (a segment is below its high-water mark after a reset). Lag alerts are inhibited by it.", []string{"projection", "kind"}, nil),
		verifyResult: prometheus.NewDesc("readside_verify_last_result",
			"1 for the result of the projection's latest verification (projector verify): ok, differs, repaired or error.", []string{"projection", "result"}, nil),
		verifyDiffs: prometheus.NewDesc("readside_verify_differences",
			"Aggregates (and tables without an aggregate column) that differed from the log at the projection's latest verification.", []string{"projection"}, nil),
		verifyLast: prometheus.NewDesc("readside_verify_last_timestamp_seconds",
			"When the projection's latest verification finished (Unix time).", []string{"projection"}, nil),
		verifyLastGood: prometheus.NewDesc("readside_verify_last_success_timestamp_seconds",
			"When the projection's latest verification that found it the same as its log (or repaired it) finished (Unix time); 0 when none did.", []string{"projection"}, nil),
		riverOldest: prometheus.NewDesc("readside_river_oldest_available_seconds",
			"Age of the oldest job of the River queue that is due and waits for a worker; 0 when none.", []string{"queue"}, nil),
	}
}

func (c *pipelineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.lagEvents, c.lagSeconds, c.stalled, c.cursorPos, c.highPos, c.applied, c.parked,
		c.owned, c.running, c.paused, c.failed, c.headPos, c.liveWorkers, c.holderAge, c.holderUnknown, c.fenceRefusals, c.outboxRows, c.outboxBytes, c.scrapeErr,
		c.riverJobs, c.riverOldest, c.operation, c.verifyResult, c.verifyDiffs, c.verifyLast, c.verifyLastGood} {
		ch <- d
	}
}

func (c *pipelineCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reading == nil || c.ttl < 0 || time.Since(c.readAt) >= c.ttl {
		c.reading, c.readAt = c.read(), time.Now()
	}
	for _, m := range c.reading {
		ch <- m
	}
}

// read reads pipeline state once. A failed reading keeps none of its
// series but readside_pipeline_scrape_error.
func (c *pipelineCollector) read() []prometheus.Metric {
	ctx, cancel := context.WithTimeout(context.Background(), LagScrapeTimeout)
	defer cancel()
	ch := make(chan prometheus.Metric, 64)
	var out []prometheus.Metric
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range ch {
			out = append(out, m)
		}
	}()
	err := c.collect(ctx, ch)
	close(ch)
	<-done
	failed := 0.0
	if err != nil {
		out, failed = out[:0], 1
		if c.log != nil {
			c.log.Warn("metrics: reading pipeline state failed", "err", err)
		}
	}
	return append(out, prometheus.MustNewConstMetric(c.scrapeErr, prometheus.GaugeValue, failed))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *pipelineCollector) collect(ctx context.Context, ch chan<- prometheus.Metric) error {
	segs, err := Status(ctx, c.db)
	if err != nil {
		return err
	}
	g := prometheus.GaugeValue
	for _, s := range segs {
		l := []string{s.Projection, strconv.Itoa(s.Segment)}
		ch <- prometheus.MustNewConstMetric(c.lagEvents, g, float64(s.LagEvents), l...)
		ch <- prometheus.MustNewConstMetric(c.lagSeconds, g, s.LagSeconds, l...)
		ch <- prometheus.MustNewConstMetric(c.stalled, g, s.StalledSeconds, l...)
		ch <- prometheus.MustNewConstMetric(c.cursorPos, g, float64(s.Cursor.Position), l...)
		ch <- prometheus.MustNewConstMetric(c.highPos, g, float64(s.HighWater.Position), l...)
		ch <- prometheus.MustNewConstMetric(c.applied, g, float64(s.EventsApplied), l...)
		ch <- prometheus.MustNewConstMetric(c.parked, g, float64(s.Parked), l...)
		ch <- prometheus.MustNewConstMetric(c.owned, g, b2f(s.OwnerLive), l...)
		ch <- prometheus.MustNewConstMetric(c.running, g, b2f(s.Status == "running"), l...)
		ch <- prometheus.MustNewConstMetric(c.paused, g, b2f(s.Status == "paused"), l...)
		ch <- prometheus.MustNewConstMetric(c.failed, g, b2f(s.Status == "failed"), l...)
	}
	head, err := outbox.ReadHead(ctx, c.db)
	if err != nil {
		return err
	}
	ch <- prometheus.MustNewConstMetric(c.headPos, g, float64(head.Latest.Position))
	var live int
	var rows, estimate, bytes float64
	// Outbox rows: counted up to outboxCountCap, else the planner's own
	// estimate (tuples per page from the last ANALYZE times the pages the
	// table has now), so the reading does not grow with the table.
	if err := c.db.QueryRow(ctx, `SELECT (SELECT count(*) FROM readside.workers WHERE heartbeat_at > now() - lease_ttl_seconds * interval '1 second'),
		(SELECT count(*) FROM (SELECT 1 FROM readside.outbox LIMIT $1 + 1) x)::float8,
		(SELECT CASE WHEN c.relpages > 0 AND c.reltuples > 0
		             THEN c.reltuples / c.relpages * (pg_relation_size(c.oid) / current_setting('block_size')::float8)
		             ELSE 0 END
		   FROM pg_class c WHERE c.oid = 'readside.outbox'::regclass)::float8,
		pg_total_relation_size('readside.outbox')::float8`, outboxCountCap).Scan(&live, &rows, &estimate, &bytes); err != nil {
		return err
	}
	if rows > outboxCountCap {
		rows = max(rows, estimate)
	}
	ch <- prometheus.MustNewConstMetric(c.liveWorkers, g, float64(live))
	ch <- prometheus.MustNewConstMetric(c.outboxRows, g, rows)
	ch <- prometheus.MustNewConstMetric(c.outboxBytes, g, bytes)
	if err := c.collectHolder(ctx, ch); err != nil {
		return err
	}
	if err := c.collectVerifications(ctx, ch); err != nil {
		return err
	}
	return c.collectRiver(ctx, ch)
}

// collectVerifications reports each projection's latest verification
// (readside.verifications): two index probes per registered projection.
// A projection never verified has no series.
func (c *pipelineCollector) collectVerifications(ctx context.Context, ch chan<- prometheus.Metric) error {
	rows, err := c.db.Query(ctx, `
SELECT p.name, l.result, l.differing, extract(epoch FROM l.finished_at)::float8, coalesce(extract(epoch FROM s.finished_at), 0)::float8
  FROM readside.projections p
 CROSS JOIN LATERAL (SELECT v.result, v.differing, v.finished_at FROM readside.verifications v
                      WHERE v.projection = p.name ORDER BY v.finished_at DESC LIMIT 1) l
  LEFT JOIN LATERAL (SELECT v.finished_at FROM readside.verifications v
                      WHERE v.projection = p.name AND v.result IN ('ok', 'repaired') ORDER BY v.finished_at DESC LIMIT 1) s ON true
 WHERE p.rebuild_of IS NULL
 ORDER BY 1`)
	if err != nil {
		return fmt.Errorf("verifications: %w", err)
	}
	defer rows.Close()
	g := prometheus.GaugeValue
	for rows.Next() {
		var projection, result string
		var differing int
		var last, good float64
		if err := rows.Scan(&projection, &result, &differing, &last, &good); err != nil {
			return fmt.Errorf("verifications: %w", err)
		}
		ch <- prometheus.MustNewConstMetric(c.verifyResult, g, 1, projection, result)
		ch <- prometheus.MustNewConstMetric(c.verifyDiffs, g, float64(differing), projection)
		ch <- prometheus.MustNewConstMetric(c.verifyLast, g, last, projection)
		ch <- prometheus.MustNewConstMetric(c.verifyLastGood, g, good, projection)
	}
	return rows.Err()
}

// collectHolder reports the read window's holder: the oldest
// event-writing transaction (any role may list them), its age (what
// pg_stat_activity shows this role, or, hidden, how long this collector
// has seen it), and the writers the fence refused.
func (c *pipelineCollector) collectHolder(ctx context.Context, ch chan<- prometheus.Metric) error {
	holder, err := outbox.WindowHolder(ctx, c.db)
	if err != nil {
		return err
	}
	now := time.Now()
	age, unknown := 0.0, 0.0
	switch {
	case holder == nil:
		c.holderXID = 0
	case c.holderXID != holder.TxID:
		c.holderXID, c.holderSeen = holder.TxID, now
		fallthrough
	default:
		age = holder.Age.Seconds()
		if holder.AgeUnknown {
			age, unknown = now.Sub(c.holderSeen).Seconds(), 1
		}
	}
	var refused float64
	if err := c.db.QueryRow(ctx, `SELECT coalesce(pg_sequence_last_value('readside.read_fence_refusals'), 0)::float8`).Scan(&refused); err != nil {
		return fmt.Errorf("read fence refusals: %w", err)
	}
	g := prometheus.GaugeValue
	ch <- prometheus.MustNewConstMetric(c.holderAge, g, age)
	ch <- prometheus.MustNewConstMetric(c.holderUnknown, g, unknown)
	ch <- prometheus.MustNewConstMetric(c.fenceRefusals, prometheus.CounterValue, refused)
	return nil
}

// outboxCountCap is up to where readside_outbox_rows is an exact count.
const outboxCountCap = 1_000

// riverStates are the states of a job that has not finished: the queue's
// depth. Every registered queue reports each of them, 0 included, so that
// a drained queue shows 0 rather than no data.
var riverStates = []string{"available", "scheduled", "running", "retryable"}

// collectRiver reports the depth of every River queue a client registered
// (river_queue, a bounded set named in code) from database state, like the
// lag: a control plane with no live client shows its jobs piling up.
func (c *pipelineCollector) collectRiver(ctx context.Context, ch chan<- prometheus.Metric) error {
	rows, err := c.db.Query(ctx, `
SELECT q.name, s.state, count(j.id)::float8,
       coalesce(extract(epoch FROM now() - min(j.scheduled_at) FILTER (WHERE s.state = 'available')), 0)::float8
  FROM readside.river_queue q
 CROSS JOIN unnest($1::text[]) AS s(state)
  LEFT JOIN readside.river_job j ON j.queue = q.name AND j.state::text = s.state
 GROUP BY q.name, s.state
 ORDER BY q.name, s.state`, riverStates)
	if err != nil {
		return fmt.Errorf("river queues: %w", err)
	}
	defer rows.Close()
	g := prometheus.GaugeValue
	for rows.Next() {
		var queue, state string
		var n, oldest float64
		if err := rows.Scan(&queue, &state, &n, &oldest); err != nil {
			return fmt.Errorf("river queues: %w", err)
		}
		ch <- prometheus.MustNewConstMetric(c.riverJobs, g, n, queue, state)
		if state == "available" {
			ch <- prometheus.MustNewConstMetric(c.riverOldest, g, max(0, oldest), queue)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("river queues: %w", err)
	}
	return c.collectOperations(ctx, ch)
}

// collectOperations reports, for every registered projection, the planned
// operations in progress (1) or not (0), so that alert rules do not page
// for the lag they cause; the 0s keep the series present for the rules.
func (c *pipelineCollector) collectOperations(ctx context.Context, ch chan<- prometheus.Metric) error {
	rows, err := c.db.Query(ctx, `
SELECT p.name, k.kind,
       CASE k.kind
         WHEN 'replay' THEN EXISTS (SELECT 1 FROM readside.checkpoints c WHERE c.projection = p.name
                                      AND (c.cursor_txid, c.cursor_position) < (c.high_txid, c.high_position))
         ELSE EXISTS (SELECT 1 FROM readside.river_job j WHERE j.kind = 'readside_' || k.kind AND j.args->>'projection' = p.name
                        AND j.state::text = ANY ($1::text[]))
       END
  FROM readside.projections p CROSS JOIN unnest(ARRAY['reset', 'rebuild', 'replay']) AS k(kind)
 ORDER BY 1, 2`, riverStates)
	if err != nil {
		return fmt.Errorf("operations: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var projection, kind string
		var on bool
		if err := rows.Scan(&projection, &kind, &on); err != nil {
			return fmt.Errorf("operations: %w", err)
		}
		ch <- prometheus.MustNewConstMetric(c.operation, prometheus.GaugeValue, b2f(on), projection, kind)
	}
	return rows.Err()
}
