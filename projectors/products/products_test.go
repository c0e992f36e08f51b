package products_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors/products"
	"github.com/readside/readside/projectors/projectortest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestConformance(t *testing.T) {
	t.Parallel()
	p := products.New()
	projectortest.Run(t, projectortest.NewDB, p, projectortest.Lifecycles{Orders: 80, Products: 60}.Generator(), projectortest.Features{
		Malformed: projectortest.MalformedDomainEvents(p.Spec().EventTypes...),
	})
}

func TestCatalog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	p := products.New()
	_, err := projectortest.Lifecycles{Orders: 60, Products: 40, V1Share: 0.5}.Generate(ctx, pool)
	require.NoError(t, err)
	projectortest.ApplyStream(t, pool, p, outbox.Filter{EventTypes: p.Spec().EventTypes, AggregateTypes: p.Spec().AggregateTypes}, 10)

	// Version 1 payloads got the upcaster's SKU, version 2 their own.
	var v1, v1Upcast, total int
	require.NoError(t, pool.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE e.schema_version = 1),
       count(*) FILTER (WHERE e.schema_version = 1 AND p.sku = left('SKU-' || upper(replace(p.product_id, '-', '')), 12)),
       count(*)
  FROM readside.products p JOIN readside.events e ON e.aggregate_id = p.product_id AND e.event_type = 'ProductCreated'`).Scan(&v1, &v1Upcast, &total))
	require.Equal(t, 40, total)
	require.NotZero(t, v1)
	require.Equal(t, v1, v1Upcast)

	// Price and deletion follow the last event of each product.
	var bad int
	require.NoError(t, pool.QueryRow(ctx, `
WITH last_price AS (
    SELECT DISTINCT ON (aggregate_id) aggregate_id,
           coalesce(event_data->>'new_price', event_data->>'price')::numeric AS price
      FROM readside.events WHERE event_type IN ('ProductCreated', 'PriceUpdated') ORDER BY aggregate_id, version DESC
)
SELECT count(*) FROM readside.products p JOIN last_price l ON l.aggregate_id = p.product_id
 WHERE p.price <> l.price
    OR p.deleted <> EXISTS (SELECT 1 FROM readside.events d WHERE d.aggregate_id = p.product_id AND d.event_type = 'ProductDeleted')
    OR p.deleted <> (p.deleted_at IS NOT NULL)`).Scan(&bad))
	require.Zero(t, bad)
}
