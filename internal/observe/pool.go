package observe

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// poolCollector exports pgxpool statistics.
type poolCollector struct {
	pool                                                   *pgxpool.Pool
	acquired, idle, total, max, acquires, wait, emptyWaits *prometheus.Desc
}

// RegisterPoolMetrics registers the pool's statistics on reg as
// readside_pgxpool_*, labelled with the pool's role (e.g. "projector").
func RegisterPoolMetrics(reg prometheus.Registerer, pool *pgxpool.Pool, role string) error {
	l := prometheus.Labels{"pool": role}
	return reg.Register(&poolCollector{pool: pool,
		acquired:   prometheus.NewDesc("readside_pgxpool_acquired_conns", "Connections in use.", nil, l),
		idle:       prometheus.NewDesc("readside_pgxpool_idle_conns", "Idle connections.", nil, l),
		total:      prometheus.NewDesc("readside_pgxpool_total_conns", "Open connections.", nil, l),
		max:        prometheus.NewDesc("readside_pgxpool_max_conns", "Pool size limit.", nil, l),
		acquires:   prometheus.NewDesc("readside_pgxpool_acquires_total", "Connections acquired.", nil, l),
		wait:       prometheus.NewDesc("readside_pgxpool_acquire_wait_seconds_total", "Time spent waiting for a connection.", nil, l),
		emptyWaits: prometheus.NewDesc("readside_pgxpool_empty_acquires_total", "Acquires that had to wait for a connection.", nil, l),
	})
}

func (p *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{p.acquired, p.idle, p.total, p.max, p.acquires, p.wait, p.emptyWaits} {
		ch <- d
	}
}

func (p *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := p.pool.Stat()
	g, c := prometheus.GaugeValue, prometheus.CounterValue
	ch <- prometheus.MustNewConstMetric(p.acquired, g, float64(s.AcquiredConns()))
	ch <- prometheus.MustNewConstMetric(p.idle, g, float64(s.IdleConns()))
	ch <- prometheus.MustNewConstMetric(p.total, g, float64(s.TotalConns()))
	ch <- prometheus.MustNewConstMetric(p.max, g, float64(s.MaxConns()))
	ch <- prometheus.MustNewConstMetric(p.acquires, c, float64(s.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(p.wait, c, s.AcquireDuration().Seconds())
	ch <- prometheus.MustNewConstMetric(p.emptyWaits, c, float64(s.EmptyAcquireCount()))
}
