package orderstatistics_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/orderstatistics"
	"github.com/readside/readside/projectors/projectortest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestConformance(t *testing.T) {
	t.Parallel()
	p := orderstatistics.New()
	projectortest.Run(t, projectortest.NewDB, p, projectortest.Lifecycles{Orders: 80}.Generator(), projectortest.Features{
		NotIdempotent: true, // a counter: see the package doc
		Malformed:     projectortest.MalformedDomainEvents(p.Spec().EventTypes...),
	})
}

// fromEvents is order_statistics computed from the event store alone.
const fromEvents = `
WITH last AS (
    SELECT DISTINCT ON (aggregate_id) aggregate_id,
           CASE event_type WHEN 'OrderPlaced' THEN 'pending' WHEN 'OrderConfirmed' THEN 'confirmed'
                           WHEN 'OrderShipped' THEN 'shipped' ELSE 'cancelled' END AS status
      FROM readside.events WHERE aggregate_type = 'Order' ORDER BY aggregate_id, version DESC
), agg AS (
    SELECT l.status, count(*) AS n, sum((p.event_data->>'total_amount')::numeric) AS revenue
      FROM last l JOIN readside.events p ON p.aggregate_id = l.aggregate_id AND p.event_type = 'OrderPlaced'
     GROUP BY l.status
)
SELECT s.status, coalesce(a.n, 0), coalesce(a.revenue, 0)::numeric(16,2)::text, coalesce(round(a.revenue / a.n, 2)::text, '')
  FROM (VALUES ('pending'), ('confirmed'), ('shipped'), ('cancelled')) s(status)
  LEFT JOIN agg a USING (status) ORDER BY s.status`

const fromProjection = `
SELECT status, order_count, total_revenue::text, coalesce(average_order_value::text, '')
  FROM readside.order_statistics ORDER BY status`

type stat struct {
	Status  string
	Count   int64
	Revenue string
	Average string
}

func stats(t *testing.T, pool *pgxpool.Pool, sql string) []stat {
	t.Helper()
	rows, err := pool.Query(context.Background(), sql)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[stat])
	require.NoError(t, err)
	return out
}

func TestEqualsAggregationOverEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	p := orderstatistics.New()
	_, err := projectortest.Lifecycles{Orders: 120}.Generate(ctx, pool)
	require.NoError(t, err)
	projectortest.ApplyStream(t, pool, p, outbox.Filter{EventTypes: p.Spec().EventTypes, AggregateTypes: p.Spec().AggregateTypes}, 37)
	want := stats(t, pool, fromEvents)
	require.Equal(t, want, stats(t, pool, fromProjection))
	for _, s := range want {
		require.NotZero(t, s.Count, "the generator reaches every status (%s)", s.Status)
	}
}

// The canary: applying a batch twice (what a runtime without exactly-once
// apply and checkpoint would do after a crash) cannot go unnoticed. Every
// event must be a legal step from the stored status, so the second
// application is refused (the runtime would park it, visible in the dead
// letters) and the counters stay right.
func TestDoubleApplyIsVisible(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	p := orderstatistics.New()
	_, err := projectortest.Lifecycles{Orders: 30}.Generate(ctx, pool)
	require.NoError(t, err)
	projectortest.ApplyStream(t, pool, p, outbox.Filter{EventTypes: p.Spec().EventTypes, AggregateTypes: p.Spec().AggregateTypes}, 1<<30)
	require.Equal(t, stats(t, pool, fromEvents), stats(t, pool, fromProjection))

	b, err := outbox.Fetch(ctx, pool, outbox.Start, 50, outbox.Filter{EventTypes: p.Spec().EventTypes, AggregateTypes: p.Spec().AggregateTypes})
	require.NoError(t, err)
	err = projectortest.InTx(ctx, pool, func(tx pgx.Tx) error {
		return p.Apply(ctx, tx, &projectors.Batch{Events: b.Events})
	})
	require.ErrorIs(t, err, domain.ErrInvalidEvent)
	require.Equal(t, stats(t, pool, fromEvents), stats(t, pool, fromProjection))
}
