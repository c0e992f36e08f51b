package shipped_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/orderstatistics"
	"github.com/readside/readside/projectors/projectortest"
	"github.com/readside/readside/projectors/shipped"
)

// orderTables are the order read models' tables, with the order id column.
var orderTables = map[string]string{
	"order_summary": "order_id", "order_details": "order_id", "order_items": "order_id", "order_statistics_orders": "order_id",
}

// orderRows dumps one order's rows in every order read model, without
// updated_at (a repair rewrites the row).
func orderRows(t *testing.T, pool *pgxpool.Pool, id string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for table, col := range orderTables {
		rows, err := pool.Query(t.Context(), fmt.Sprintf(`SELECT (to_jsonb(t) - 'updated_at')::text FROM readside.%s t WHERE %s = $1 ORDER BY 1`, table, col), id)
		require.NoError(t, err)
		out[table], err = pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
	}
	return out
}

func startFleet(t *testing.T, pool *pgxpool.Pool, projs []projectors.Projection, n int) {
	t.Helper()
	for i := range n {
		w, err := projectors.NewWorker(projectors.Config{Pool: pool, WorkerID: fmt.Sprintf("w%d", i), Projections: projs,
			BatchSize: 20, PollInterval: 20 * time.Millisecond, LeaseTTL: 2 * time.Second,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		require.NoError(t, err)
		require.NoError(t, w.Start(context.Background()))
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			require.NoError(t, w.Stop(ctx))
		})
	}
}

// caughtUp waits until every checkpoint stands at the last event.
func caughtUp(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var behind int
		require.NoError(t, pool.QueryRow(t.Context(), `SELECT count(*) FROM readside.checkpoints c,
			(SELECT txid, id FROM readside.events ORDER BY txid DESC, id DESC LIMIT 1) e
			WHERE (c.cursor_txid, c.cursor_position) < (e.txid, e.id)`).Scan(&behind))
		if behind == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d segments did not catch up", behind)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// liveWriter places and confirms new orders until ctx is done.
func liveWriter(ctx context.Context, t *testing.T, pool *pgxpool.Pool, wg *sync.WaitGroup) {
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			id := fmt.Sprintf("live-%05d", i)
			placed, _ := json.Marshal(domain.OrderPlaced{OrderID: id, CustomerName: "Live", TotalAmount: 1500, PlacedAt: time.Now().UTC(),
				Items: []domain.OrderItem{{ProductName: "Thing", Quantity: 3, UnitPrice: 500}}})
			confirmed, _ := json.Marshal(domain.OrderConfirmed{OrderID: id, ConfirmedAt: time.Now().UTC()})
			err := pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
				_, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: domain.OrderAggregate, ID: id}, 0, []outbox.NewEvent{
					{Type: domain.OrderPlacedType, Data: placed}, {Type: domain.OrderConfirmedType, Data: confirmed}})
				return err
			})
			if err != nil && ctx.Err() == nil {
				t.Errorf("live writer: %v", err)
				return
			}
		}
	})
}

// An order's rows corrupted by hand in order_summary, order_details (and
// its lines) and order_statistics_orders: repair restores exactly its fold,
// while writers append and two projectors apply, and order_statistics
// equals the aggregation over the events afterwards.
func TestRepairRestoresCorruptedOrder(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool := pgtest.NewDB(t)
	_, err := projectortest.Lifecycles{Orders: 40, Writers: 2}.Generate(ctx, pool)
	require.NoError(t, err)
	projs := shipped.ReadModels()
	startFleet(t, pool, projs, 2)
	caughtUp(t, pool)

	var id string
	var nEvents int
	require.NoError(t, pool.QueryRow(ctx, `SELECT aggregate_id, count(*) FROM readside.events WHERE aggregate_type = 'Order'
		GROUP BY 1 HAVING count(*) >= 3 ORDER BY 1 LIMIT 1`).Scan(&id, &nEvents))
	before := orderRows(t, pool, id)
	require.NotEmpty(t, before["order_items"])

	for _, sql := range []string{
		`UPDATE readside.order_summary SET status = 'pending', total_amount = 0, customer_name = 'Mallory', shipped_at = NULL, version = 99 WHERE order_id = $1`,
		`UPDATE readside.order_details SET total_amount = 1, item_count = 42, tracking_number = 'forged', version = 99 WHERE order_id = $1`,
		`DELETE FROM readside.order_items WHERE order_id = $1 AND line_no = (SELECT min(line_no) FROM readside.order_items WHERE order_id = $1)`,
		`INSERT INTO readside.order_items (order_id, line_no, product_name, quantity, unit_price, subtotal) VALUES ($1, 1000, 'ghost', 1, 1, 1)`,
		`UPDATE readside.order_statistics_orders SET status = 'pending', total_amount = 777777 WHERE order_id = $1`,
	} {
		_, err = pool.Exec(ctx, sql, id)
		require.NoError(t, err, sql)
	}
	require.NotEqual(t, before, orderRows(t, pool, id))

	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	liveWriter(wctx, t, pool, &wg)
	for _, p := range projs {
		if p.Spec().AggregateTypes[0] != domain.OrderAggregate {
			continue
		}
		res, err := control.Repair(ctx, pool, p, control.RepairOptions{AggregateIDs: []string{id}})
		require.NoError(t, err, p.Spec().Name)
		require.Equal(t, []control.RepairedAggregate{{Type: "Order", ID: id, Segment: segmentOf(t, pool, id, p), Replayed: nEvents}}, res, p.Spec().Name)
	}
	require.Equal(t, before, orderRows(t, pool, id), "repaired while the writers and the fleet run")
	// (The repairs can end before the writer's first commit: let it write
	// one order at least, so that the fleet has live events to apply.)
	deadline := time.Now().Add(30 * time.Second)
	for count(t, pool, `SELECT count(*) FROM readside.events WHERE aggregate_id LIKE 'live-%'`) == 0 {
		require.True(t, time.Now().Before(deadline), "the live writer wrote nothing")
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	wg.Wait()
	caughtUp(t, pool)
	require.Equal(t, before, orderRows(t, pool, id))
	require.Greater(t, count(t, pool, `SELECT count(*) FROM readside.order_summary WHERE order_id LIKE 'live-%'`), 0)
	stopFleetAndCheck(t, pool)
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(t.Context(), sql, args...).Scan(&n))
	return n
}

