package domain

import (
	"fmt"
	"strings"
	"time"
)

// OrderStatus is where an order is in its life cycle:
//
//	pending -> confirmed -> shipped
//	pending -> cancelled, confirmed -> cancelled
type OrderStatus string

// Order statuses. The empty status is an order that does not exist yet.
const (
	OrderStatusPending   OrderStatus = "pending"
	OrderStatusConfirmed OrderStatus = "confirmed"
	OrderStatusShipped   OrderStatus = "shipped"
	OrderStatusCancelled OrderStatus = "cancelled"
)

// Limits on a placed order, so that totals cannot overflow and one request
// cannot write an unbounded event.
const (
	MaxOrderItems    = 100
	MaxItemQuantity  = 1_000_000
	MaxCustomerName  = 200
	MaxProductName   = 200
	MaxFreeTextField = 500 // tracking numbers, cancel reasons
)

// Commands on an order.
type (
	// PlaceOrder creates an order in status pending.
	PlaceOrder struct {
		OrderID      string
		CustomerName string
		Items        []OrderItem
	}
	// ConfirmOrder moves a pending order to confirmed.
	ConfirmOrder struct{ OrderID string }
	// ShipOrder moves a confirmed order to shipped.
	ShipOrder struct {
		OrderID        string
		TrackingNumber string
	}
	// CancelOrder cancels a pending or confirmed order.
	CancelOrder struct {
		OrderID string
		Reason  string
	}
)

// Order is the order aggregate's state. The zero value is an order that has
// not been placed.
type Order struct {
	ID           string      `json:"id"`
	CustomerName string      `json:"customer_name"`
	Items        []OrderItem `json:"items"`
	TotalAmount  Money       `json:"total_amount"`
	Status       OrderStatus `json:"status"`
	PlacedAt     time.Time   `json:"placed_at"`
	UpdatedAt    time.Time   `json:"updated_at"`
}

// AggregateType implements State.
func (*Order) AggregateType() string { return OrderAggregate }

// Exists reports whether the order has been placed.
func (o *Order) Exists() bool { return o.Status != "" }

// Place decides PlaceOrder: one OrderPlaced, or a validation error, or
// ErrAlreadyExists when the order was placed before.
func (o *Order) Place(cmd PlaceOrder, now time.Time) ([]Event, error) {
	if o.Exists() {
		return nil, alreadyExists(OrderAggregate, o.ID)
	}
	if err := checkID("order_id", cmd.OrderID); err != nil {
		return nil, err
	}
	name := strings.TrimSpace(cmd.CustomerName)
	switch {
	case name == "":
		return nil, invalid("customer_name", "must not be empty")
	case len(name) > MaxCustomerName:
		return nil, invalid("customer_name", fmt.Sprintf("must be at most %d bytes", MaxCustomerName))
	case strings.ContainsRune(name, 0):
		return nil, invalid("customer_name", nulReason)
	case len(cmd.Items) == 0:
		return nil, invalid("items", "must not be empty")
	case len(cmd.Items) > MaxOrderItems:
		return nil, invalid("items", fmt.Sprintf("must have at most %d items", MaxOrderItems))
	}
	items := make([]OrderItem, len(cmd.Items))
	var total Money
	for i, it := range cmd.Items {
		field := fmt.Sprintf("items[%d].", i)
		it.ProductName = strings.TrimSpace(it.ProductName)
		switch {
		case it.ProductID != "" && !ValidID(it.ProductID):
			return nil, invalid(field+"product_id", "is not a valid id")
		case it.ProductName == "":
			return nil, invalid(field+"product_name", "must not be empty")
		case len(it.ProductName) > MaxProductName:
			return nil, invalid(field+"product_name", fmt.Sprintf("must be at most %d bytes", MaxProductName))
		case strings.ContainsRune(it.ProductName, 0):
			return nil, invalid(field+"product_name", nulReason)
		case it.Quantity <= 0:
			return nil, invalid(field+"quantity", "must be greater than 0")
		case it.Quantity > MaxItemQuantity:
			return nil, invalid(field+"quantity", fmt.Sprintf("must be at most %d", MaxItemQuantity))
		case it.UnitPrice <= 0:
			return nil, invalid(field+"unit_price", "must be greater than 0")
		case it.UnitPrice > MaxMoney:
			return nil, invalid(field+"unit_price", fmt.Sprintf("must be at most %s", MaxMoney))
		case int64(it.UnitPrice) > int64(MaxMoney-total)/int64(it.Quantity):
			// Neither the line's subtotal nor the order's total may exceed
			// what the read models hold; checked before multiplying, so
			// nothing overflows.
			return nil, invalid("items", fmt.Sprintf("total amount must be at most %s", MaxMoney))
		}
		items[i] = it
		total += it.Subtotal()
	}
	return []Event{&OrderPlaced{
		OrderID:      cmd.OrderID,
		CustomerName: name,
		Items:        items,
		TotalAmount:  total,
		PlacedAt:     now.UTC(),
	}}, nil
}

