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
// transaction id is below the reading snapshot's xmin, ordered by
// (txid, position), so a transaction that commits late can never land behind
// a cursor that has already passed it. The price is that one long-running
// write transaction anywhere in the cluster holds the window back; WindowHolder
// names it.
package outbox
