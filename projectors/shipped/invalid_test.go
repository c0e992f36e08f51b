package shipped_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/orderstatistics"
	"github.com/readside/readside/projectors/shipped"
)

const (
	placedJSON    = `{"order_id":"%s","customer_name":"Alice","items":[{"product_name":"W","quantity":2,"unit_price":1.50}],"total_amount":3.00,"placed_at":"2025-01-02T03:04:05Z"}`
	confirmedJSON = `{"confirmed_at":"2025-01-02T03:05:00Z"}`
	shippedJSON   = `{"shipped_at":"2025-01-02T03:06:00Z"}`
	createdJSON   = `{"product_id":"p","name":"W","price":2.50,"sku":"W-1","created_at":"2025-01-02T03:04:05Z"}`
)

// TestNonsenseEventsAreParked: events written through the SQL contract
// that no read model can apply (empty or null payloads, an OrderPlaced with
// nothing but an id, a second OrderPlaced on a confirmed order, OrderShipped
// on a pending order, a second ProductCreated) are parked by every read
// model with their reason, and change no read model or counter; valid
// events around them are applied.
func TestNonsenseEventsAreParked(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	type ev struct {
		agg, id, typ, data string
		version            int
	}
	bad := []ev{ // each must be parked as failed by every projection that receives it
		{"Order", "o-empty", "OrderPlaced", `{}`, 1},
		{"Order", "o-null", "OrderPlaced", `null`, 1},
		{"Order", "o-idonly", "OrderPlaced", `{"order_id":"x"}`, 1},
		{"Order", "o-twice", "OrderPlaced", sprintf(placedJSON, "o-twice"), 3},
		{"Order", "o-skip", "OrderShipped", shippedJSON, 2},
		{"Order", "o-unplaced", "OrderConfirmed", confirmedJSON, 1},
		{"Product", "p-twice", "ProductCreated", createdJSON, 2},
	}
	good := []ev{
		{"Order", "o-twice", "OrderPlaced", sprintf(placedJSON, "o-twice"), 1},
		{"Order", "o-twice", "OrderConfirmed", confirmedJSON, 2},
		{"Order", "o-skip", "OrderPlaced", sprintf(placedJSON, "o-skip"), 1},
		{"Order", "o-ok", "OrderPlaced", sprintf(placedJSON, "o-ok"), 1},
		{"Order", "o-ok", "OrderConfirmed", confirmedJSON, 2},
		{"Order", "o-ok", "OrderShipped", shippedJSON, 3},
		{"Product", "p-twice", "ProductCreated", createdJSON, 1},
	}
	insert := func(e ev) {
		t.Helper()
		_, err := pool.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
			VALUES ($1, $2, $3, $4::jsonb, $5)`, e.agg, e.id, e.typ, e.data, e.version)
		require.NoError(t, err, "%+v", e)
	}
	// Half before the worker starts (one batch), half after (the stored
	// rows decide).
	for _, e := range good[:4] {
		insert(e)
	}
	for _, e := range bad[:5] {
		if e.version == 1 {
			insert(e)
		}
	}
	w, err := projectors.NewWorker(projectors.Config{Pool: pool, Projections: shipped.ReadModels(), PollInterval: 20 * time.Millisecond,
		MaxAttempts: 1, RetryBackoff: time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	require.NoError(t, w.Start(ctx))
	t.Cleanup(func() { require.NoError(t, w.Stop(context.Background())) })
	for _, e := range good[4:] {
		insert(e)
	}
	for _, e := range bad {
		if e.version > 1 || e.id == "o-unplaced" {
			insert(e)
		}
	}
	waitCaughtUp(t, pool)

	var rows []string
	require.NoError(t, pgxCollect(ctx, pool, `SELECT order_id || ' ' || status || ' v' || version || ' ' || customer_name || ' ' || total_amount
		FROM readside.order_summary ORDER BY order_id`, &rows))
	want := []string{"o-ok shipped v3 Alice 3.00", "o-skip pending v1 Alice 3.00", "o-twice confirmed v2 Alice 3.00"}
	require.Equal(t, want, rows, "order_summary")
	require.NoError(t, pgxCollect(ctx, pool, `SELECT order_id || ' ' || status || ' v' || version || ' ' || customer_name || ' ' || total_amount
		FROM readside.order_details ORDER BY order_id`, &rows))
	require.Equal(t, want, rows, "order_details")
	require.NoError(t, pgxCollect(ctx, pool, `SELECT product_id || ' v' || version FROM readside.products`, &rows))
	require.Equal(t, []string{"p-twice v1"}, rows)
	require.NoError(t, pgxCollect(ctx, pool, `SELECT status || ' ' || order_count || ' ' || total_revenue FROM readside.order_statistics
		ORDER BY status`, &rows))
	require.Equal(t, []string{"cancelled 0 0.00", "confirmed 1 3.00", "pending 1 3.00", "shipped 1 3.00"}, rows)
	mismatches, err := orderstatistics.Mismatches(ctx, pool)
	require.NoError(t, err)
	require.Empty(t, mismatches)

	for _, p := range shipped.ReadModels() {
		name := p.Spec().Name
		for _, e := range bad {
			if (e.agg == "Product") != (name == "products") {
				continue
			}
			var reason, msg string
			require.NoError(t, pool.QueryRow(ctx, `SELECT reason, error FROM readside.dead_letters
				WHERE projection = $1 AND aggregate_id = $2 AND version = $3`, name, e.id, e.version).Scan(&reason, &msg),
				"%s: %s v%d must be parked", name, e.id, e.version)
			require.Equal(t, "failed", reason)
			require.Contains(t, msg, "invalid "+e.typ, "%s: %s v%d", name, e.id, e.version)
		}
	}
}

func waitCaughtUp(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		segs, err := observe.Status(context.Background(), pool)
		require.NoError(t, err)
		behind := len(segs) == 0
		for _, s := range segs {
			behind = behind || s.LagEvents > 0
		}
		if !behind {
			return
		}
		require.True(t, time.Now().Before(deadline), "projections did not catch up: %+v", segs)
		time.Sleep(20 * time.Millisecond)
	}
}

func pgxCollect(ctx context.Context, pool *pgxpool.Pool, sql string, out *[]string) error {
	rows, err := pool.Query(ctx, sql)
	if err != nil {
		return err
	}
	defer rows.Close()
	*out = (*out)[:0]
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return err
		}
		*out = append(*out, s)
	}
	return rows.Err()
}

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }
