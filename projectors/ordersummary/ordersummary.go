// Package ordersummary is the order list read model: one row per order in
// table order_summary, for "all orders, recent first", "shipped orders" and
// "a customer's orders by status".
//
// It is also the model for writing a projection: Apply decodes the batch,
// folds it in Go to one final row per order (in event order), and writes all
// rows with ONE set-based statement (INSERT ... SELECT FROM unnest(...) ON
// CONFLICT DO UPDATE) guarded by the aggregate version, so that replaying
// events over existing rows converges.
package ordersummary

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/readmodel"
)

// Name is the projection's name and checkpoint key.
const Name = "order_summary"

// Projection maintains order_summary. The zero value is ready to use.
type Projection struct{}

// New returns the projection.
func New() *Projection { return &Projection{} }

// Spec implements projectors.Projection (see readmodel.Spec).
func (*Projection) Spec() projectors.Spec {
	s := readmodel.Spec(Name, domain.OrderAggregate, "order_summary")
	s.Keys = map[string]string{"order_summary": "order_id"}
	s.Volatile = []string{"order_summary.updated_at"}
	return s
}

// row is an order's state after the batch. Pointer fields are nil when no
// event of the batch set them: the upsert keeps the stored value.
type row struct {
	orderID      string
	customerName *string
	totalCents   *int64
	status       string
	placedAt     *time.Time
	confirmedAt  *time.Time
	shippedAt    *time.Time
	cancelledAt  *time.Time
	version      int32

	readmodel.Steps[domain.OrderStatus] // checked against the stored row in the upsert
}

// Every event of an order sets fields; none clears one. So folding a batch
// into "the fields it set, last write wins" and merging that over the stored
// row is the same as applying the events one by one. The merge happens in
// the SELECT (a LEFT JOIN on the stored row), not in DO UPDATE: PostgreSQL
// checks NOT NULL on the proposed row before it looks for a conflict.
//
// The same statement checks each order's first event of the batch against
// the stored row: the stored status must be one the event may follow
// (r.Before(), e.g. ",pending,confirmed,"; ",," when the order must not
// exist yet), unless the row already reflects that event (a replay). It
// writes nothing when any order fails the check and returns those orders.
const upsertSQL = `
WITH r AS (
    SELECT r.*, cur.order_id AS cur_id, cur.customer_name AS cur_customer, cur.total_amount AS cur_total,
           cur.status AS cur_status, cur.placed_at AS cur_placed, cur.confirmed_at AS cur_confirmed,
           cur.shipped_at AS cur_shipped, cur.cancelled_at AS cur_cancelled, cur.version AS cur_version
      FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::timestamptz[], $6::timestamptz[], $7::timestamptz[],
                  $8::timestamptz[], $9::int[], $10::int[], $11::text[])
           AS r(order_id, customer_name, total_cents, status, placed_at, confirmed_at, shipped_at, cancelled_at, version,
                first_version, before)
      LEFT JOIN order_summary cur ON cur.order_id = r.order_id
), illegal AS (
    SELECT order_id, coalesce(cur_status, '') AS status FROM r
     WHERE coalesce(cur_version, 0) < first_version
       AND strpos(before, ',' || coalesce(cur_status, '') || ',') = 0
), up AS (
INSERT INTO order_summary AS s
       (order_id, customer_name, total_amount, status, placed_at, confirmed_at, shipped_at, cancelled_at, version, updated_at)
SELECT order_id,
       coalesce(customer_name, cur_customer),
       coalesce(total_cents / 100.0, cur_total),
       status,
       coalesce(placed_at, cur_placed),
       coalesce(confirmed_at, cur_confirmed),
       coalesce(shipped_at, cur_shipped),
       coalesce(cancelled_at, cur_cancelled),
       version, now()
  FROM r
 WHERE NOT EXISTS (SELECT FROM illegal)
ON CONFLICT (order_id) DO UPDATE SET
       customer_name = excluded.customer_name,
       total_amount  = excluded.total_amount,
       status        = excluded.status,
       placed_at     = excluded.placed_at,
       confirmed_at  = excluded.confirmed_at,
       shipped_at    = excluded.shipped_at,
       cancelled_at  = excluded.cancelled_at,
       version       = excluded.version,
       updated_at    = excluded.updated_at
 WHERE s.version < excluded.version
)
SELECT order_id, status FROM illegal ORDER BY order_id`

