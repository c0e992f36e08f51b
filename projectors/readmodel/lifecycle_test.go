package readmodel_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors/readmodel"
)

func orderEvent(id int64, typ string, version int, data string) *outbox.Event {
	return &outbox.Event{Cursor: outbox.Cursor{Position: id}, AggregateType: domain.OrderAggregate, AggregateID: "o-1",
		Type: typ, Version: version, SchemaVersion: 1, Data: []byte(data)}
}

// The first event of an aggregate in a batch is left for the upsert to
// check against the stored row; the later ones must follow the fold. Every
// refusal names the event and is an invalid event (the runtime parks it).
func TestLifecycleFollow(t *testing.T) {
	t.Parallel()
	confirmed := orderEvent(7, domain.OrderConfirmedType, 2, `{"confirmed_at":"2025-01-02T03:05:00Z"}`)
	shipped := orderEvent(8, domain.OrderShippedType, 3, `{"shipped_at":"2025-01-02T03:06:00Z"}`)

	var s readmodel.Steps[domain.OrderStatus]
	ev, err := readmodel.Orders.Follow("order_summary", &s, confirmed)
	require.NoError(t, err)
	require.IsType(t, &domain.OrderConfirmed{}, ev)
	require.Equal(t, int32(2), s.FirstVersion())
	require.Equal(t, ",pending,", s.Before())
	_, err = readmodel.Orders.Follow("order_summary", &s, shipped)
	require.NoError(t, err)

	// A second confirmation after shipping is not a legal step.
	_, err = readmodel.Orders.Follow("order_summary", &s, orderEvent(9, domain.OrderConfirmedType, 4, `{"confirmed_at":"2025-01-02T03:07:00Z"}`))
	require.ErrorIs(t, err, domain.ErrInvalidEvent)
	require.ErrorContains(t, err, "order_summary: event 9 (Order o-1 OrderConfirmed v4): order o-1: ")
	require.ErrorContains(t, err, "the order is shipped")

	// The stored row was not pending: the upsert refused the first event.
	err = readmodel.Orders.Refuse("order_summary", &s, readmodel.Refused{ID: "o-1", Status: ""})
	require.ErrorIs(t, err, domain.ErrInvalidEvent)
	require.ErrorContains(t, err, "order_summary: event 7 (Order o-1 OrderConfirmed v2): order o-1: ")
	require.ErrorContains(t, err, "does not exist")

	// A product event is not a step of an order's life cycle.
	var p readmodel.Steps[domain.OrderStatus]
	_, err = readmodel.Orders.Follow("order_summary", &p, &outbox.Event{Cursor: outbox.Cursor{Position: 10}, AggregateType: domain.ProductAggregate,
		AggregateID: "p-1", Type: "PriceUpdated", Version: 2, SchemaVersion: 1, Data: []byte(`{"new_price":1}`)})
	require.ErrorContains(t, err, "order_summary does not handle *domain.PriceUpdated")
}
