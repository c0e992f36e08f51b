// Package faults holds readside's fault-injection suite (issue 7,
// "Reliability"). It has no code of its own: everything is in its tests.
//
// The suite starts a disposable PostgreSQL cluster (internal/pgtemp, so the
// server itself can be restarted), builds cmd/projector and cmd/writer, and
// runs `writer load` against three `projector run` processes while it
// SIGKILLs projectors, crashes and restarts PostgreSQL (immediate shutdown), SIGSTOPs a
// lease holder past its lease, injects malformed and unknown-type events
// through the SQL contract and terminates random backends; meanwhile an
// operator scales three read models down and up with `projector scale
// --wait`, run again whenever a fault cuts it off. Afterwards it checks that
// nothing was lost or applied twice, that each scaled projection has the
// segment count of its last scale, and prints the figures.
//
// TestFleetThroughPgBouncer runs the same checks on a fleet of four
// `projector run --pgbouncer` processes and `writer load` that reach the
// server only through a real PgBouncer in transaction pooling mode, with a
// SIGKILL, injected bad events and a scale (issue 12 item 5). It skips when
// pgbouncer is not installed, and fails instead when CI is set.
//
//	go test -race -count=1 -run TestFaults -v ./internal/faults/          # short form (CI)
//	READSIDE_FAULTS=long go test -count=1 -run TestFaults -v -timeout 30m ./internal/faults/
package faults