// stopFleetAndCheck holds the fleet (every checkpoint row lock, so the
// read models hold still) and checks them against the fold of the events.
func stopFleetAndCheck(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := t.Context()
	// Holding every checkpoint row lock keeps batches out while comparing.
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }()
	_, err = tx.Exec(ctx, `SELECT 1 FROM readside.checkpoints FOR UPDATE`)
	require.NoError(t, err)
	requireFoldTx(t, tx)
}

func requireFoldTx(t *testing.T, tx pgx.Tx) {
	t.Helper()
	ctx := t.Context()
	mism, err := orderstatistics.Mismatches(ctx, tx)
	require.NoError(t, err)
	require.Empty(t, mism)
	_, err = tx.Exec(ctx, `SET LOCAL search_path = readside, public`) // as the runtime's transactions
	require.NoError(t, err)
	for _, p := range shipped.ReadModels() {
		spec := p.Spec()
		got := projectortest.DumpTables(t, tx, spec.Tables, []string{"updated_at"})
		_, err := tx.Exec(ctx, `SAVEPOINT fold`)
		require.NoError(t, err)
		require.NoError(t, p.Reset(ctx, tx))
		events := allEvents(t, tx, spec)
		if len(events) > 0 {
			require.NoError(t, p.Apply(ctx, tx, &projectors.Batch{Events: events}))
		}
		want := projectortest.DumpTables(t, tx, spec.Tables, []string{"updated_at"})
		_, err = tx.Exec(ctx, `ROLLBACK TO SAVEPOINT fold`)
		require.NoError(t, err)
		require.Equal(t, want, got, "%s: the read model is the fold of the events", spec.Name)
	}
}

// allEvents reads every event of the projection's aggregate types, in log
// order.
func allEvents(t *testing.T, tx pgx.Tx, spec projectors.Spec) []outbox.Event {
	t.Helper()
	rows, err := tx.Query(t.Context(), `SELECT txid, id, aggregate_type, aggregate_id, event_type, version, schema_version, event_data, metadata, occurred_at
		FROM readside.events WHERE aggregate_type = ANY ($1::text[]) ORDER BY txid, id`, spec.AggregateTypes)
	require.NoError(t, err)
	events, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (outbox.Event, error) {
		var e outbox.Event
		err := r.Scan(&e.Cursor.TxID, &e.Cursor.Position, &e.AggregateType, &e.AggregateID, &e.Type, &e.Version, &e.SchemaVersion,
			&e.Data, &e.Metadata, &e.OccurredAt)
		return e, err
	})
	require.NoError(t, err)
	return events
}

