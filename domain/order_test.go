package domain_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/domain"
)

var now = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func item(qty int, price domain.Money) domain.OrderItem {
	return domain.OrderItem{ProductID: "p-1", ProductName: "Widget", Quantity: qty, UnitPrice: price}
}

// orderIn returns an order driven to status (empty: not placed) by its
// events.
func orderIn(t *testing.T, status domain.OrderStatus) *domain.Order {
	t.Helper()
	o := new(domain.Order)
	if status == "" {
		return o
	}
	apply := func(es []domain.Event, err error) {
		t.Helper()
		require.NoError(t, err)
		for _, e := range es {
			require.NoError(t, o.Apply(e))
		}
	}
	apply(o.Place(domain.PlaceOrder{OrderID: "o-1", CustomerName: "Alice", Items: []domain.OrderItem{item(2, 150)}}, now))
	switch status {
	case domain.OrderStatusConfirmed:
		apply(o.Confirm(domain.ConfirmOrder{OrderID: "o-1"}, now))
	case domain.OrderStatusShipped:
		apply(o.Confirm(domain.ConfirmOrder{OrderID: "o-1"}, now))
		apply(o.Ship(domain.ShipOrder{OrderID: "o-1"}, now))
	case domain.OrderStatusCancelled:
		apply(o.Cancel(domain.CancelOrder{OrderID: "o-1"}, now))
	}
	require.Equal(t, status, o.Status)
	return o
}

func TestOrderTransitions(t *testing.T) {
	t.Parallel()
	type decide func(o *domain.Order) ([]domain.Event, error)
	place := func(o *domain.Order) ([]domain.Event, error) {
		return o.Place(domain.PlaceOrder{OrderID: "o-1", CustomerName: "Bob", Items: []domain.OrderItem{item(1, 100)}}, now)
	}
	confirm := func(o *domain.Order) ([]domain.Event, error) {
		return o.Confirm(domain.ConfirmOrder{OrderID: "o-1"}, now)
	}
	ship := func(o *domain.Order) ([]domain.Event, error) {
		return o.Ship(domain.ShipOrder{OrderID: "o-1", TrackingNumber: "TN1"}, now)
	}
	cancel := func(o *domain.Order) ([]domain.Event, error) {
		return o.Cancel(domain.CancelOrder{OrderID: "o-1", Reason: "changed mind"}, now)
	}
	const (
		none                  = domain.OrderStatus("")
		pending, confirmed    = domain.OrderStatusPending, domain.OrderStatusConfirmed
		shipped, cancelled    = domain.OrderStatusShipped, domain.OrderStatusCancelled
		ok, transition, unfnd = "ok", "transition", "not found"
		exists                = "exists"
	)
	for _, tc := range []struct {
		from    domain.OrderStatus
		command string
		decide  decide
		want    string
		to      domain.OrderStatus
	}{
		{none, "place", place, ok, pending},
		{none, "confirm", confirm, unfnd, ""},
		{none, "ship", ship, unfnd, ""},
		{none, "cancel", cancel, unfnd, ""},
		{pending, "place", place, exists, ""},
		{pending, "confirm", confirm, ok, confirmed},
		{pending, "ship", ship, transition, ""},
		{pending, "cancel", cancel, ok, cancelled},
		{confirmed, "place", place, exists, ""},
		{confirmed, "confirm", confirm, transition, ""},
		{confirmed, "ship", ship, ok, shipped},
		{confirmed, "cancel", cancel, ok, cancelled},
		{shipped, "confirm", confirm, transition, ""},
		{shipped, "ship", ship, transition, ""},
		{shipped, "cancel", cancel, transition, ""},
		{cancelled, "confirm", confirm, transition, ""},
		{cancelled, "ship", ship, transition, ""},
		{cancelled, "cancel", cancel, transition, ""},
	} {
		t.Run(string(tc.from)+"/"+tc.command, func(t *testing.T) {
			t.Parallel()
			o := orderIn(t, tc.from)
			before := *o
			events, err := tc.decide(o)
			require.Equal(t, before, *o, "deciding must not change the state")
			switch tc.want {
			case ok:
				require.NoError(t, err)
				require.Len(t, events, 1)
				for _, e := range events {
					require.NoError(t, o.Apply(e))
				}
				require.Equal(t, tc.to, o.Status)
			case transition:
				require.ErrorIs(t, err, domain.ErrInvalidTransition)
				var te *domain.TransitionError
				require.ErrorAs(t, err, &te)
				require.Equal(t, string(tc.from), te.Status)
			case unfnd:
				require.ErrorIs(t, err, domain.ErrNotFound)
			case exists:
				require.ErrorIs(t, err, domain.ErrAlreadyExists)
			}
		})
	}
}

