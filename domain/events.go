package domain

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Aggregate types.
const (
	OrderAggregate   = "Order"
	ProductAggregate = "Product"
)

// Event types, past tense as in the seeds.
const (
	OrderPlacedType    = "OrderPlaced"
	OrderConfirmedType = "OrderConfirmed"
	OrderShippedType   = "OrderShipped"
	OrderCancelledType = "OrderCancelled"

	ProductCreatedType = "ProductCreated"
	PriceUpdatedType   = "PriceUpdated"
	ProductDeletedType = "ProductDeleted"
)

// OrderItem is one line of an order.
type OrderItem struct {
	ProductID   string `json:"product_id,omitempty"`
	ProductName string `json:"product_name"`
	Quantity    int    `json:"quantity"`
	UnitPrice   Money  `json:"unit_price"`
}

// Subtotal is quantity times unit price.
func (i OrderItem) Subtotal() Money { return Money(int64(i.Quantity)) * i.UnitPrice }

// OrderPlaced starts an order (status pending).
type OrderPlaced struct {
	OrderID      string      `json:"order_id"`
	CustomerName string      `json:"customer_name"`
	Items        []OrderItem `json:"items"`
	TotalAmount  Money       `json:"total_amount"`
	PlacedAt     time.Time   `json:"placed_at"`
}

// OrderConfirmed moves a pending order to confirmed.
type OrderConfirmed struct {
	OrderID     string    `json:"order_id"`
	ConfirmedAt time.Time `json:"confirmed_at"`
}

// OrderShipped moves a confirmed order to shipped.
type OrderShipped struct {
	OrderID        string    `json:"order_id"`
	TrackingNumber string    `json:"tracking_number,omitempty"`
	ShippedAt      time.Time `json:"shipped_at"`
}

// OrderCancelled cancels a pending or confirmed order.
type OrderCancelled struct {
	OrderID     string    `json:"order_id"`
	Reason      string    `json:"reason,omitempty"`
	CancelledAt time.Time `json:"cancelled_at"`
}

// ProductCreated (schema version 2) adds a product to the catalog. Version 1
// had no SKU; UpcastEvent fills it in.
type ProductCreated struct {
	ProductID  string    `json:"product_id"`
	Name       string    `json:"name"`
	Price      Money     `json:"price"`
	CategoryID string    `json:"category_id,omitempty"`
	SKU        string    `json:"sku"`
	CreatedAt  time.Time `json:"created_at"`
}

// ProductCreatedSchemaVersion is the current schema version of ProductCreated.
const ProductCreatedSchemaVersion = 2

// PriceUpdated changes a product's price (always > 0).
type PriceUpdated struct {
	ProductID string    `json:"product_id"`
	OldPrice  Money     `json:"old_price"`
	NewPrice  Money     `json:"new_price"`
	UpdatedAt time.Time `json:"updated_at"`
}

// ProductDeleted removes a product from the catalog.
type ProductDeleted struct {
	ProductID string    `json:"product_id"`
	DeletedAt time.Time `json:"deleted_at"`
}

// SchemaVersion returns the current schema version of an event type.
func SchemaVersion(eventType string) int {
	if eventType == ProductCreatedType {
		return ProductCreatedSchemaVersion
	}
	return 1
}

// ErrUnknownEventType is returned by Decode for event types this domain
// does not know.
type ErrUnknownEventType struct{ Type string }

func (e *ErrUnknownEventType) Error() string { return fmt.Sprintf("unknown event type %q", e.Type) }

// Unwrap makes an unknown event type an ErrInvalidEvent.
func (e *ErrUnknownEventType) Unwrap() error { return ErrInvalidEvent }

// Permanent is true: the event's type will not become known by retrying.
func (e *ErrUnknownEventType) Permanent() bool { return true }

// Decode upcasts data from schemaVersion to the current version, decodes it
// into the event's Go type (a pointer, e.g. *OrderPlaced) and checks that it
// carries what the read models need (see validate). Every error wraps
// ErrInvalidEvent: a malformed payload ({}, null, a string, wrong field
// types), a missing required field, an amount beyond MaxMoney, an unknown
// type or schema version. Projections let the runtime park such events.
// Whether the event is a legal step for its aggregate is checked where the
// aggregate's state is known: OrderStatusAfter, ProductStatusAfter.
func Decode(eventType string, schemaVersion int, data []byte) (any, error) {
	data, err := Upcast(eventType, schemaVersion, data)
	if err != nil {
		return nil, &InvalidEventError{Type: eventType, Reason: err.Error(), Err: err}
	}
	var v any
	switch eventType {
	case OrderPlacedType:
		v = new(OrderPlaced)
	case OrderConfirmedType:
		v = new(OrderConfirmed)
	case OrderShippedType:
		v = new(OrderShipped)
	case OrderCancelledType:
		v = new(OrderCancelled)
	case ProductCreatedType:
		v = new(ProductCreated)
	case PriceUpdatedType:
		v = new(PriceUpdated)
	case ProductDeletedType:
		v = new(ProductDeleted)
	default:
		return nil, &ErrUnknownEventType{Type: eventType}
	}
	if !isObject(data) {
		return nil, &InvalidEventError{Type: eventType, Reason: "payload is not a JSON object"}
	}
	if err := unmarshal(data, v); err != nil {
		var ie *InvalidEventError
		if errors.As(err, &ie) {
			return nil, err
		}
		return nil, &InvalidEventError{Type: eventType, Reason: fmt.Sprintf("schema version %d does not decode: %v", schemaVersion, err), Err: err}
	}
	if err := validate(v); err != nil {
		return nil, err
	}
	return v, nil
}

// unmarshal decodes data into v. A type with its own UnmarshalJSON is
// called directly: json.Unmarshal would first scan the whole payload to
// check it and again to find its end, and UnmarshalJSON checks it anyway
// (its own json.Unmarshal), so the payload is read once instead of three
// times. Projections decode every event they apply: this is their hot path.
func unmarshal(data []byte, v any) error {
	if u, ok := v.(json.Unmarshaler); ok {
		return u.UnmarshalJSON(data)
	}
	return json.Unmarshal(data, v)
}

// isObject reports whether data's first non-blank byte opens a JSON object.
func isObject(data []byte) bool {
	for _, c := range data {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		}
		return c == '{'
	}
	return false
}
