package orderdetails_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors/orderdetails"
	"github.com/readside/readside/projectors/projectortest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestConformance(t *testing.T) {
	t.Parallel()
	p := orderdetails.New()
	projectortest.Run(t, projectortest.NewDB, p, projectortest.Lifecycles{Orders: 80}.Generator(), projectortest.Features{
		Malformed: projectortest.MalformedDomainEvents(p.Spec().EventTypes...),
	})
}

func TestItems(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	p := orderdetails.New()
	_, err := projectortest.Lifecycles{Orders: 40}.Generate(ctx, pool)
	require.NoError(t, err)
	projectortest.ApplyStream(t, pool, p, outbox.Filter{EventTypes: p.Spec().EventTypes, AggregateTypes: p.Spec().AggregateTypes}, 25)

	// Every order's lines add up to its total, and match its OrderPlaced.
	var bad int
	require.NoError(t, pool.QueryRow(ctx, `
SELECT count(*) FROM readside.order_details d
  LEFT JOIN (SELECT order_id, count(*) AS n, sum(subtotal) AS total, bool_and(subtotal = quantity * unit_price) AS ok
               FROM readside.order_items GROUP BY order_id) i USING (order_id)
  JOIN readside.events e ON e.aggregate_id = d.order_id AND e.event_type = 'OrderPlaced'
 WHERE i.n IS DISTINCT FROM d.item_count OR i.total IS DISTINCT FROM d.total_amount OR NOT i.ok
    OR jsonb_array_length(e.event_data->'items') <> d.item_count`).Scan(&bad))
	require.Zero(t, bad)
	var orders, tracked int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE status = 'shipped' AND tracking_number IS NOT NULL) FROM readside.order_details`).Scan(&orders, &tracked))
	require.Equal(t, 40, orders)
	require.NotZero(t, tracked)
}
