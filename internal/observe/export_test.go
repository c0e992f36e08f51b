package observe

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/readside/readside/internal/checkpoint"
)

// NewPipelineCollector is the pipeline collector on any DB (the scrape-cost
// test passes one that explains every statement).
func NewPipelineCollector(db checkpoint.DB, ttl time.Duration) prometheus.Collector {
	return newPipelineCollector(db, nil, ttl)
}
