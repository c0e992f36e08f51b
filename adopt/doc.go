// Package adopt points readside at an events table that an application
// already writes (projector adopt), without changing the application.
//
// A statement trigger on the application's table copies each new row into
// readside's own events table, with the table's columns mapped to
// readside's (a column, or an immutable expression over columns that
// PostgreSQL checks) and its type names renamed
// (Domain::Orders::Events::OrderPlaced to OrderPlaced). The copy goes
// through readside's SQL contract, so the outbox row, the xid8 window, the
// per-aggregate rules and the notification are exactly those of any other
// writer, and a write that breaks the rules fails in the application's own
// transaction, naming readside, the rule and the row.
//
// The trigger runs as the role that inserts: nothing the table's owner
// controls (column types and their casts, operators, policies) ever runs
// with readside's rights. Only plain values cross into readside, through
// two SECURITY DEFINER functions per adopted table, granted to the roles
// that may insert into it.
//
// Rows already in the table when it is adopted (the history) are checked
// against readside's rules first and then copied in chunks while the
// application writes; the trigger and the backfill meet per aggregate, so
// each aggregate's history is copied once, whole, before its new rows.
// readside's tables live in a schema of their own, so its events table
// never collides with the application's; the readside_adopted* triggers
// are the only objects adopt puts outside it.
package adopt
