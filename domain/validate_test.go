package domain_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/domain"
)

const (
	goodPlaced  = `{"order_id":"o-1","customer_name":"Alice","items":[{"product_name":"W","quantity":2,"unit_price":1.50}],"total_amount":3.00,"placed_at":"2025-01-02T03:04:05Z"}`
	goodCreated = `{"product_id":"p-1","name":"W","price":2.50,"sku":"W-1","created_at":"2025-01-02T03:04:05Z"}`
)

// TestDecodeRefusesNonsense: payloads that would put empty names, 0.00
// amounts or 0001-01-01 dates into the read models, or amounts they cannot
// hold, are ErrInvalidEvent, so projections park them with the reason.
func TestDecodeRefusesNonsense(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, typ, data string
		schema          int
	}{
		{"placed {}", domain.OrderPlacedType, `{}`, 1},
		{"placed null", domain.OrderPlacedType, `null`, 1},
		{"placed string", domain.OrderPlacedType, `"hello"`, 1},
		{"placed array", domain.OrderPlacedType, `[]`, 1},
		{"placed only an id", domain.OrderPlacedType, `{"order_id":"x"}`, 1},
		{"placed no customer", domain.OrderPlacedType, `{"total_amount":1,"placed_at":"2025-01-02T03:04:05Z"}`, 1},
		{"placed blank customer", domain.OrderPlacedType, `{"customer_name":" ","total_amount":1,"placed_at":"2025-01-02T03:04:05Z"}`, 1},
		{"placed no total", domain.OrderPlacedType, `{"customer_name":"A","placed_at":"2025-01-02T03:04:05Z"}`, 1},
		{"placed null total", domain.OrderPlacedType, `{"customer_name":"A","total_amount":null,"placed_at":"2025-01-02T03:04:05Z"}`, 1},
		{"placed no date", domain.OrderPlacedType, `{"customer_name":"A","total_amount":1}`, 1},
		{"placed negative total", domain.OrderPlacedType, `{"customer_name":"A","total_amount":-1,"placed_at":"2025-01-02T03:04:05Z"}`, 1},
		{"placed total 10^10", domain.OrderPlacedType, `{"customer_name":"A","total_amount":10000000000,"placed_at":"2025-01-02T03:04:05Z"}`, 1},
		{"placed item without name", domain.OrderPlacedType, `{"customer_name":"A","items":[{"quantity":1,"unit_price":1}],"total_amount":1,"placed_at":"2025-01-02T03:04:05Z"}`, 1},
		{"placed item quantity 0", domain.OrderPlacedType, `{"customer_name":"A","items":[{"product_name":"W","quantity":0,"unit_price":1}],"total_amount":1,"placed_at":"2025-01-02T03:04:05Z"}`, 1},
		{"placed item quantity beyond int32", domain.OrderPlacedType, `{"customer_name":"A","items":[{"product_name":"W","quantity":4294967297,"unit_price":1}],"total_amount":1,"placed_at":"2025-01-02T03:04:05Z"}`, 1},
		{"placed item subtotal 10^10", domain.OrderPlacedType, `{"customer_name":"A","items":[{"product_name":"W","quantity":2,"unit_price":5000000000}],"total_amount":1,"placed_at":"2025-01-02T03:04:05Z"}`, 1},
		{"placed wrong types", domain.OrderPlacedType, `{"order_id": 7, "customer_name": 42, "items": "none", "total_amount": 12.50, "placed_at": "yesterday"}`, 1},
		{"placed newer schema", domain.OrderPlacedType, goodPlaced, 2},
		{"confirmed {}", domain.OrderConfirmedType, `{}`, 1},
		{"confirmed null", domain.OrderConfirmedType, `null`, 1},
		{"shipped {}", domain.OrderShippedType, `{"order_id":"o-1"}`, 1},
		{"cancelled {}", domain.OrderCancelledType, `{"order_id":"o-1","reason":"r"}`, 1},
		{"created {}", domain.ProductCreatedType, `{}`, 2},
		{"created null", domain.ProductCreatedType, `null`, 2},
		{"created v1 {}", domain.ProductCreatedType, `{}`, 1},
		{"created no price", domain.ProductCreatedType, `{"name":"W","sku":"S","created_at":"2025-01-02T03:04:05Z"}`, 2},
		{"created no name", domain.ProductCreatedType, `{"price":1,"sku":"S","created_at":"2025-01-02T03:04:05Z"}`, 2},
		{"created no date", domain.ProductCreatedType, `{"name":"W","price":1,"sku":"S"}`, 2},
		{"created price 10^10", domain.ProductCreatedType, `{"name":"W","price":"10000000000","sku":"S","created_at":"2025-01-02T03:04:05Z"}`, 2},
		{"price {}", domain.PriceUpdatedType, `{}`, 1},
		{"price negative", domain.PriceUpdatedType, `{"new_price":-1}`, 1},
		{"deleted {}", domain.ProductDeletedType, `{}`, 1},
		{"unknown type", "OrderTeleported", `{"to":"Mars"}`, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v, err := domain.Decode(tc.typ, tc.schema, []byte(tc.data))
			require.ErrorIs(t, err, domain.ErrInvalidEvent, "decoded as %#v", v)
			require.Nil(t, v)
			var p interface{ Permanent() bool }
			require.True(t, errors.As(err, &p) && p.Permanent(), "the runtime parks it without retrying")
		})
	}
	for _, tc := range []struct{ typ, data string }{
		{domain.OrderPlacedType, goodPlaced},
		// A writer that records no lines (the Rails seed's OrderPlaced).
		{domain.OrderPlacedType, `{"order_id":"o-1","customer_name":"A","total_amount":"12.00","placed_at":"2025-01-02T03:04:05Z"}`},
		{domain.OrderConfirmedType, `{"order_id":"o-1","confirmed_at":"2025-01-02T03:04:05Z"}`},
		{domain.ProductCreatedType, goodCreated},
		{domain.PriceUpdatedType, `{"product_id":"p-1","old_price":1,"new_price":2,"updated_at":"2025-01-02T03:04:05Z"}`},
		{domain.ProductDeletedType, `{"product_id":"p-1","deleted_at":"2025-01-02T03:04:05Z"}`},
	} {
		_, err := domain.Decode(tc.typ, domain.SchemaVersion(tc.typ), []byte(tc.data))
		require.NoError(t, err, tc.data)
	}
}

