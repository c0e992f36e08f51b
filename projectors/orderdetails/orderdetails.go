// Package orderdetails is one order's full view: table order_details (the
// summary's fields plus item count, tracking number and cancel reason) and
// its lines in order_items.
//
// Like ordersummary, Apply folds the batch to one final row per order in Go
// and writes both tables with one set-based statement (one round trip):
// order_details guarded by the aggregate version, order_items keyed by
// (order_id, line_no) and written only from OrderPlaced, so a replay finds
// the lines already there and leaves them.
package orderdetails

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
const Name = "order_details"

// Projection maintains order_details and order_items. The zero value is
// ready to use.
type Projection struct{}

// New returns the projection.
func New() *Projection { return &Projection{} }

// Spec implements projectors.Projection (see readmodel.Spec).
func (*Projection) Spec() projectors.Spec {
	s := readmodel.Spec(Name, domain.OrderAggregate, "order_details", "order_items")
	s.Keys = map[string]string{"order_details": "order_id", "order_items": "order_id"}
	s.Volatile = []string{"order_details.updated_at"}
	return s
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

	readmodel.Steps[domain.OrderStatus] // checked against the stored row in the upsert
}

// Events only set fields, so the fold is merged over the stored row (read
// by the LEFT JOIN; NOT NULL is checked before ON CONFLICT, so the merge
// cannot wait for DO UPDATE).
//
// The same statement checks each order's first event of the batch against
// the stored row (see ordersummary): it writes nothing when an order's
// stored status is not one the event may follow, and returns those orders.
// The order lines of the batch's OrderPlaced events go in with it: one
// statement, one round trip per batch.
const upsertDetailsSQL = `
WITH r AS (
    SELECT r.*, cur.customer_name AS cur_customer, cur.total_amount AS cur_total, cur.status AS cur_status,
           cur.item_count AS cur_item_count, cur.placed_at AS cur_placed, cur.confirmed_at AS cur_confirmed,
           cur.shipped_at AS cur_shipped, cur.tracking_number AS cur_tracking, cur.cancelled_at AS cur_cancelled,
           cur.cancel_reason AS cur_reason, cur.version AS cur_version
      FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::int[], $6::timestamptz[], $7::timestamptz[],
                  $8::timestamptz[], $9::text[], $10::timestamptz[], $11::text[], $12::int[], $13::int[], $14::text[])
           AS r(order_id, customer_name, total_cents, status, item_count, placed_at, confirmed_at, shipped_at,
                tracking_number, cancelled_at, cancel_reason, version, first_version, before)
      LEFT JOIN order_details cur ON cur.order_id = r.order_id
), illegal AS (
    SELECT order_id, coalesce(cur_status, '') AS status FROM r
     WHERE coalesce(cur_version, 0) < first_version
       AND strpos(before, ',' || coalesce(cur_status, '') || ',') = 0
), up AS (
INSERT INTO order_details AS d
       (order_id, customer_name, total_amount, status, item_count, placed_at, confirmed_at, shipped_at,
        tracking_number, cancelled_at, cancel_reason, version, updated_at)
SELECT order_id,
       coalesce(customer_name, cur_customer),
       coalesce(total_cents / 100.0, cur_total),
       status,
       coalesce(item_count, cur_item_count),
       coalesce(placed_at, cur_placed),
       coalesce(confirmed_at, cur_confirmed),
       coalesce(shipped_at, cur_shipped),
       coalesce(tracking_number, cur_tracking),
       coalesce(cancelled_at, cur_cancelled),
       coalesce(cancel_reason, cur_reason),
       version, now()
  FROM r
 WHERE NOT EXISTS (SELECT FROM illegal)
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
 WHERE d.version < excluded.version
), items AS (
-- Lines never change after OrderPlaced: the key is the version guard.
INSERT INTO order_items (order_id, line_no, product_id, product_name, quantity, unit_price, subtotal)
SELECT i.order_id, i.line_no, i.product_id, i.product_name, i.quantity, i.unit_cents / 100.0, i.subtotal_cents / 100.0
  FROM unnest($15::text[], $16::int[], $17::text[], $18::text[], $19::int[], $20::bigint[], $21::bigint[])
       AS i(order_id, line_no, product_id, product_name, quantity, unit_cents, subtotal_cents)
 WHERE NOT EXISTS (SELECT FROM illegal)
ON CONFLICT (order_id, line_no) DO NOTHING
)
SELECT order_id, status FROM illegal ORDER BY order_id`

