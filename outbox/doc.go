// Package outbox is both ends of readside's log.
//
// The writer side, Append, inserts an aggregate's new events inside the
// caller's transaction; a trigger on the events table writes one outbox row
// per event, enforces the per-aggregate ordering rule and notifies listeners
// at commit. Writers outside Go get the same by inserting into events with
// plain SQL (see the README's SQL contract).
//
// The reader side, Fetch, returns the next batch after a Cursor. Reading is
// gap-safe by the xid8 window: a batch holds only rows whose writing
// transaction id is below the read bound of the reading statement's snapshot
// (readside_read_bound), ordered by (txid, position), so a transaction that
// commits late can never land behind a cursor that has already passed it.
// Only event-writing transactions hold the bound back: the events trigger
// registers them and refuses, with a retryable 40001 (ErrReadFence), a
// transaction whose xid readers have already passed (the read fence; the
// README's Guarantees give the argument). An event writer left open holds
// the window until it ends; WindowHolder names it.
package outbox
