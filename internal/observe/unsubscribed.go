package observe

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/projectors"
)

// UnsubscribedCountCap is how many events UnsubscribedEvents counts per
// aggregate type: enough to tell one stray event from a writer that keeps
// writing them, and cheap on any log.
const UnsubscribedCountCap = 1_000

// unsubscribedTypesMax bounds how many distinct aggregate types one reading
// examines (and so the metric's label values).
const unsubscribedTypesMax = 64

// UnsubscribedType is an aggregate type of the events table that none of
// the given projections takes: its events are accepted by the log and then
// passed over by every projection, never applied, never parked.
type UnsubscribedType struct {
	AggregateType string `json:"aggregate_type"`
	// Events counts its events, up to UnsubscribedCountCap.
	Events int64 `json:"events"`
}

// unsubscribedSQL walks the distinct aggregate types with one index probe
// each (a loose index scan on events_aggregate_version_key) and counts the
// events of the types nobody takes, capped: its cost does not grow with the
// log.
const unsubscribedSQL = `
WITH RECURSIVE t(aggregate_type, n) AS (
    (SELECT aggregate_type, 1 FROM readside.events ORDER BY aggregate_type LIMIT 1)
    UNION ALL
    SELECT (SELECT e.aggregate_type FROM readside.events e WHERE e.aggregate_type > t.aggregate_type
             ORDER BY e.aggregate_type LIMIT 1), t.n + 1
      FROM t WHERE t.aggregate_type IS NOT NULL AND t.n < $3
)
SELECT t.aggregate_type,
       (SELECT count(*) FROM (SELECT FROM readside.events e WHERE e.aggregate_type = t.aggregate_type LIMIT $2) c)
  FROM t
 WHERE t.aggregate_type IS NOT NULL AND NOT (t.aggregate_type = ANY ($1::text[]))
 ORDER BY 1`

// UnsubscribedEvents returns the aggregate types of the events table that
// none of projections subscribes to (Spec.AggregateTypes), such as a
// writer's typo ('order' for 'Order') or a type no projection was written
// for yet. A projection that takes every aggregate type takes them all, and
// the result is then empty. Event-type filters (Spec.EventTypes) are a
// projection's deliberate choice and are not considered.
func UnsubscribedEvents(ctx context.Context, db checkpoint.DB, projections ...projectors.Projection) ([]UnsubscribedType, error) {
	taken := []string{}
	for _, p := range projections {
		s := p.Spec()
		if len(s.AggregateTypes) == 0 {
			return nil, nil
		}
		taken = append(taken, s.AggregateTypes...)
	}
	rows, err := db.Query(ctx, unsubscribedSQL, taken, UnsubscribedCountCap, unsubscribedTypesMax)
	if err != nil {
		return nil, fmt.Errorf("unsubscribed events: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[UnsubscribedType])
	if err != nil {
		return nil, fmt.Errorf("unsubscribed events: %w", err)
	}
	return out, nil
}

// RegisterUnsubscribedMetrics registers, on reg, what UnsubscribedEvents
// reads for projections, at scrape time:
// readside_unsubscribed_events{aggregate_type} and
// readside_unsubscribed_aggregate_types. Every worker exports the same
// series from the same database: aggregate with max, never sum.
func RegisterUnsubscribedMetrics(reg prometheus.Registerer, pool checkpoint.DB, log *slog.Logger, projections ...projectors.Projection) error {
	return reg.Register(&unsubscribedCollector{pool: pool, log: log, projections: projections,
		events: prometheus.NewDesc("readside_unsubscribed_events",
			fmt.Sprintf("Events of an aggregate type that no projection of this binary takes: accepted, never applied, never parked (counted up to %d).", UnsubscribedCountCap),
			[]string{"aggregate_type"}, nil),
		types: prometheus.NewDesc("readside_unsubscribed_aggregate_types",
			"Aggregate types in the events table that no projection of this binary takes; -1 when the reading failed.", nil, nil),
	})
}

type unsubscribedCollector struct {
	pool          checkpoint.DB
	log           *slog.Logger
	projections   []projectors.Projection
	events, types *prometheus.Desc
}

func (c *unsubscribedCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.events
	ch <- c.types
}

func (c *unsubscribedCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), LagScrapeTimeout)
	defer cancel()
	got, err := UnsubscribedEvents(ctx, c.pool, c.projections...)
	if err != nil {
		if c.log != nil {
			c.log.Warn("metrics: reading unsubscribed events failed", "err", err)
		}
		ch <- prometheus.MustNewConstMetric(c.types, prometheus.GaugeValue, -1)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.types, prometheus.GaugeValue, float64(len(got)))
	for _, u := range got {
		ch <- prometheus.MustNewConstMetric(c.events, prometheus.GaugeValue, float64(u.Events), u.AggregateType)
	}
}
