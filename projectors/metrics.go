package projectors

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the runtime's own counters and histograms. Lag is not here:
// it is derived from the database at scrape time (the pipeline collector,
// RegisterPipelineMetrics), so it stays true when workers die.
type metrics struct {
	eventsApplied *prometheus.CounterVec
	batches       *prometheus.CounterVec
	batchSize     *prometheus.HistogramVec
	batchDuration *prometheus.HistogramVec
	latency       *prometheus.HistogramVec
	retries       *prometheus.CounterVec
	parked        *prometheus.CounterVec
	claims        *prometheus.CounterVec
	losses        *prometheus.CounterVec
	fenced        *prometheus.CounterVec
	rewound       *prometheus.CounterVec
	owned         *prometheus.GaugeVec
	liveWorkers   prometheus.Gauge
}

// zero creates every series of the projections at 0, so that dashboards show
// 0 rather than "no data" on a healthy system.
func (m *metrics) zero(projections []string) {
	for _, p := range projections {
		m.eventsApplied.WithLabelValues(p)
		m.claims.WithLabelValues(p)
		m.losses.WithLabelValues(p)
		m.fenced.WithLabelValues(p)
		m.rewound.WithLabelValues(p)
		m.owned.WithLabelValues(p)
		for _, o := range []string{"committed", "retried", "fenced", "isolated", "halted"} {
			m.batches.WithLabelValues(p, o)
		}
		for _, r := range []string{"serialization", "deadlock", "lock_timeout", "timeout", "connection", "projection", "unknown"} {
			m.retries.WithLabelValues(p, r)
		}
		for _, r := range []string{"failed", "blocked"} {
			m.parked.WithLabelValues(p, r)
		}
	}
}

// newMetrics creates the runtime's metrics and registers them on reg (nil
// means none). It is long because it is a table, one entry per metric.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		eventsApplied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "readside_projector_events_applied_total",
			Help: "Events applied to read models (committed with their checkpoint).",
		}, []string{"projection"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "readside_projector_batches_total",
			Help: "Apply transactions by outcome: committed, retried (transient error), fenced (lease lost), isolated (a failing event was split out), halted.",
		}, []string{"projection", "outcome"}),
		batchSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "readside_projector_batch_size_events",
			Help:    "Events per committed batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}, []string{"projection"}),
		batchDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "readside_projector_batch_duration_seconds",
			Help:    "Time from BEGIN to COMMIT of an apply transaction.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"projection"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "readside_projector_end_to_end_latency_seconds",
			Help:    "Time from an event's outbox insert to the commit that applied it.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
		}, []string{"projection"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "readside_projector_retries_total",
			Help: "Batches retried, by reason (serialization, deadlock, lock_timeout, timeout, connection, projection).",
		}, []string{"projection", "reason"}),
		parked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "readside_projector_dead_letters_parked_total",
			Help: "Events parked in the dead-letter table: failed (its apply failed) or blocked (behind a failed event of its aggregate).",
		}, []string{"projection", "reason"}),
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "readside_projector_lease_claims_total",
			Help: "Segment leases claimed by this worker.",
		}, []string{"projection"}),
		losses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "readside_projector_lease_losses_total",
			Help: "Segment leases this worker lost (expired, taken over, reset, paused) rather than released.",
		}, []string{"projection"}),
		fenced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "readside_projector_fenced_commits_total",
			Help: "Apply transactions refused because the lease was no longer this worker's.",
		}, []string{"projection"}),
		rewound: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "readside_projector_checkpoint_rewinds_total",
			Help: "Segments whose stored checkpoint was found behind what this worker had applied (a crash of the server undid asynchronously committed batches), read again from there.",
		}, []string{"projection"}),
		owned: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "readside_projector_segments_owned",
			Help: "Segments this worker holds a lease on.",
		}, []string{"projection"}),
		liveWorkers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "readside_projector_live_workers",
			Help: "Live workers in the fleet as this worker last saw it.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.eventsApplied, m.batches, m.batchSize, m.batchDuration, m.latency,
		m.retries, m.parked, m.claims, m.losses, m.fenced, m.rewound, m.owned, m.liveWorkers} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// forget deletes every series of a projection this worker no longer runs
// (a rebuild's copy after the switch), so that it does not linger on
// /metrics with its last values.
func (m *metrics) forget(projection string) {
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{m.eventsApplied, m.batches, m.batchSize, m.batchDuration, m.latency, m.retries, m.parked, m.claims, m.losses, m.fenced, m.rewound, m.owned} {
		v.DeletePartialMatch(prometheus.Labels{"projection": projection})
	}
}