// A repair racing resets (which empty the read models and move the
// checkpoints) is serialized with them by the checkpoint row locks: after
// any interleaving, with writers and the fleet running, every read model is
// the fold of its events. While a rebuild runs, a repair is refused.
func TestRepairRacesResetAndRebuild(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool := pgtest.NewDB(t)
	_, err := projectortest.Lifecycles{Orders: 30, Writers: 2}.Generate(ctx, pool)
	require.NoError(t, err)
	projs := shipped.ReadModels()
	startFleet(t, pool, projs, 2)
	caughtUp(t, pool)
	var id string
	require.NoError(t, pool.QueryRow(ctx, `SELECT aggregate_id FROM readside.events WHERE aggregate_type = 'Order' ORDER BY id LIMIT 1`).Scan(&id))

	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	liveWriter(wctx, t, pool, &wg)
	var ops sync.WaitGroup
	for _, p := range projs {
		if p.Spec().AggregateTypes[0] != domain.OrderAggregate {
			continue
		}
		ops.Go(func() {
			for range 3 {
				if err := control.MoveCheckpoints(ctx, pool, p, "start"); err != nil {
					t.Errorf("reset %s: %v", p.Spec().Name, err)
				}
			}
		})
		ops.Go(func() {
			for range 6 {
				if _, err := control.Repair(ctx, pool, p, control.RepairOptions{AggregateIDs: []string{id}}); err != nil {
					t.Errorf("repair %s: %v", p.Spec().Name, err)
				}
			}
		})
	}
	ops.Wait()
	stop()
	wg.Wait()
	caughtUp(t, pool)
	stopFleetAndCheck(t, pool)
}

func TestRepairRefused(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool := pgtest.NewDB(t)
	p, _ := shipped.ByName("order_details")
	require.NoError(t, checkpoint.Register(ctx, pool, "order_details", 1, "park"))
	require.NoError(t, control.StartRebuild(ctx, pool, p))
	_, err := control.Repair(ctx, pool, p, control.RepairOptions{AggregateIDs: []string{"o1"}})
	require.ErrorIs(t, err, control.ErrRebuildRunning)

	_, err = control.Repair(ctx, pool, noForget{p}, control.RepairOptions{AggregateIDs: []string{"o1"}})
	require.ErrorIs(t, err, control.ErrRepairUnsupported)
}

// noForget hides a projection's Forget.
type noForget struct{ projectors.Projection }

// --all-parked applies an aggregate's parked events (as new, not a
// replay) after its applied ones, and marks the dead letters retried.
func TestRepairAllParked(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool := pgtest.NewDB(t)
	_, err := projectortest.Lifecycles{Orders: 10, Writers: 1}.Generate(ctx, pool)
	require.NoError(t, err)
	p, _ := shipped.ByName("order_summary")
	require.NoError(t, checkpoint.Register(ctx, pool, "order_summary", 1, "park"))
	projectortest.ApplyStream(t, pool, p, outbox.Filter{AggregateTypes: p.Spec().AggregateTypes}, 100)
	_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET (cursor_txid, cursor_position) =
		(SELECT txid, id FROM readside.events ORDER BY txid DESC, id DESC LIMIT 1) WHERE projection = 'order_summary'`)
	require.NoError(t, err)
	var id string
	var last int
	require.NoError(t, pool.QueryRow(ctx, `SELECT aggregate_id, max(version) FROM readside.events WHERE aggregate_type = 'Order'
		GROUP BY 1 HAVING max(version) >= 2 ORDER BY 1 LIMIT 1`).Scan(&id, &last))
	want := orderRows(t, pool, id)["order_summary"]
	// As if the last event had failed and been parked: the row is one
	// version behind and the dead letter waits.
	_, err = pool.Exec(ctx, `INSERT INTO readside.dead_letters (projection, segment, event_id, txid, aggregate_type, aggregate_id, event_type, version, reason, error)
		SELECT 'order_summary', 0, id, txid, aggregate_type, aggregate_id, event_type, version, 'failed', 'bug'
		  FROM readside.events WHERE aggregate_id = $1 AND version = $2`, id, last)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `DELETE FROM readside.order_summary WHERE order_id = $1`, id)
	require.NoError(t, err)

	res, err := control.Repair(ctx, pool, p, control.RepairOptions{AllParked: true})
	require.NoError(t, err)
	require.Equal(t, []control.RepairedAggregate{{Type: "Order", ID: id, Segment: 0, Replayed: last - 1, Unparked: 1}}, res)
	require.Equal(t, want, orderRows(t, pool, id)["order_summary"])
	require.Equal(t, 1, count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE status = 'retried' AND resolved_at IS NOT NULL`))
	_, err = control.Repair(ctx, pool, p, control.RepairOptions{AllParked: true})
	require.ErrorIs(t, err, control.ErrNothingToRepair)
}

// segmentOf is the segment of p that aggregate id belongs to.
func segmentOf(t *testing.T, pool *pgxpool.Pool, id string, p projectors.Projection) int {
	t.Helper()
	var seg int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT readside.readside_segment($1, $2)`, id, p.Spec().Segments).Scan(&seg))
	return seg
}
