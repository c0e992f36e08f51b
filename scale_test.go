package readside_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside"
	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/deadletter"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/notifications"
	"github.com/readside/readside/projectors/orderstatistics"
	"github.com/readside/readside/projectors/projectortest"
	"github.com/readside/readside/projectors/shipped"
)

// Every shipped projection is scaled 1 -> 4 -> 1 segments (Client.Scale,
// then Wait) while writers append and the fleet member applies: afterwards
// each read model equals a fresh rebuild from the events, order_statistics
// (counters, which an event applied twice would count twice) matches the
// events, and exactly one notification job was queued per OrderShipped
// event. The segments of each split move on while the writers run, so the
// second scale merges segments that stand at different cursors.
func TestScaleWhileRunning(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pool := pgtest.NewDB(t)
	c := newClient(t, readside.Config{Pool: pool, Projections: shipped.All()})
	start(t, c)

	wctx, stopWriters := context.WithCancel(ctx)
	defer stopWriters()
	written := make(chan error, 1)
	go func() {
		_, err := projectortest.Lifecycles{Orders: 1_000_000, Writers: 3, Interval: 3 * time.Millisecond}.Generate(wctx, pool)
		written <- err
	}()

	names := []string{}
	for _, p := range shipped.All() {
		names = append(names, p.Spec().Name)
	}
	for _, n := range []int{4, 1, 4, 1} {
		// The fleet applies some of what the writers add in this split.
		waitApplied(ctx, t, pool, 200)
		for _, name := range names {
			job, err := c.Scale(ctx, name, n)
			require.NoError(t, err, name)
			require.NoError(t, c.Wait(ctx, job, nil), name)
			st, err := c.Status(ctx, name)
			require.NoError(t, err)
			require.Len(t, st.Segments, n, name)
		}
	}
	waitApplied(ctx, t, pool, 200)
	stopWriters()
	require.ErrorIs(t, <-written, context.Canceled)
	require.NoError(t, c.WaitCaughtUp(ctx))
	// The queued notification jobs are worked.
	require.Eventually(t, func() bool {
		var left int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.river_job WHERE kind = $1 AND state <> 'completed'`,
			notifications.OrderShippedArgs{}.Kind()).Scan(&left))
		return left == 0
	}, time.Minute, 50*time.Millisecond)
	stopCtx, stopCancel := context.WithTimeout(ctx, 20*time.Second)
	defer stopCancel()
	require.NoError(t, c.Stop(stopCtx))

	mismatches, err := orderstatistics.Mismatches(ctx, pool)
	require.NoError(t, err)
	require.Empty(t, mismatches, "order_statistics counts every event once")
	var shippedEvents, jobs, distinct, sent int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.events WHERE aggregate_type = 'Order' AND event_type = 'OrderShipped'`).Scan(&shippedEvents))
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT args->>'event_id') FROM readside.river_job WHERE kind = $1`,
		notifications.OrderShippedArgs{}.Kind()).Scan(&jobs, &distinct))
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.order_notifications`).Scan(&sent))
	require.Positive(t, shippedEvents)
	require.Equal(t, []int64{shippedEvents, shippedEvents, shippedEvents}, []int64{jobs, distinct, sent}, "one notification per shipped order")

	for _, p := range shipped.ReadModels() {
		s := p.Spec()
		live := projectortest.DumpTables(t, pool, s.Tables, []string{"updated_at"})
		require.NoError(t, projectortest.InTx(ctx, pool, func(tx pgx.Tx) error { return p.Reset(ctx, tx) }))
		projectortest.ApplyStream(t, pool, p, outbox.Filter{EventTypes: s.EventTypes, AggregateTypes: s.AggregateTypes, Segments: 1}, 500)
		require.Equal(t, projectortest.DumpTables(t, pool, s.Tables, []string{"updated_at"}), live, "%s equals a fresh rebuild", s.Name)
	}
}

