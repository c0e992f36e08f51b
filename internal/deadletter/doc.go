// Package deadletter owns the dead_letters table: the events a projection
// could not apply, parked with their error so that an operator can retry or
// discard them.
//
// The runtime parks (Park) inside its apply transaction, at or below the
// cursor that transaction commits: a failing event after its last attempt
// with reason Failed, and the later events of the same aggregate with reason
// Blocked, so that the aggregate's order survives while other aggregates
// keep flowing. Operators list (List), discard (Discard) and retry them; a
// retry (projectors' dead-letter job) re-applies an aggregate's parked
// events in version order and marks each one applied Retried (MarkRetried)
// or records that it failed again (Refail). A rebuild's switch carries the
// copy's dead letters over to the live projection (Adopt); a reset to the
// start forgets them (Clear).
package deadletter
