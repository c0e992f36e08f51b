package ordersummary

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/projectors/readmodel"
)

// Order is a row of order_summary. TotalAmount is the amount exactly as
// PostgreSQL's numeric(12,2) prints it (two decimals), with no trip through
// float64; times are in UTC.
type Order struct {
	OrderID      string      `json:"order_id"`
	CustomerName string      `json:"customer_name"`
	TotalAmount  json.Number `json:"total_amount"`
	Status       string      `json:"status"`
	PlacedAt     time.Time   `json:"placed_at"`
	ConfirmedAt  *time.Time  `json:"confirmed_at,omitempty"`
	ShippedAt    *time.Time  `json:"shipped_at,omitempty"`
	CancelledAt  *time.Time  `json:"cancelled_at,omitempty"`
	Version      int         `json:"version"`
}

// Filter selects the orders of a List.
type Filter struct {
	Status   string // "" means any
	Customer string // "" means any
}

// Key is where an order stands in a List: a page resumes after the key of
// the previous page's last order.
type Key struct {
	PlacedAt time.Time
	OrderID  string
}

// Key returns the order's Key.
func (o Order) Key() Key { return Key{PlacedAt: o.PlacedAt, OrderID: o.OrderID} }

// listOrder is most recently placed first, ties broken by order id.
var listOrder = readmodel.Keyset{
	Columns:    []readmodel.Column{{Name: "placed_at", Type: "timestamptz"}, {Name: "order_id", Type: "text"}},
	Descending: true,
}

// List returns up to limit orders that match f, most recently placed first,
// after the order whose key is after (nil for the first page), and whether
// more follow.
func List(ctx context.Context, db readmodel.Querier, f Filter, after *Key, limit int) ([]Order, bool, error) {
	s := readmodel.NewSelect(`SELECT order_id, customer_name, total_amount::text, status, placed_at, confirmed_at, shipped_at, cancelled_at, version
	          FROM readside.order_summary`)
	if f.Status != "" {
		s.Where("status = " + s.Arg(f.Status))
	}
	if f.Customer != "" {
		s.Where("customer_name = " + s.Arg(f.Customer))
	}
	var key []any
	if after != nil {
		key = []any{after.PlacedAt, after.OrderID}
	}
	orders, more, err := readmodel.Page(ctx, db, s, listOrder, key, limit, scanOrder)
	if err != nil {
		return nil, false, fmt.Errorf("%s: list: %w", Name, err)
	}
	return orders, more, nil
}

func scanOrder(row pgx.CollectableRow) (Order, error) {
	var o Order
	var total string
	err := row.Scan(&o.OrderID, &o.CustomerName, &total, &o.Status, &o.PlacedAt, &o.ConfirmedAt, &o.ShippedAt, &o.CancelledAt, &o.Version)
	o.TotalAmount = json.Number(total)
	o.PlacedAt, o.ConfirmedAt, o.ShippedAt, o.CancelledAt = o.PlacedAt.UTC(), readmodel.UTC(o.ConfirmedAt), readmodel.UTC(o.ShippedAt), readmodel.UTC(o.CancelledAt)
	return o, err
}
