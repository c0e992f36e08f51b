// Package observe is the observation side of a projector fleet: it reads
// database state and never writes it, so what it reports stays true when
// workers die. Status lists every segment with its lag, owner and dead
// letters (what `projector status` prints); RegisterPipelineMetrics exports
// the same state as Prometheus metrics at scrape time; RegisterPoolMetrics
// exports a pgxpool's statistics; UnsubscribedEvents finds the aggregate
// types that no projection takes.
package observe
