package domain

import (
	"fmt"
	"strings"
)

// The legal steps of each aggregate, shared by the writer (Apply, when it
// loads an aggregate) and the projections (which check a batch against the
// state they stored): an event that is not a legal step from the state
// before it is an InvalidEventError, and projections park it.

// OrderStatusesBefore returns the statuses an order may be in when e is
// applied; the empty status is an order not yet placed. nil when e is not
// an order event.
func OrderStatusesBefore(e Event) []OrderStatus {
	switch e.(type) {
	case *OrderPlaced:
		return []OrderStatus{""}
	case *OrderConfirmed:
		return []OrderStatus{OrderStatusPending}
	case *OrderShipped:
		return []OrderStatus{OrderStatusConfirmed}
	case *OrderCancelled:
		return []OrderStatus{OrderStatusPending, OrderStatusConfirmed}
	}
	return nil
}

// OrderStatusAfter returns the status of an order in status from ("": not
// placed) after e, or an InvalidEventError when e is not a legal step from
// there.
func OrderStatusAfter(from OrderStatus, e Event) (OrderStatus, error) {
	var to OrderStatus
	switch e.(type) {
	case *OrderPlaced:
		to = OrderStatusPending
	case *OrderConfirmed:
		to = OrderStatusConfirmed
	case *OrderShipped:
		to = OrderStatusShipped
	case *OrderCancelled:
		to = OrderStatusCancelled
	default:
		return from, &InvalidEventError{Type: fmt.Sprintf("%T", e), Reason: "is not an order event"}
	}
	for _, s := range OrderStatusesBefore(e) {
		if s == from {
			return to, nil
		}
	}
	return from, illegalStep(OrderAggregate, string(from), e.EventType())
}

// ProductStatusesBefore is OrderStatusesBefore for products.
func ProductStatusesBefore(e Event) []ProductStatus {
	switch e.(type) {
	case *ProductCreated:
		return []ProductStatus{""}
	case *PriceUpdated, *ProductDeleted:
		return []ProductStatus{ProductStatusActive}
	}
	return nil
}

// ProductStatusAfter is OrderStatusAfter for products.
func ProductStatusAfter(from ProductStatus, e Event) (ProductStatus, error) {
	var to ProductStatus
	switch e.(type) {
	case *ProductCreated, *PriceUpdated:
		to = ProductStatusActive
	case *ProductDeleted:
		to = ProductStatusDeleted
	default:
		return from, &InvalidEventError{Type: fmt.Sprintf("%T", e), Reason: "is not a product event"}
	}
	for _, s := range ProductStatusesBefore(e) {
		if s == from {
			return to, nil
		}
	}
	return from, illegalStep(ProductAggregate, string(from), e.EventType())
}

func illegalStep(aggregate, from, eventType string) error {
	state := "does not exist"
	if from != "" {
		state = "is " + from
	}
	return &InvalidEventError{Type: eventType, Reason: fmt.Sprintf("cannot follow: the %s %s", strings.ToLower(aggregate), state)}
}

// StatusesBeforeSQL is the statuses an order or product may be in when e is
// applied, as ",a,b," (the empty status of an aggregate not yet created
// gives ",,"): the shape the read models' transition checks match with
// strpos in SQL; "," (no status matches) when e is neither.
func StatusesBeforeSQL(e Event) string {
	var sb strings.Builder
	sb.WriteByte(',')
	for _, s := range OrderStatusesBefore(e) {
		sb.WriteString(string(s) + ",")
	}
	for _, s := range ProductStatusesBefore(e) {
		sb.WriteString(string(s) + ",")
	}
	return sb.String()
}
