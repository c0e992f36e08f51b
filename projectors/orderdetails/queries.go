package orderdetails

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/projectors/readmodel"
)

// ErrNotFound is returned by Get for an order the read model does not hold.
var ErrNotFound = errors.New("order not found")

// Order is a row of order_details with its lines from order_items. Amounts
// are exactly as PostgreSQL's numeric(12,2) prints them (two decimals), with
// no trip through float64; times are in UTC.
type Order struct {
	OrderID        string      `json:"order_id"`
	CustomerName   string      `json:"customer_name"`
	TotalAmount    json.Number `json:"total_amount"`
	Status         string      `json:"status"`
	ItemCount      int         `json:"item_count"`
	PlacedAt       time.Time   `json:"placed_at"`
	ConfirmedAt    *time.Time  `json:"confirmed_at,omitempty"`
	ShippedAt      *time.Time  `json:"shipped_at,omitempty"`
	TrackingNumber string      `json:"tracking_number,omitempty"`
	CancelledAt    *time.Time  `json:"cancelled_at,omitempty"`
	CancelReason   string      `json:"cancel_reason,omitempty"`
	Version        int         `json:"version"`
	Items          []Item      `json:"items"`
}

// Item is a line of an order.
type Item struct {
	LineNo      int         `json:"line_no"`
	ProductID   string      `json:"product_id,omitempty"`
	ProductName string      `json:"product_name"`
	Quantity    int         `json:"quantity"`
	UnitPrice   json.Number `json:"unit_price"`
	Subtotal    json.Number `json:"subtotal"`
}

// Get returns the order with its items, or ErrNotFound.
func Get(ctx context.Context, db readmodel.Querier, id string) (Order, error) {
	var d Order
	var total string
	err := db.QueryRow(ctx, `
SELECT order_id, customer_name, total_amount::text, status, item_count, placed_at, confirmed_at, shipped_at,
       coalesce(tracking_number, ''), cancelled_at, coalesce(cancel_reason, ''), version
  FROM readside.order_details WHERE order_id = $1`, id).Scan(&d.OrderID, &d.CustomerName, &total, &d.Status, &d.ItemCount,
		&d.PlacedAt, &d.ConfirmedAt, &d.ShippedAt, &d.TrackingNumber, &d.CancelledAt, &d.CancelReason, &d.Version)
	if errors.Is(err, pgx.ErrNoRows) {
		return Order{}, ErrNotFound
	}
	if err != nil {
		return Order{}, fmt.Errorf("%s: get %s: %w", Name, id, err)
	}
	d.TotalAmount = json.Number(total)
	d.PlacedAt, d.ConfirmedAt, d.ShippedAt, d.CancelledAt = d.PlacedAt.UTC(), readmodel.UTC(d.ConfirmedAt), readmodel.UTC(d.ShippedAt), readmodel.UTC(d.CancelledAt)

	// The items were committed with the order in one transaction and never
	// change, so a second statement cannot see a different version of them.
	rows, err := db.Query(ctx, `
SELECT line_no, coalesce(product_id, ''), product_name, quantity, unit_price::text, subtotal::text
  FROM readside.order_items WHERE order_id = $1 ORDER BY line_no`, id)
	if err != nil {
		return Order{}, fmt.Errorf("%s: get %s items: %w", Name, id, err)
	}
	d.Items, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Item, error) {
		var it Item
		var price, subtotal string
		err := row.Scan(&it.LineNo, &it.ProductID, &it.ProductName, &it.Quantity, &price, &subtotal)
		it.UnitPrice, it.Subtotal = json.Number(price), json.Number(subtotal)
		return it, err
	})
	if err != nil {
		return Order{}, fmt.Errorf("%s: get %s items: %w", Name, id, err)
	}
	return d, nil
}