// Confirm decides ConfirmOrder: pending -> confirmed.
func (o *Order) Confirm(cmd ConfirmOrder, now time.Time) ([]Event, error) {
	if err := o.require("ConfirmOrder", cmd.OrderID, OrderStatusPending); err != nil {
		return nil, err
	}
	return []Event{&OrderConfirmed{OrderID: o.ID, ConfirmedAt: now.UTC()}}, nil
}

// Ship decides ShipOrder: confirmed -> shipped.
func (o *Order) Ship(cmd ShipOrder, now time.Time) ([]Event, error) {
	if err := o.require("ShipOrder", cmd.OrderID, OrderStatusConfirmed); err != nil {
		return nil, err
	}
	tn := strings.TrimSpace(cmd.TrackingNumber)
	if len(tn) > MaxFreeTextField {
		return nil, invalid("tracking_number", fmt.Sprintf("must be at most %d bytes", MaxFreeTextField))
	}
	if strings.ContainsRune(tn, 0) {
		return nil, invalid("tracking_number", nulReason)
	}
	return []Event{&OrderShipped{OrderID: o.ID, TrackingNumber: tn, ShippedAt: now.UTC()}}, nil
}

// Cancel decides CancelOrder: pending or confirmed -> cancelled.
func (o *Order) Cancel(cmd CancelOrder, now time.Time) ([]Event, error) {
	if err := o.require("CancelOrder", cmd.OrderID, OrderStatusPending, OrderStatusConfirmed); err != nil {
		return nil, err
	}
	reason := strings.TrimSpace(cmd.Reason)
	if len(reason) > MaxFreeTextField {
		return nil, invalid("reason", fmt.Sprintf("must be at most %d bytes", MaxFreeTextField))
	}
	if strings.ContainsRune(reason, 0) {
		return nil, invalid("reason", nulReason)
	}
	return []Event{&OrderCancelled{OrderID: o.ID, Reason: reason, CancelledAt: now.UTC()}}, nil
}

// require checks that the order exists, is the one addressed and is in one
// of the allowed statuses.
func (o *Order) require(command, id string, allowed ...OrderStatus) error {
	if !o.Exists() {
		return notFound(OrderAggregate, id)
	}
	if id != "" && id != o.ID {
		return fmt.Errorf("%s: order id %q does not match loaded order %q", command, id, o.ID)
	}
	for _, s := range allowed {
		if o.Status == s {
			return nil
		}
	}
	return &TransitionError{Aggregate: OrderAggregate, ID: o.ID, Command: command, Status: string(o.Status)}
}

// Apply implements State. An event that is not a legal step from the
// order's status is an InvalidEventError (the stream was written by
// something that bypassed the decisions above).
func (o *Order) Apply(e Event) error {
	if _, err := OrderStatusAfter(o.Status, e); err != nil {
		return fmt.Errorf("order %s: %w", o.ID, err)
	}
	switch e := e.(type) {
	case *OrderPlaced:
		*o = Order{
			ID:           e.OrderID,
			CustomerName: e.CustomerName,
			Items:        e.Items,
			TotalAmount:  e.TotalAmount,
			Status:       OrderStatusPending,
			PlacedAt:     e.PlacedAt,
			UpdatedAt:    e.PlacedAt,
		}
	case *OrderConfirmed:
		o.Status, o.UpdatedAt = OrderStatusConfirmed, e.ConfirmedAt
	case *OrderShipped:
		o.Status, o.UpdatedAt = OrderStatusShipped, e.ShippedAt
	case *OrderCancelled:
		o.Status, o.UpdatedAt = OrderStatusCancelled, e.CancelledAt
	default:
		return fmt.Errorf("order %s: cannot apply %T", o.ID, e)
	}
	return nil
}
