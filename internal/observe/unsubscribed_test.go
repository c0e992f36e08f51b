package observe_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/internal/promtest"
	"github.com/readside/readside/projectors"
)

// takes is a projection that subscribes to the given aggregate types.
type takes []string

func (t takes) Spec() projectors.Spec {
	return projectors.Spec{Name: "takes", AggregateTypes: t}
}
func (takes) Apply(context.Context, pgx.Tx, *projectors.Batch) error { return nil }
func (takes) Reset(context.Context, pgx.Tx) error                    { return nil }

// TestUnsubscribedEventsAreVisible: events whose aggregate type no
// projection takes ('Foo', the typo 'order') are accepted by the log and
// passed over by every projection, so they show in
// observe.UnsubscribedEvents and in readside_unsubscribed_events.
func TestUnsubscribedEventsAreVisible(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := pool.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version) VALUES
		('Order', 'o-1', 'OrderPlaced', '{}', 1), ('Product', 'p-1', 'ProductCreated', '{}', 1),
		('Foo', 'f-1', 'FooHappened', '{}', 1), ('order', 'o-1', 'OrderPlaced', '{}', 1), ('order', 'o-1', 'OrderConfirmed', '{}', 2)`)
	require.NoError(t, err)

	got, err := observe.UnsubscribedEvents(ctx, pool, takes{"Order"}, takes{"Product", "Bar"})
	require.NoError(t, err)
	require.Equal(t, []observe.UnsubscribedType{{AggregateType: "Foo", Events: 1}, {AggregateType: "order", Events: 2}}, got)

	got, err = observe.UnsubscribedEvents(ctx, pool, takes{"Order"}, takes{})
	require.NoError(t, err)
	require.Empty(t, got, "a projection of every aggregate type takes them all")

	reg := prometheus.NewRegistry()
	require.NoError(t, observe.RegisterUnsubscribedMetrics(reg, pool, nil, takes{"Order", "Product"}))
	m := promtest.Scrape(t, reg)
	require.Equal(t, 2.0, m["readside_unsubscribed_aggregate_types"])
	require.Equal(t, 1.0, m[`readside_unsubscribed_events{aggregate_type="Foo"}`])
	require.Equal(t, 2.0, m[`readside_unsubscribed_events{aggregate_type="order"}`])

	// Cheap on any log: the count stops at the cap.
	_, err = pool.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
		SELECT 'Foo', 'f-' || i, 'FooHappened', '{}', 1 FROM generate_series(2, $1) i`, observe.UnsubscribedCountCap+50)
	require.NoError(t, err)
	got, err = observe.UnsubscribedEvents(ctx, pool, takes{"Order", "Product"})
	require.NoError(t, err)
	require.Equal(t, observe.UnsubscribedType{AggregateType: "Foo", Events: observe.UnsubscribedCountCap}, got[0])
}
