// Package httpapi is the writer's HTTP JSON API: commands on orders and
// products (the seed's OrdersController), /metrics, /healthz and /readyz.
//
// Every successful command answers with the aggregate's new version and a
// consistency token, the outbox cursor of the write ("txid/position"), in the
// JSON field "consistency_token" and the Readside-Consistency-Token header;
// a query API that has seen its projections pass that cursor reflects the
// write. Other files may add routes with Server.Handle (query routes for the
// read models); they get the same request metrics and can answer with
// WriteJSON and WriteError.
package httpapi
