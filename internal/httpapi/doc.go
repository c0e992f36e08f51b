// Package httpapi is the writer's HTTP JSON API: commands on orders and
// products and queries on the read models side by side (the seed's
// OrdersController), plus /metrics, /healthz and /readyz.
//
// Every successful command answers with the aggregate's new version and a
// consistency token, the outbox cursor of the write ("txid/position"), in the
// JSON field "consistency_token" and the Readside-Consistency-Token header.
// A query given that token (query parameter or header) waits, bounded, until
// every segment of each projection it reads has passed the cursor (WaitFor),
// and answers 504 naming the projection that has not, and why (paused,
// halted, not running), when the wait runs out.
//
// The reads themselves live beside the read models' upserts
// (ordersummary.List, orderdetails.Get, products.List, orderstatistics.Get);
// the query routes only translate HTTP: parameters and opaque cursors in,
// consistency tokens awaited, answers out with their ETags.
package httpapi
