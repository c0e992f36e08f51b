// Package orderdetails is one order's full view: table order_details (the
// summary's fields plus item count, tracking number and cancel reason) and
// its lines in order_items.
//
// Like ordersummary, Apply folds the batch to one final row per order in Go
// and writes each table with one set-based statement: order_details
// guarded by the aggregate version, order_items keyed by (order_id,
// line_no) and written only from OrderPlaced, so a replay finds the lines
// already there and leaves them.
package orderdetails

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
const Name = "order_details"

// Projection maintains order_details and order_items. The zero value is
// ready to use.
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
		Tables:         []string{"order_details", "order_items"},
	}
}

// details is an order's state after the batch; nil fields were not set by
// the batch and keep their stored value.
type details struct {
	customerName   *string
	totalCents     *int64
	itemCount      *int32
	status         string
	placedAt       *time.Time
	confirmedAt    *time.Time
	shippedAt      *time.Time
	trackingNumber *string
	cancelledAt    *time.Time
	cancelReason   *string
	version        int32
	items          []domain.OrderItem // from OrderPlaced
}

// Events only set fields, so the fold is merged over the stored row (read
// by the LEFT JOIN; NOT NULL is checked before ON CONFLICT, so the merge
// cannot wait for DO UPDATE).
const upsertDetailsSQL = `
INSERT INTO order_details AS d
       (order_id, customer_name, total_amount, status, item_count, placed_at, confirmed_at, shipped_at,
        tracking_number, cancelled_at, cancel_reason, version, updated_at)
SELECT r.order_id,
       coalesce(r.customer_name, cur.customer_name),
       coalesce(r.total_cents / 100.0, cur.total_amount),
       r.status,
       coalesce(r.item_count, cur.item_count),
       coalesce(r.placed_at, cur.placed_at),
       coalesce(r.confirmed_at, cur.confirmed_at),
       coalesce(r.shipped_at, cur.shipped_at),
       coalesce(r.tracking_number, cur.tracking_number),
       coalesce(r.cancelled_at, cur.cancelled_at),
       coalesce(r.cancel_reason, cur.cancel_reason),
       r.version, now()
  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::int[], $6::timestamptz[], $7::timestamptz[],
              $8::timestamptz[], $9::text[], $10::timestamptz[], $11::text[], $12::int[])
       AS r(order_id, customer_name, total_cents, status, item_count, placed_at, confirmed_at, shipped_at,
            tracking_number, cancelled_at, cancel_reason, version)
  LEFT JOIN order_details cur ON cur.order_id = r.order_id
ON CONFLICT (order_id) DO UPDATE SET
       customer_name   = excluded.customer_name,
       total_amount    = excluded.total_amount,
       status          = excluded.status,
       item_count      = excluded.item_count,
       placed_at       = excluded.placed_at,
       confirmed_at    = excluded.confirmed_at,
       shipped_at      = excluded.shipped_at,
       tracking_number = excluded.tracking_number,
       cancelled_at    = excluded.cancelled_at,
       cancel_reason   = excluded.cancel_reason,
       version         = excluded.version,
       updated_at      = excluded.updated_at
 WHERE d.version < excluded.version`

// Lines never change after OrderPlaced: the key is the version guard.
const insertItemsSQL = `
INSERT INTO order_items (order_id, line_no, product_id, product_name, quantity, unit_price, subtotal)
SELECT i.order_id, i.line_no, i.product_id, i.product_name, i.quantity, i.unit_cents / 100.0, i.subtotal_cents / 100.0
  FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::int[], $6::bigint[], $7::bigint[])
       AS i(order_id, line_no, product_id, product_name, quantity, unit_cents, subtotal_cents)
ON CONFLICT (order_id, line_no) DO NOTHING`

