package ordersummary_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/projectortest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestConformance(t *testing.T) {
	t.Parallel()
	p := ordersummary.New()
	projectortest.Run(t, projectortest.NewDB, p, projectortest.Lifecycles{Orders: 80}.Generator(), projectortest.Features{
		Malformed: projectortest.MalformedDomainEvents(p.Spec().EventTypes...),
	})
}

func TestMatchesEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	p := ordersummary.New()
	_, err := projectortest.Lifecycles{Orders: 50}.Generate(ctx, pool)
	require.NoError(t, err)
	projectortest.ApplyStream(t, pool, p, outbox.Filter{EventTypes: p.Spec().EventTypes, AggregateTypes: p.Spec().AggregateTypes}, 25)

	// The read model agrees with a direct aggregation over the event store.
	var mismatches int
	require.NoError(t, pool.QueryRow(ctx, `
WITH last AS (
    SELECT DISTINCT ON (aggregate_id) aggregate_id, event_type, version
      FROM readside.events WHERE aggregate_type = 'Order' ORDER BY aggregate_id, version DESC
), placed AS (
    SELECT aggregate_id, event_data FROM readside.events WHERE event_type = 'OrderPlaced'
)
SELECT count(*) FROM last l JOIN placed p USING (aggregate_id)
  FULL JOIN readside.order_summary s ON s.order_id = l.aggregate_id
 WHERE s.order_id IS NULL OR l.aggregate_id IS NULL
    OR s.version <> l.version
    OR s.total_amount <> (p.event_data->>'total_amount')::numeric
    OR s.customer_name <> p.event_data->>'customer_name'
    OR s.status <> CASE l.event_type WHEN 'OrderPlaced' THEN 'pending' WHEN 'OrderConfirmed' THEN 'confirmed'
                                     WHEN 'OrderShipped' THEN 'shipped' ELSE 'cancelled' END`).Scan(&mismatches))
	require.Zero(t, mismatches)
	var shipped int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.order_summary WHERE status = 'shipped' AND shipped_at IS NOT NULL AND confirmed_at IS NOT NULL`).Scan(&shipped))
	require.NotZero(t, shipped)
}