func TestPlaceOrderValidation(t *testing.T) {
	t.Parallel()
	valid := func() domain.PlaceOrder {
		return domain.PlaceOrder{OrderID: "o-1", CustomerName: "Alice", Items: []domain.OrderItem{item(2, 150)}}
	}
	for name, tc := range map[string]struct {
		mutate func(*domain.PlaceOrder)
		field  string
	}{
		"empty customer":  {func(c *domain.PlaceOrder) { c.CustomerName = "  " }, "customer_name"},
		"no items":        {func(c *domain.PlaceOrder) { c.Items = nil }, "items"},
		"zero quantity":   {func(c *domain.PlaceOrder) { c.Items[0].Quantity = 0 }, "items[0].quantity"},
		"negative qty":    {func(c *domain.PlaceOrder) { c.Items[0].Quantity = -1 }, "items[0].quantity"},
		"zero price":      {func(c *domain.PlaceOrder) { c.Items[0].UnitPrice = 0 }, "items[0].unit_price"},
		"negative price":  {func(c *domain.PlaceOrder) { c.Items[0].UnitPrice = -5 }, "items[0].unit_price"},
		"empty item name": {func(c *domain.PlaceOrder) { c.Items[0].ProductName = "" }, "items[0].product_name"},
		"bad order id":    {func(c *domain.PlaceOrder) { c.OrderID = "a b" }, "order_id"},
		"empty order id":  {func(c *domain.PlaceOrder) { c.OrderID = "" }, "order_id"},
		"too many items":  {func(c *domain.PlaceOrder) { c.Items = make([]domain.OrderItem, domain.MaxOrderItems+1) }, "items"},
		"long customer":   {func(c *domain.PlaceOrder) { c.CustomerName = strings.Repeat("x", 201) }, "customer_name"},
		"overflowing total": {func(c *domain.PlaceOrder) {
			c.Items = []domain.OrderItem{item(domain.MaxItemQuantity, 1e6), item(domain.MaxItemQuantity, 1e6)}
		}, "items"},
		"int64 overflow": {func(c *domain.PlaceOrder) {
			c.Items = []domain.OrderItem{item(domain.MaxItemQuantity, 1e15), item(domain.MaxItemQuantity, 1e15)}
		}, "items[0].unit_price"},
		"subtotal beyond the read models": {func(c *domain.PlaceOrder) { c.Items = []domain.OrderItem{item(2, domain.MaxMoney)} }, "items"},
		"total beyond the read models": {func(c *domain.PlaceOrder) {
			c.Items = []domain.OrderItem{item(1, domain.MaxMoney), item(1, 1)}
		}, "items"},
		"unit price beyond the read models": {func(c *domain.PlaceOrder) { c.Items[0].UnitPrice = domain.MaxMoney + 1 }, "items[0].unit_price"},
		"NUL in customer":                   {func(c *domain.PlaceOrder) { c.CustomerName = "A\x00" }, "customer_name"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cmd := valid()
			tc.mutate(&cmd)
			events, err := new(domain.Order).Place(cmd, now)
			require.ErrorIs(t, err, domain.ErrValidation)
			require.Nil(t, events)
			var ve *domain.ValidationError
			require.ErrorAs(t, err, &ve)
			require.Equal(t, tc.field, ve.Field)
		})
	}

	events, err := new(domain.Order).Place(domain.PlaceOrder{OrderID: "o-1", CustomerName: " Alice ",
		Items: []domain.OrderItem{item(2, 150), item(1, 1999)}}, now)
	require.NoError(t, err)
	placed := events[0].(*domain.OrderPlaced)
	require.Equal(t, domain.Money(2299), placed.TotalAmount)
	require.Equal(t, "Alice", placed.CustomerName)
}

func TestOrderStateRoundTripsThroughJSON(t *testing.T) {
	t.Parallel()
	o := orderIn(t, domain.OrderStatusShipped)
	b, err := json.Marshal(o)
	require.NoError(t, err)
	var back domain.Order
	require.NoError(t, json.Unmarshal(b, &back))
	require.Equal(t, *o, back)
}

func TestEventsRoundTripThroughDecode(t *testing.T) {
	t.Parallel()
	o := new(domain.Order)
	events, err := o.Place(domain.PlaceOrder{OrderID: "o-1", CustomerName: "Alice", Items: []domain.OrderItem{item(3, 1234)}}, now)
	require.NoError(t, err)
	b, err := json.Marshal(events[0])
	require.NoError(t, err)
	got, err := domain.Decode(events[0].EventType(), domain.SchemaVersion(events[0].EventType()), b)
	require.NoError(t, err)
	require.Equal(t, events[0], got)
}

func TestNewID(t *testing.T) {
	t.Parallel()
	a, b := domain.NewID(), domain.NewID()
	require.NotEqual(t, a, b)
	require.Len(t, a, 36)
	require.True(t, domain.ValidID(a))
}