// Apply implements projectors.Projection. An event that does not decode,
// lacks what the table needs, or is not a legal step from the order's
// status (in the batch or as stored) is a domain.ErrInvalidEvent: the
// runtime parks it with that reason.
func (*Projection) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	rows := map[string]*row{}
	for i := range b.Events {
		e := &b.Events[i]
		r := rows[e.AggregateID]
		if r == nil {
			r = &row{orderID: e.AggregateID}
			rows[e.AggregateID] = r
		}
		v, err := readmodel.Orders.Follow(Name, &r.Steps, e)
		if err != nil {
			return err
		}
		switch ev := v.(type) {
		case *domain.OrderPlaced:
			total := int64(ev.TotalAmount)
			r.customerName, r.totalCents, r.status, r.placedAt = &ev.CustomerName, &total, "pending", &ev.PlacedAt
		case *domain.OrderConfirmed:
			r.status, r.confirmedAt = "confirmed", &ev.ConfirmedAt
		case *domain.OrderShipped:
			r.status, r.shippedAt = "shipped", &ev.ShippedAt
		case *domain.OrderCancelled:
			r.status, r.cancelledAt = "cancelled", &ev.CancelledAt
		default:
			return eventError(e, fmt.Errorf("%s does not handle %T", Name, v))
		}
		r.version = int32(e.Version)
	}
	if len(rows) == 0 {
		return nil
	}

	// Sorted keys: deterministic lock order, and index-ordered writes.
	keys := slices.Sorted(maps.Keys(rows))
	n := len(keys)
	var (
		ids       = make([]string, n)
		customers = make([]*string, n)
		totals    = make([]*int64, n)
		statuses  = make([]string, n)
		placed    = make([]*time.Time, n)
		confirmed = make([]*time.Time, n)
		shipped   = make([]*time.Time, n)
		cancelled = make([]*time.Time, n)
		versions  = make([]int32, n)
		firsts    = make([]int32, n)
		befores   = make([]string, n)
	)
	for i, k := range keys {
		r := rows[k]
		ids[i], customers[i], totals[i], statuses[i] = r.orderID, r.customerName, r.totalCents, r.status
		placed[i], confirmed[i], shipped[i], cancelled[i] = r.placedAt, r.confirmedAt, r.shippedAt, r.cancelledAt
		versions[i], firsts[i], befores[i] = r.version, r.FirstVersion(), r.Before()
	}
	res, err := tx.Query(ctx, upsertSQL, ids, customers, totals, statuses, placed, confirmed, shipped, cancelled, versions, firsts, befores)
	if err != nil {
		return fmt.Errorf("%s: upsert %d orders: %w", Name, n, err)
	}
	illegal, err := pgx.CollectRows(res, pgx.RowToStructByPos[readmodel.Refused])
	if err != nil {
		return fmt.Errorf("%s: upsert %d orders: %w", Name, n, err)
	}
	if len(illegal) > 0 {
		return readmodel.Orders.Refuse(Name, &rows[illegal[0].ID].Steps, illegal[0])
	}
	return nil
}

// Reset implements projectors.Projection.
func (*Projection) Reset(ctx context.Context, tx pgx.Tx) error {
	return readmodel.Truncate(ctx, tx, Name, "order_summary")
}

// eventError names the event that could not be applied.
func eventError(e *outbox.Event, err error) error { return readmodel.EventError(Name, e, err) }

var _ projectors.Projection = (*Projection)(nil)
