// Package modeltest holds readside's model-based test: rapid generates
// histories of writes (outbox.Append and the SQL contract in every statement
// shape, savepoints, rollbacks, transactions held open, early xids),
// projector runs (with crashes and lost leases), dead-letter operations,
// resets, prunes and rebuilds, runs them against a real PostgreSQL, and
// compares the read models, counters, dead letters and side effects with an
// in-memory model after every step that can change them. A failing history
// is shrunk to a short one and printed step by step.
//
// The short form runs in `make test`; `make model` runs the long form
// (READSIDE_MODEL=long, or -rapid.checks=N).
package modeltest