// Apply implements projectors.Projection. An event that does not decode,
// lacks what the tables need, or is not a legal step from the order's
// status (in the batch or as stored) is a domain.ErrInvalidEvent: the
// runtime parks it with that reason.
func (*Projection) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	orders := map[string]*details{}
	for i := range b.Events {
		e := &b.Events[i]
		d := orders[e.AggregateID]
		if d == nil {
			d = &details{}
			orders[e.AggregateID] = d
		}
		v, err := readmodel.Orders.Follow(Name, &d.Steps, e)
		if err != nil {
			return err
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

	keys := slices.Sorted(maps.Keys(orders)) // deterministic lock order
	n := len(keys)
	var (
		ids, statuses                         = make([]string, n), make([]string, n)
		customers, tracking, reasons          = make([]*string, n), make([]*string, n), make([]*string, n)
		totals                                = make([]*int64, n)
		itemCounts                            = make([]*int32, n)
		placed, confirmed, shipped, cancelled = make([]*time.Time, n), make([]*time.Time, n), make([]*time.Time, n), make([]*time.Time, n)
		versions, firsts                      = make([]int32, n), make([]int32, n)
		befores                               = make([]string, n)
		itOrder, itProduct, itName            []string
		itLine, itQty                         []int32
		itUnit, itSubtotal                    []int64
	)
	for i, k := range keys {
		d := orders[k]
		ids[i], statuses[i], customers[i], tracking[i], reasons[i] = k, d.status, d.customerName, d.trackingNumber, d.cancelReason
		totals[i], itemCounts[i], versions[i] = d.totalCents, d.itemCount, d.version
		firsts[i], befores[i] = d.FirstVersion(), d.Before()
		placed[i], confirmed[i], shipped[i], cancelled[i] = d.placedAt, d.confirmedAt, d.shippedAt, d.cancelledAt
		for j, it := range d.items {
			itOrder, itLine, itProduct, itName = append(itOrder, k), append(itLine, int32(j+1)), append(itProduct, it.ProductID), append(itName, it.ProductName)
			itQty, itUnit, itSubtotal = append(itQty, int32(it.Quantity)), append(itUnit, int64(it.UnitPrice)), append(itSubtotal, int64(it.Subtotal()))
		}
	}
	res, err := tx.Query(ctx, upsertDetailsSQL, ids, customers, totals, statuses, itemCounts, placed, confirmed, shipped,
		tracking, cancelled, reasons, versions, firsts, befores, itOrder, itLine, itProduct, itName, itQty, itUnit, itSubtotal)
	if err != nil {
		return fmt.Errorf("%s: upsert %d orders: %w", Name, n, err)
	}
	illegal, err := pgx.CollectRows(res, pgx.RowToStructByPos[readmodel.Refused])
	if err != nil {
		return fmt.Errorf("%s: upsert %d orders: %w", Name, n, err)
	}
	if len(illegal) > 0 {
		return readmodel.Orders.Refuse(Name, &orders[illegal[0].ID].Steps, illegal[0])
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
	return readmodel.Truncate(ctx, tx, Name, "order_details", "order_items")
}

// eventError names the event that could not be applied.
func eventError(e *outbox.Event, err error) error { return readmodel.EventError(Name, e, err) }

var _ projectors.Projection = (*Projection)(nil)