// waitApplied waits until every projection has applied more events than
// when it was called, n more in all.
func waitApplied(ctx context.Context, t *testing.T, pool *pgxpool.Pool, n int64) {
	t.Helper()
	applied := func() map[string]int64 {
		rows, err := pool.Query(ctx, `SELECT projection, sum(events_applied)::bigint FROM readside.checkpoints GROUP BY projection`)
		require.NoError(t, err)
		out := map[string]int64{}
		var name string
		var a int64
		_, err = pgx.ForEachRow(rows, []any{&name, &a}, func() error { out[name] = a; return nil })
		require.NoError(t, err)
		return out
	}
	before := applied()
	for {
		now, grew, total := applied(), true, int64(0)
		for name, a := range now {
			grew = grew && a > before[name]
			total += a - before[name]
		}
		if grew && total >= n && len(now) > 0 {
			return
		}
		select {
		case <-ctx.Done():
			require.NoError(t, errors.Join(ctx.Err(), errors.New("projections did not apply enough")))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// recorder records every application of an event with its Replay flag.
type recorder struct{}

func (recorder) Spec() projectors.Spec { return projectors.Spec{Name: "recorder"} }

func (recorder) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	for _, e := range b.Events {
		if _, err := tx.Exec(ctx, `INSERT INTO readside.recorded (event_id, replay) VALUES ($1, $2)`, e.ID(), b.Replay); err != nil {
			return err
		}
	}
	return nil
}

func (recorder) Reset(context.Context, pgx.Tx) error { return nil }

// A scale while a projection replays after a reset merges segments whose
// high-water marks differ: each bucket keeps its own high, so an event is
// flagged Batch.Replay exactly when it is applied again (the events one
// segment had applied before the reset), not when it is applied the first
// time (those its paused neighbour had not reached); and, by the
// side-effect ledger, one notification per shipped order.
func TestScaleDuringReplayFlagsReplays(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool := pgtest.NewDB(t)
	_, err := pool.Exec(ctx, `CREATE TABLE readside.recorded (n bigserial PRIMARY KEY, event_id bigint NOT NULL, replay boolean NOT NULL)`)
	require.NoError(t, err)
	projs := []projectors.Projection{notifications.New(), recorder{}}
	names := []string{notifications.Name, "recorder"}
	c := newClient(t, readside.Config{Pool: pool, Projections: projs})
	start(t, c)
	for _, name := range names {
		job, err := c.Scale(ctx, name, 2)
		require.NoError(t, err)
		require.NoError(t, c.Wait(ctx, job, nil))
	}

	ship(t, pool, "a", 40)
	require.NoError(t, c.WaitCaughtUp(ctx))
	// Segment 1 stops; segment 0 applies what follows.
	_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET status = 'paused' WHERE segment = 1`)
	require.NoError(t, err)
	head := ship(t, pool, "b", 40)
	require.Eventually(t, func() bool {
		var behind int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.checkpoints WHERE segment = 0
			AND (cursor_txid, cursor_position) < ($1::xid8, $2::bigint)`, head.TxID, head.Position).Scan(&behind))
		return behind == 0
	}, time.Minute, 20*time.Millisecond)

	for i, name := range names {
		_, err = c.Pause(ctx, name)
		require.NoError(t, err)
		require.NoError(t, control.MoveCheckpoints(ctx, pool, projs[i], "start"))
		_, err = control.ScaleCheckpoints(ctx, pool, name, 1)
		require.NoError(t, err)
		_, err = c.Resume(ctx, name)
		require.NoError(t, err)
	}
	require.NoError(t, c.WaitCaughtUp(ctx))

	var events, wrong int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.events`).Scan(&events))
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM (
		SELECT event_id, bool_or(replay) FILTER (WHERE n = f.first) AS first_replay,
		       bool_and(replay) FILTER (WHERE n <> f.first) AS later_replay, count(*) AS times
		  FROM readside.recorded JOIN (SELECT event_id, min(n) AS first FROM readside.recorded GROUP BY event_id) f USING (event_id)
		 GROUP BY event_id) x WHERE first_replay OR NOT coalesce(later_replay, true) OR times > 2`).Scan(&wrong))
	require.Zero(t, wrong, "an event is flagged a replay exactly when applied again")
	var once, twice int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE times = 1), count(*) FILTER (WHERE times = 2)
		FROM (SELECT count(*) AS times FROM readside.recorded GROUP BY event_id) x`).Scan(&once, &twice))
	require.Equal(t, events, once+twice, "every event applied")
	require.Positive(t, once, "some events were first applied after the scale")
	require.Positive(t, twice, "some events were replayed")

	var shipped, jobs, distinct int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.events WHERE event_type = 'OrderShipped'`).Scan(&shipped))
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT args->>'event_id') FROM readside.river_job WHERE kind = $1`,
		notifications.OrderShippedArgs{}.Kind()).Scan(&jobs, &distinct))
	require.Equal(t, int64(80), shipped)
	require.Equal(t, []int64{shipped, shipped}, []int64{jobs, distinct}, "one notification per shipped order")
}

// ship appends n OrderShipped events, one per new order prefix-i, and
// returns the cursor of the last.
func ship(t *testing.T, pool *pgxpool.Pool, prefix string, n int) outbox.Cursor {
	t.Helper()
	ctx := context.Background()
	var last outbox.Cursor
	for i := range n {
		id := fmt.Sprintf("%s-%d", prefix, i)
		require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			res, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: "Order", ID: id}, 0, []outbox.NewEvent{{Type: "OrderShipped",
				Data: []byte(fmt.Sprintf(`{"order_id":%q,"tracking_number":"t","shipped_at":"2026-12-01T00:00:00Z"}`, id))}})
			if err == nil {
				last = res.Cursor()
			}
			return err
		}))
	}
	return last
}

// A scale that comes while a batch of the projection is in flight, and the
// batch parks an event after the scale has locked the projection's registry
// row: dead_letters references that row, so the park takes its key-share
// lock, while the scale waits for the batch's checkpoint row. The statements
// are the worker's, in its order (the fenced checkpoint UPDATE first, then
// the park). The scale must wait for the batch, which commits, instead of
// one of them dying as a deadlock victim (found by make model: 40P01 from
// ScaleCheckpoints while a run parked a poisoned event).
func TestScaleWhileABatchParks(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "p", 1, "park"))
	head := ship(t, pool, "a", 3)
	batch := batchInFlight(ctx, t, pool, "p", head)

	scaled := make(chan error, 1)
	go func() {
		_, err := control.ScaleCheckpoints(ctx, pool, "p", 2)
		scaled <- err
	}()
	// The scale holds the registry row and waits for the batch's checkpoint.
	require.Eventually(t, func() bool {
		var waiting bool
		require.NoError(t, pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
			WHERE NOT l.granted AND d.datname = current_database())
			OR EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock')`).Scan(&waiting))
		return waiting
	}, 20*time.Second, 5*time.Millisecond)

	bad := outbox.Event{Cursor: head, AggregateType: "Order", AggregateID: "a-2", Type: "OrderShipped", Version: 1}
	require.NoError(t, deadletter.Park(ctx, batch, deadletter.Parking{Projection: "p", Segment: 0, Reason: "failed", Error: "boom", Attempts: 1},
		[]outbox.Event{bad}))
	require.NoError(t, batch.Commit(ctx))
	require.NoError(t, <-scaled)

	// The dead letter moved to its aggregate's segment of the new split.
	var segment, want int
	require.NoError(t, pool.QueryRow(ctx, `SELECT segment, readside.readside_segment('a-2', 2) FROM readside.dead_letters WHERE event_id = $1`,
		head.Position).Scan(&segment, &want))
	require.Equal(t, want, segment)
}
