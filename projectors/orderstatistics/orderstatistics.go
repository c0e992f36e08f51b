// Package orderstatistics keeps orders per status (table order_statistics:
// order_count, total_revenue and the generated average_order_value).
//
// It is a counter projection, and deliberately a plain one: OrderPlaced
// adds the order to pending; every later transition moves it (count and
// amount) from its previous status to the new one. There is no version
// guard, so it is NOT idempotent; it is right only if the runtime applies
// every event exactly once (apply and checkpoint commit in one
// transaction), which makes it the canary for that guarantee: compare it
// with an aggregation over the events table. Every event must be a legal
// step from the order's stored status, so an event applied twice is refused
// (and parked) rather than counted twice.
//
// To know an order's previous status it keeps order_statistics_orders
// (order id, status, amount), updated in the same statement as the
// counters.
package orderstatistics

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/readmodel"
)

// Name is the projection's name and checkpoint key.
const Name = "order_statistics"

// Projection maintains order_statistics and order_statistics_orders. The
// zero value is ready to use.
type Projection struct{}

// New returns the projection.
func New() *Projection { return &Projection{} }

// Spec implements projectors.Projection (see readmodel.Spec).
func (*Projection) Spec() projectors.Spec {
	s := readmodel.Spec(Name, domain.OrderAggregate, "order_statistics", "order_statistics_orders")
	s.Keys = map[string]string{"order_statistics_orders": "order_id"} // order_statistics counts every order
	return s
}

// move is what a batch did to one order: where it ended, and whether it
// started in the batch (placed) or in the status stored for it.
type move struct {
	status     string
	placed     bool
	totalCents *int64 // from OrderPlaced

	readmodel.Steps[domain.OrderStatus] // checked against the stored row in the upsert
}

// applySQL moves each order of the batch from its previous status (stored
// in order_statistics_orders) to its new one, in one statement: all CTEs
// read the tables as they were before it, so prev is the state before the
// batch. The four counter rows are hot (every segment writes them): INSERT
// ... SELECT ... ORDER BY status ON CONFLICT locks them in status order, so
// concurrent segments queue instead of deadlocking (an UPDATE ... FROM
// locks them in whatever order its join emits them, and the conformance
// suite's concurrent segments caught that deadlock).
//
// Each order's first event of the batch must be a legal step from its
// stored status (b.before lists the statuses it may follow; ",," means "not
// placed"): a second OrderPlaced, or a transition of an order never placed,
// would count an order twice or move an amount that was never added. When
// any order fails that check the statement writes nothing and returns those
// orders.
const applySQL = `
WITH b AS (
    SELECT b.*, o.status AS cur_status, o.total_amount AS cur_total
      FROM unnest($1::text[], $2::text[], $3::bool[], $4::bigint[], $5::text[]) AS b(order_id, status, placed, total_cents, before)
      LEFT JOIN order_statistics_orders o ON o.order_id = b.order_id
), illegal AS (
    SELECT order_id, coalesce(cur_status, '') AS status FROM b
     WHERE strpos(before, ',' || coalesce(cur_status, '') || ',') = 0
), prev AS (
    SELECT order_id, cur_status AS status, cur_total AS total_amount FROM b
     WHERE cur_status IS NOT NULL AND NOT placed
), moved AS (
    SELECT order_id, status, coalesce(total_cents / 100.0, cur_total) AS total_amount FROM b
), tracked AS (
    INSERT INTO order_statistics_orders AS o (order_id, status, total_amount)
    SELECT order_id, status, total_amount FROM moved
     WHERE NOT EXISTS (SELECT FROM illegal)
    ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, total_amount = excluded.total_amount
), delta AS (
    SELECT status, -1 AS orders, -total_amount AS revenue FROM prev
    UNION ALL
    SELECT status, 1, total_amount FROM moved
), counted AS (
    INSERT INTO order_statistics AS s (status, order_count, total_revenue)
    SELECT status, sum(orders), sum(revenue) FROM delta
     WHERE NOT EXISTS (SELECT FROM illegal)
     GROUP BY status ORDER BY status
    ON CONFLICT (status) DO UPDATE SET
           order_count   = s.order_count + excluded.order_count,
           total_revenue = s.total_revenue + excluded.total_revenue
)
SELECT order_id, status FROM illegal ORDER BY order_id`

// Apply implements projectors.Projection.
func (*Projection) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	moves := map[string]*move{}
	for i := range b.Events {
		e := &b.Events[i]
		m := moves[e.AggregateID]
		if m == nil {
			m = &move{}
			moves[e.AggregateID] = m
		}
		v, err := readmodel.Orders.Follow(Name, &m.Steps, e)
		if err != nil {
			return err
		}
		switch ev := v.(type) {
		case *domain.OrderPlaced:
			total := int64(ev.TotalAmount)
			m.status, m.placed, m.totalCents = "pending", true, &total
		case *domain.OrderConfirmed:
			m.status = "confirmed"
		case *domain.OrderShipped:
			m.status = "shipped"
		case *domain.OrderCancelled:
			m.status = "cancelled"
		default:
			return eventError(e, fmt.Errorf("%s does not handle %T", Name, v))
		}
	}
	if len(moves) == 0 {
		return nil
	}
	keys := slices.Sorted(maps.Keys(moves))
	n := len(keys)
	statuses, placed, totals, befores := make([]string, n), make([]bool, n), make([]*int64, n), make([]string, n)
	for i, k := range keys {
		m := moves[k]
		statuses[i], placed[i], totals[i], befores[i] = m.status, m.placed, m.totalCents, m.Before()
	}
	res, err := tx.Query(ctx, applySQL, keys, statuses, placed, totals, befores)
	if err != nil {
		return fmt.Errorf("%s: count %d orders: %w", Name, n, err)
	}
	illegal, err := pgx.CollectRows(res, pgx.RowToStructByPos[readmodel.Refused])
	if err != nil {
		return fmt.Errorf("%s: count %d orders: %w", Name, n, err)
	}
	if len(illegal) > 0 {
		return readmodel.Orders.Refuse(Name, &moves[illegal[0].ID].Steps, illegal[0])
	}
	return nil
}

// Reset implements projectors.Projection: every counter back to zero (the
// four status rows stay) and no order tracked.
func (*Projection) Reset(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `TRUNCATE order_statistics_orders`); err != nil {
		return fmt.Errorf("%s: reset: %w", Name, err)
	}
	// Re-seed rather than zero: a rebuild's fresh copy of the table starts
	// without the four rows the migration inserted.
	if _, err := tx.Exec(ctx, `DELETE FROM order_statistics;
		INSERT INTO order_statistics (status) VALUES ('pending'), ('confirmed'), ('shipped'), ('cancelled')`); err != nil {
		return fmt.Errorf("%s: reset: %w", Name, err)
	}
	return nil
}

// eventError names the event that could not be applied.
func eventError(e *outbox.Event, err error) error { return readmodel.EventError(Name, e, err) }

var _ projectors.Projection = (*Projection)(nil)
