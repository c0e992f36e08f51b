// Package adopt points readside at an events table that an application
// already writes (projector adopt), without changing the application.
//
// A statement trigger on the application's table copies each new row into
// readside's own events table, with the application's columns mapped to
// readside's and its type names renamed (Domain::Orders::Events::OrderPlaced
// to OrderPlaced). The copy goes through readside's SQL contract, so the
// outbox row, the xid8 window, the per-aggregate rules and the notification
// are exactly those of any other writer, and a write that breaks the rules
// fails in the application's own transaction. Rows already in the table
// when it is adopted are copied once, in id order, by the adopting
// transaction: they are the history a replay from the start reads first.
// readside's tables live in a schema of their own (readside by default),
// so its events table never collides with the application's; the trigger
// on the application's table is the one object adopt puts outside it.
//
// A trigger on a partitioned table fires for rows routed to every
// partition, those created after adoption included.
package adopt