// Apply implements projectors.Projection. An order whose OrderPlaced was
// never applied fails the NOT NULL constraints (the runtime parks the event).
func (*Projection) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	orders := map[string]*details{}
	for i := range b.Events {
		e := &b.Events[i]
		v, err := domain.Decode(e.Type, e.SchemaVersion, e.Data)
		if err != nil {
			return eventError(e, err)
		}
		d := orders[e.AggregateID]
		if d == nil {
			d = &details{}
			orders[e.AggregateID] = d
		}
		switch ev := v.(type) {
		case *domain.OrderPlaced:
			total, n := int64(ev.TotalAmount), int32(len(ev.Items))
			d.customerName, d.totalCents, d.itemCount, d.placedAt = &ev.CustomerName, &total, &n, &ev.PlacedAt
			d.status, d.items = "pending", ev.Items
		case *domain.OrderConfirmed:
			d.status, d.confirmedAt = "confirmed", &ev.ConfirmedAt
		case *domain.OrderShipped:
			d.status, d.shippedAt, d.trackingNumber = "shipped", &ev.ShippedAt, nilIfEmpty(ev.TrackingNumber)
		case *domain.OrderCancelled:
			d.status, d.cancelledAt, d.cancelReason = "cancelled", &ev.CancelledAt, nilIfEmpty(ev.Reason)
		default:
			return eventError(e, fmt.Errorf("%s does not handle %T", Name, v))
		}
		d.version = int32(e.Version)
	}
	if len(orders) == 0 {
		return nil
	}

	keys := make([]string, 0, len(orders))
	for k := range orders {
		keys = append(keys, k)
	}
	slices.Sort(keys) // deterministic lock order
	n := len(keys)
	var (
		ids, statuses                         = make([]string, n), make([]string, n)
		customers, tracking, reasons          = make([]*string, n), make([]*string, n), make([]*string, n)
		totals                                = make([]*int64, n)
		itemCounts                            = make([]*int32, n)
		placed, confirmed, shipped, cancelled = make([]*time.Time, n), make([]*time.Time, n), make([]*time.Time, n), make([]*time.Time, n)
		versions                              = make([]int32, n)
		itOrder, itProduct, itName            []string
		itLine, itQty                         []int32
		itUnit, itSubtotal                    []int64
	)
	for i, k := range keys {
		d := orders[k]
		ids[i], statuses[i], customers[i], tracking[i], reasons[i] = k, d.status, d.customerName, d.trackingNumber, d.cancelReason
		totals[i], itemCounts[i], versions[i] = d.totalCents, d.itemCount, d.version
		placed[i], confirmed[i], shipped[i], cancelled[i] = d.placedAt, d.confirmedAt, d.shippedAt, d.cancelledAt
		for j, it := range d.items {
			itOrder, itLine, itProduct, itName = append(itOrder, k), append(itLine, int32(j+1)), append(itProduct, it.ProductID), append(itName, it.ProductName)
			itQty, itUnit, itSubtotal = append(itQty, int32(it.Quantity)), append(itUnit, int64(it.UnitPrice)), append(itSubtotal, int64(it.Subtotal()))
		}
	}
	if _, err := tx.Exec(ctx, upsertDetailsSQL, ids, customers, totals, statuses, itemCounts, placed, confirmed, shipped,
		tracking, cancelled, reasons, versions); err != nil {
		return fmt.Errorf("%s: upsert %d orders: %w", Name, n, err)
	}
	if len(itOrder) > 0 {
		if _, err := tx.Exec(ctx, insertItemsSQL, itOrder, itLine, itProduct, itName, itQty, itUnit, itSubtotal); err != nil {
			return fmt.Errorf("%s: insert %d order items: %w", Name, len(itOrder), err)
		}
	}
	return nil
}

func nilIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Reset implements projectors.Projection.
func (*Projection) Reset(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `TRUNCATE order_details, order_items`); err != nil {
		return fmt.Errorf("%s: reset: %w", Name, err)
	}
	return nil
}

// eventError names the event that could not be applied.
func eventError(e *outbox.Event, err error) error {
	return fmt.Errorf("%s: event %d (%s %s %s v%d): %w", Name, e.ID(), e.AggregateType, e.AggregateID, e.Type, e.Version, err)
}

var _ projectors.Projection = (*Projection)(nil)
