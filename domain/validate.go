package domain

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
)

// ErrInvalidEvent: a stored event cannot be applied: its payload does not
// decode, lacks a field the read models need, carries a value they cannot
// hold, or its type is not a legal step from the aggregate's state
// (OrderShipped on a pending order, a second OrderPlaced). Retrying cannot
// help; projections return it so that the runtime parks the event with its
// reason, and the writer refuses commands on such an aggregate.
var ErrInvalidEvent = errors.New("invalid event")

// InvalidEventError says why an event cannot be applied. It unwraps to
// ErrInvalidEvent (and to the decoding error, if any).
type InvalidEventError struct {
	Type   string // event type, e.g. "OrderPlaced"
	Field  string // JSON field at fault; empty for the whole event
	Reason string
	Err    error // the decoding error, if any
}

func (e *InvalidEventError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("invalid %s: %s", e.Type, e.Reason)
	}
	return fmt.Sprintf("invalid %s: %s %s", e.Type, e.Field, e.Reason)
}

// Permanent is true: the same event can never be applied (the projector
// runtime parks it at its first failure instead of retrying it).
func (e *InvalidEventError) Permanent() bool { return true }

// Unwrap returns ErrInvalidEvent and the decoding error.
func (e *InvalidEventError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrInvalidEvent, e.Err}
	}
	return []error{ErrInvalidEvent}
}

func invalidEvent(typ, field, reason string) error {
	return &InvalidEventError{Type: typ, Field: field, Reason: reason}
}

// validate checks what the read models need of a decoded event: required
// fields present, amounts within MaxMoney, quantities that fit an integer
// column. It does not check the writer's command limits (name lengths,
// item counts): events written by other writers may exceed those and still
// be applied.
func validate(v any) error {
	switch e := v.(type) {
	case *OrderPlaced:
		const t = OrderPlacedType
		switch {
		case strings.TrimSpace(e.CustomerName) == "":
			return invalidEvent(t, "customer_name", "is required")
		case e.PlacedAt.IsZero():
			return invalidEvent(t, "placed_at", "is required")
		case e.TotalAmount < 0 || e.TotalAmount > MaxMoney:
			return invalidEvent(t, "total_amount", fmt.Sprintf("must be between 0 and %s", MaxMoney))
		}
		for i, it := range e.Items {
			field := func(name string) string { return fmt.Sprintf("items[%d].%s", i, name) }
			switch {
			case strings.TrimSpace(it.ProductName) == "":
				return invalidEvent(t, field("product_name"), "is required")
			case it.Quantity <= 0 || it.Quantity > math.MaxInt32:
				return invalidEvent(t, field("quantity"), fmt.Sprintf("must be between 1 and %d", math.MaxInt32))
			case it.UnitPrice < 0 || int64(it.UnitPrice) > int64(MaxMoney)/int64(it.Quantity):
				return invalidEvent(t, field("unit_price"), fmt.Sprintf("must be at least 0, and times the quantity at most %s", MaxMoney))
			}
		}
	case *OrderConfirmed:
		return requireTime(OrderConfirmedType, "confirmed_at", e.ConfirmedAt)
	case *OrderShipped:
		return requireTime(OrderShippedType, "shipped_at", e.ShippedAt)
	case *OrderCancelled:
		return requireTime(OrderCancelledType, "cancelled_at", e.CancelledAt)
	case *ProductCreated:
		const t = ProductCreatedType
		switch {
		case strings.TrimSpace(e.Name) == "":
			return invalidEvent(t, "name", "is required")
		case strings.TrimSpace(e.SKU) == "":
			return invalidEvent(t, "sku", "is required")
		case e.Price < 0:
			return invalidEvent(t, "price", "must not be negative")
		}
		return requireTime(t, "created_at", e.CreatedAt)
	case *PriceUpdated:
		if e.NewPrice < 0 {
			return invalidEvent(PriceUpdatedType, "new_price", "must not be negative")
		}
	case *ProductDeleted:
		return requireTime(ProductDeletedType, "deleted_at", e.DeletedAt)
	}
	return nil
}

func requireTime(typ, field string, t time.Time) error {
	if t.IsZero() {
		return invalidEvent(typ, field, "is required")
	}
	return nil
}

// Money fields without a natural "missing" value are decoded through these
// shadows, so that an absent or null amount is an error rather than 0.00.

// UnmarshalJSON decodes an OrderPlaced; total_amount is required.
func (e *OrderPlaced) UnmarshalJSON(b []byte) error {
	type plain OrderPlaced
	aux := struct {
		*plain
		TotalAmount *Money `json:"total_amount"`
	}{plain: (*plain)(e)}
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	if aux.TotalAmount == nil {
		return invalidEvent(OrderPlacedType, "total_amount", "is required")
	}
	e.TotalAmount = *aux.TotalAmount
	return nil
}

// UnmarshalJSON decodes a ProductCreated; price is required.
func (e *ProductCreated) UnmarshalJSON(b []byte) error {
	type plain ProductCreated
	aux := struct {
		*plain
		Price *Money `json:"price"`
	}{plain: (*plain)(e)}
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	if aux.Price == nil {
		return invalidEvent(ProductCreatedType, "price", "is required")
	}
	e.Price = *aux.Price
	return nil
}

// UnmarshalJSON decodes a PriceUpdated; new_price is required.
func (e *PriceUpdated) UnmarshalJSON(b []byte) error {
	type plain PriceUpdated
	aux := struct {
		*plain
		NewPrice *Money `json:"new_price"`
	}{plain: (*plain)(e)}
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	if aux.NewPrice == nil {
		return invalidEvent(PriceUpdatedType, "new_price", "is required")
	}
	e.NewPrice = *aux.NewPrice
	return nil
}
