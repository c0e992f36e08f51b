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
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// Name is the projection's name and checkpoint key.
const Name = "order_summary"

// Projection maintains order_summary. The zero value is ready to use.
type Projection struct{}

// New returns the projection.
func New() *Projection { return &Projection{} }

// Spec implements projectors.Projection.
func (*Projection) Spec() projectors.Spec {
	return projectors.Spec{
		Name: Name,
		// Every event of the aggregate type, not a list of known types: an
		// event type this projection does not know (a newer writer's, or a
		// bad one) fails and is parked with its reason instead of being
		// skipped silently.
		AggregateTypes: []string{domain.OrderAggregate},
		Tables:         []string{"order_summary"},
	}
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
}

// Every event of an order sets fields; none clears one. So folding a batch
// into "the fields it set, last write wins" and merging that over the stored
// row is the same as applying the events one by one. The merge happens in
// the SELECT (a LEFT JOIN on the stored row), not in DO UPDATE: PostgreSQL
// checks NOT NULL on the proposed row before it looks for a conflict.
const upsertSQL = `
INSERT INTO order_summary AS s
       (order_id, customer_name, total_amount, status, placed_at, confirmed_at, shipped_at, cancelled_at, version, updated_at)
SELECT r.order_id,
       coalesce(r.customer_name, cur.customer_name),
       coalesce(r.total_cents / 100.0, cur.total_amount),
       r.status,
       coalesce(r.placed_at, cur.placed_at),
       coalesce(r.confirmed_at, cur.confirmed_at),
       coalesce(r.shipped_at, cur.shipped_at),
       coalesce(r.cancelled_at, cur.cancelled_at),
       r.version, now()
  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::int[])
       AS r(order_id, customer_name, total_cents, status, placed_at, confirmed_at, shipped_at, cancelled_at, version)
  LEFT JOIN order_summary cur ON cur.order_id = r.order_id
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
 WHERE s.version < excluded.version`

// Apply implements projectors.Projection. An order whose OrderPlaced was never
// applied fails the NOT NULL constraints (the runtime parks the event).
func (*Projection) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	rows := map[string]*row{}
	for i := range b.Events {
		e := &b.Events[i]
		v, err := domain.Decode(e.Type, e.SchemaVersion, e.Data)
		if err != nil {
			return eventError(e, err)
		}
		r := rows[e.AggregateID]
		if r == nil {
			r = &row{orderID: e.AggregateID}
			rows[e.AggregateID] = r
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
	keys := make([]string, 0, len(rows))
	for k := range rows {
		keys = append(keys, k)
	}
	slices.Sort(keys)
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
	)
	for i, k := range keys {
		r := rows[k]
		ids[i], customers[i], totals[i], statuses[i] = r.orderID, r.customerName, r.totalCents, r.status
		placed[i], confirmed[i], shipped[i], cancelled[i] = r.placedAt, r.confirmedAt, r.shippedAt, r.cancelledAt
		versions[i] = r.version
	}
	if _, err := tx.Exec(ctx, upsertSQL, ids, customers, totals, statuses, placed, confirmed, shipped, cancelled, versions); err != nil {
		return fmt.Errorf("%s: upsert %d orders: %w", Name, n, err)
	}
	return nil
}

// Reset implements projectors.Projection.
func (*Projection) Reset(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `TRUNCATE order_summary`); err != nil {
		return fmt.Errorf("%s: reset: %w", Name, err)
	}
	return nil
}

// eventError names the event that could not be applied, so that operators
// (and the dead-letter table) can find it.
func eventError(e *outbox.Event, err error) error {
	return fmt.Errorf("%s: event %d (%s %s %s v%d): %w", Name, e.ID(), e.AggregateType, e.AggregateID, e.Type, e.Version, err)
}

var _ projectors.Projection = (*Projection)(nil)
