package aggregate

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/readside/readside/outbox"
)

// metrics are the writer's append metrics, labelled by aggregate type (a
// bounded set: the domain's aggregates). A nil *metrics records nothing.
type metrics struct {
	appends   *prometheus.CounterVec
	events    *prometheus.CounterVec
	conflicts *prometheus.CounterVec
	fenced    *prometheus.CounterVec
	duration  *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		appends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "readside_writer_appends_total",
			Help: "Committed command transactions that appended events.",
		}, []string{"aggregate_type"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "readside_writer_events_total",
			Help: "Events appended by committed command transactions.",
		}, []string{"aggregate_type"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "readside_writer_conflicts_total",
			Help: "Optimistic concurrency conflicts, retried or not.",
		}, []string{"aggregate_type"}),
		fenced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "readside_writer_read_fence_refusals_total",
			Help: "Conflicts that were refusals by the read fence (the transaction wrote its first event after readers had passed its xid), retried or not; also counted in readside_writer_conflicts_total.",
		}, []string{"aggregate_type"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "readside_writer_append_duration_seconds",
			Help:    "Time to execute a command that appended events: load, decide, append and commit, including conflict retries.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5ms .. ~4s
		}, []string{"aggregate_type"}),
	}
	for _, c := range []prometheus.Collector{m.appends, m.events, m.conflicts, m.fenced, m.duration} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) appended(aggType string, events int, d time.Duration) {
	if m == nil {
		return
	}
	m.appends.WithLabelValues(aggType).Inc()
	m.events.WithLabelValues(aggType).Add(float64(events))
	m.duration.WithLabelValues(aggType).Observe(d.Seconds())
}

func (m *metrics) conflict(aggType string, err error) {
	if m == nil {
		return
	}
	m.conflicts.WithLabelValues(aggType).Inc()
	if errors.Is(err, outbox.ErrReadFence) {
		m.fenced.WithLabelValues(aggType).Inc()
	}
}