// TestTransitions: an event that is not a legal step from the aggregate's
// status is ErrInvalidEvent, in the shared transition functions and in
// Apply (which the writer uses to load).
func TestTransitions(t *testing.T) {
	t.Parallel()
	placed, confirmed := &domain.OrderPlaced{}, &domain.OrderConfirmed{}
	shipped, cancelled := &domain.OrderShipped{}, &domain.OrderCancelled{}
	for _, tc := range []struct {
		from domain.OrderStatus
		e    domain.Event
		to   domain.OrderStatus // "" = illegal
	}{
		{"", placed, domain.OrderStatusPending},
		{"", confirmed, ""}, {"", shipped, ""}, {"", cancelled, ""},
		{domain.OrderStatusPending, placed, ""},
		{domain.OrderStatusPending, confirmed, domain.OrderStatusConfirmed},
		{domain.OrderStatusPending, shipped, ""},
		{domain.OrderStatusPending, cancelled, domain.OrderStatusCancelled},
		{domain.OrderStatusConfirmed, placed, ""},
		{domain.OrderStatusConfirmed, confirmed, ""},
		{domain.OrderStatusConfirmed, shipped, domain.OrderStatusShipped},
		{domain.OrderStatusConfirmed, cancelled, domain.OrderStatusCancelled},
		{domain.OrderStatusShipped, placed, ""}, {domain.OrderStatusShipped, cancelled, ""},
		{domain.OrderStatusCancelled, confirmed, ""}, {domain.OrderStatusCancelled, shipped, ""},
	} {
		got, err := domain.OrderStatusAfter(tc.from, tc.e)
		if tc.to == "" {
			require.ErrorIs(t, err, domain.ErrInvalidEvent, "%s + %s", tc.from, tc.e.EventType())
			o := orderIn(t, tc.from)
			require.ErrorIs(t, o.Apply(tc.e), domain.ErrInvalidEvent)
			continue
		}
		require.NoError(t, err)
		require.Equal(t, tc.to, got)
	}
	for _, tc := range []struct {
		from  domain.ProductStatus
		e     domain.Event
		legal bool
	}{
		{"", &domain.ProductCreated{}, true}, {"", &domain.PriceUpdated{}, false}, {"", &domain.ProductDeleted{}, false},
		{domain.ProductStatusActive, &domain.ProductCreated{}, false},
		{domain.ProductStatusActive, &domain.PriceUpdated{}, true},
		{domain.ProductStatusActive, &domain.ProductDeleted{}, true},
		{domain.ProductStatusDeleted, &domain.PriceUpdated{}, false},
		{domain.ProductStatusDeleted, &domain.ProductDeleted{}, false},
	} {
		_, err := domain.ProductStatusAfter(tc.from, tc.e)
		if tc.legal {
			require.NoError(t, err)
			continue
		}
		require.ErrorIs(t, err, domain.ErrInvalidEvent, "%s + %s", tc.from, tc.e.EventType())
		require.ErrorIs(t, productIn(t, tc.from).Apply(tc.e), domain.ErrInvalidEvent)
	}
	_, err := domain.OrderStatusAfter("", &domain.ProductDeleted{})
	require.ErrorIs(t, err, domain.ErrInvalidEvent)
}

// FuzzDecode: Decode never panics, and whatever it accepts is within what
// the read models hold and survives a round trip through JSON.
func FuzzDecode(f *testing.F) {
	for _, s := range []struct {
		typ    string
		schema int
		data   string
	}{
		{domain.OrderPlacedType, 1, goodPlaced},
		{domain.OrderPlacedType, 1, `{}`},
		{domain.OrderPlacedType, 1, `null`},
		{domain.OrderPlacedType, 1, `{"order_id":"x"}`},
		{domain.OrderPlacedType, 1, `{"customer_name":"A","total_amount":"--5","placed_at":"2025-01-02T03:04:05Z"}`},
		{domain.OrderConfirmedType, 1, `{"order_id":"o-1","confirmed_at":"2025-01-02T03:04:05Z"}`},
		{domain.OrderShippedType, 1, `{"shipped_at":"2025-01-02T03:04:05Z","tracking_number":"T"}`},
		{domain.OrderCancelledType, 1, `{"cancelled_at":"2025-01-02T03:04:05Z"}`},
		{domain.ProductCreatedType, 2, goodCreated},
		{domain.ProductCreatedType, 1, `{"product_id":"abc-123","name":"Old","price":12.5,"created_at":"2024-01-01T00:00:00Z"}`},
		{domain.PriceUpdatedType, 1, `{"old_price":1,"new_price":2}`},
		{domain.ProductDeletedType, 1, `{"deleted_at":"2025-01-02T03:04:05Z"}`},
		{"Foo", 1, `{}`},
	} {
		f.Add(s.typ, s.schema, []byte(s.data))
	}
	f.Fuzz(func(t *testing.T, typ string, schema int, data []byte) {
		v, err := domain.Decode(typ, schema, data)
		if err != nil {
			require.ErrorIs(t, err, domain.ErrInvalidEvent)
			require.Nil(t, v)
			return
		}
		e, ok := v.(domain.Event)
		require.True(t, ok, "%T", v)
		require.Equal(t, typ, e.EventType())
		switch e := e.(type) {
		case *domain.OrderPlaced:
			require.NotEmpty(t, e.CustomerName)
			require.False(t, e.PlacedAt.IsZero())
			require.True(t, e.TotalAmount >= 0 && e.TotalAmount <= domain.MaxMoney)
			for _, it := range e.Items {
				require.True(t, it.Quantity > 0 && it.Subtotal() >= 0 && it.Subtotal() <= domain.MaxMoney)
			}
		case *domain.ProductCreated:
			require.NotEmpty(t, e.Name)
			require.True(t, e.Price >= 0 && e.Price <= domain.MaxMoney)
		}
		b, err := json.Marshal(e)
		require.NoError(t, err)
		back, err := domain.Decode(typ, domain.SchemaVersion(typ), b)
		require.NoError(t, err, "%s", b)
		b2, err := json.Marshal(back)
		require.NoError(t, err)
		require.Equal(t, string(b), string(b2))
	})
}
