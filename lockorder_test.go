package readside_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/deadletter"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// waitLockWaiters waits until n backends of this test's database wait on a
// lock.
func waitLockWaiters(ctx context.Context, t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		var waiting int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting))
		return waiting >= n
	}, 20*time.Second, 5*time.Millisecond)
}

// A pause (SetStatus: one UPDATE of every checkpoint of the projection, in
// the order its scan meets them) while an operation that locks every
// checkpoint in segment order (here a reset; a repair and a rebuild's
// switch lock the same way, a scale too, but a pause now waits for a
// scale's registry row first) waits for a batch of segment 0. The
// checkpoint rows lie on the heap in the order of their last update, not
// by segment: segment 0 was updated last, so the pause takes segment 1 and
// queues behind the reset for segment 0. When the batch commits, the reset
// takes segment 0 and needs segment 1. Both must finish, neither a
// deadlock victim.
func TestPauseWhileAResetWaitsForABatch(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "recorder", 2, "park"))
	// Other projections' checkpoints fill the heap page: an update of
	// segment 0 that finds no room on it goes to another page (not a HOT
	// update), as in any fleet whose checkpoints span pages.
	require.NoError(t, checkpoint.Register(ctx, pool, "q", 200, "park"))
	for i := 0; ; i++ {
		require.Less(t, i, 100, "segment 0 moved to another page")
		var page int
		require.NoError(t, pool.QueryRow(ctx, `UPDATE readside.checkpoints SET updated_at = now() WHERE projection = 'recorder' AND segment = 0
			RETURNING (ctid::text::point)[0]::int`).Scan(&page))
		if page > 0 {
			break
		}
	}
	head := ship(t, pool, "a", 3)
	batch := batchInFlight(ctx, t, pool, "recorder", head)

	reset := make(chan error, 1)
	go func() { reset <- control.MoveCheckpoints(ctx, pool, recorder{}, "start") }()
	waitLockWaiters(ctx, t, pool, 1)
	paused := make(chan error, 1)
	go func() {
		_, err := checkpoint.SetStatus(ctx, pool, "recorder", checkpoint.Paused)
		paused <- err
	}()
	waitLockWaiters(ctx, t, pool, 2)
	require.NoError(t, batch.Commit(ctx))
	require.NoError(t, <-reset, "reset")
	require.NoError(t, <-paused, "pause")
}

// batchInFlight opens what a worker's apply transaction holds first: the
// lease of projection's segment 0 and its fenced checkpoint UPDATE (from
// the start to to), left open; it is rolled back at the end of the test
// unless the test commits it.
func batchInFlight(ctx context.Context, t *testing.T, pool *pgxpool.Pool, projection string, to outbox.Cursor) pgx.Tx {
	t.Helper()
	claimed, err := checkpoint.ClaimSegments(ctx, pool, "w1", []checkpoint.Segment{{Projection: projection, Segment: 0}}, time.Minute)
	require.NoError(t, err)
	require.Len(t, claimed, 1)
	l := checkpoint.Lease{Projection: projection, Segment: 0, Owner: "w1", Epoch: claimed[0].LeaseEpoch}
	batch, err := pool.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = batch.Rollback(context.Background()) })
	require.NoError(t, checkpoint.Advance(ctx, batch, l, outbox.Start, to, 0))
	return batch
}

// twoTypes is a projection of two aggregate types that a repair can
// rebuild (Forget); its Forget of aggregate type hold waits, the first
// time, until release is closed.
type twoTypes struct {
	hold             string
	reached, release chan struct{}
	forgets          atomic.Int32
}

func (*twoTypes) Spec() projectors.Spec {
	return projectors.Spec{Name: "multi", AggregateTypes: []string{"Order", "Product"}}
}
func (*twoTypes) Apply(context.Context, pgx.Tx, *projectors.Batch) error { return nil }
func (*twoTypes) Reset(context.Context, pgx.Tx) error                    { return nil }
func (p *twoTypes) Forget(_ context.Context, _ pgx.Tx, typ string, _ []string) error {
	if p.forgets.Add(1) == 2 && typ == p.hold {
		close(p.reached)
		<-p.release
	}
	return nil
}

// appendEvent appends one event of a new aggregate and returns it as the
// outbox reads it.
func appendEvent(t *testing.T, pool *pgxpool.Pool, aggType, id string) outbox.Event {
	t.Helper()
	ctx := context.Background()
	var e outbox.Event
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		res, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: aggType, ID: id}, 0, []outbox.NewEvent{{Type: aggType + "Created", Data: []byte(`{}`)}})
		if err == nil {
			e = outbox.Event{Cursor: res.Cursor(), AggregateType: aggType, AggregateID: id, Type: aggType + "Created", Version: 1}
		}
		return err
	}))
	return e
}

// A repair of every parked aggregate of a projection with two aggregate
// types marks their dead letters retried one aggregate type at a time
// (Order, then Product), in one transaction; a discard of the projection's
// parked dead letters used to mark them in the order its scan met them,
// the order they were parked in (here the Product event first). The
// discard comes while the repair works on Product: it took the Product
// dead letter and waited for the Order one, which the repair holds; the
// repair then marked the Product one: a deadlock. The discard now locks
// the projection's checkpoints first, as the repair did, and waits for it
// (control.DiscardDeadLetters). Both must finish, neither a deadlock
// victim, and the repair in one attempt.
func TestDiscardWhileARepairWorks(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewDB(t)
	p := &twoTypes{hold: "Product", reached: make(chan struct{}), release: make(chan struct{})}
	require.NoError(t, checkpoint.Register(ctx, pool, "multi", 1, "park"))
	product := appendEvent(t, pool, "Product", "x1")
	order := appendEvent(t, pool, "Order", "o1")
	_, err := pool.Exec(ctx, `UPDATE readside.checkpoints SET cursor_txid = $1, cursor_position = $2, high_txid = $1, high_position = $2
		WHERE projection = 'multi'`, order.Cursor.TxID, order.Cursor.Position)
	require.NoError(t, err)
	// Parked in this order, with more parked dead letters of other
	// aggregates (a projection that has parked many, whose table the
	// planner reads whole), of events the repair does not find.
	parked := []outbox.Event{product, order}
	for i := range 500 {
		typ := []string{"Product", "Order"}[i%2]
		parked = append(parked, outbox.Event{Cursor: outbox.Cursor{TxID: order.Cursor.TxID, Position: order.Cursor.Position + 1 + int64(i)},
			AggregateType: typ, AggregateID: fmt.Sprintf("z%d", i), Type: typ + "Created", Version: 1})
	}
	for _, e := range parked {
		require.NoError(t, deadletter.Park(ctx, pool, deadletter.Parking{Projection: "multi", Reason: "failed", Error: "boom", Attempts: 5},
			[]outbox.Event{e}))
	}
	_, err = pool.Exec(ctx, `ANALYZE readside.dead_letters`)
	require.NoError(t, err)

	repaired := make(chan error, 1)
	go func() {
		_, err := control.Repair(ctx, pool, p, control.RepairOptions{AllParked: true})
		repaired <- err
	}()
	select {
	case <-p.reached: // Order's dead letter is marked retried; Product's next
	case err := <-repaired:
		require.NoError(t, err)
		t.Fatal("the repair finished without forgetting Product")
	}
	discarded := make(chan error, 1)
	go func() {
		_, err := control.DiscardDeadLetters(ctx, pool, "multi", nil)
		discarded <- err
	}()
	waitLockWaiters(ctx, t, pool, 1)
	close(p.release)
	require.NoError(t, <-repaired, "repair")
	errDiscard := <-discarded
	if !errors.Is(errDiscard, deadletter.ErrNothingToDiscard) {
		require.NoError(t, errDiscard, "discard")
	}
	require.EqualValues(t, 2, p.forgets.Load(), "the repair succeeded at its first attempt")
}

// A worker that stops gives its leases back (Leave: one UPDATE of every
// checkpoint it owns, in the order its scan meets them) while a reset
// waits for a retry of segment 0's dead letters, which holds segment 0's
// row. Segment 0 was updated last, so it lies after segment 1 on the heap:
// Leave takes segment 1 and queues behind the reset for segment 0. When
// the retry commits, the reset takes segment 0 and needs segment 1. Both
// must finish, neither a deadlock victim.
func TestLeaveWhileAResetWaitsForARetry(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "recorder", 2, "park"))
	claimed, err := checkpoint.ClaimSegments(ctx, pool, "w1", []checkpoint.Segment{{Projection: "recorder", Segment: 0},
		{Projection: "recorder", Segment: 1}}, time.Minute)
	require.NoError(t, err)
	require.Len(t, claimed, 2)
	_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET updated_at = now() WHERE projection = 'recorder' AND segment = 0`)
	require.NoError(t, err)

	retry, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = retry.Rollback(ctx) }()
	require.NoError(t, checkpoint.LockSegment(ctx, retry, "recorder", 0))

	reset := make(chan error, 1)
	go func() { reset <- control.MoveCheckpoints(ctx, pool, recorder{}, "start") }()
	waitLockWaiters(ctx, t, pool, 1)
	left := make(chan error, 1)
	go func() { left <- checkpoint.Leave(ctx, pool, "w1") }()
	waitLockWaiters(ctx, t, pool, 2)
	require.NoError(t, retry.Commit(ctx))
	require.NoError(t, <-reset, "reset")
	require.NoError(t, <-left, "leave")
}

// A batch that reads parked events again after a reset moved the cursor
// back parks them again (deadletter.Park: ON CONFLICT DO UPDATE, which
// locks the existing dead letter even though it leaves it as it is), in
// log order, group by group (runner.parkUpTo). Aggregate b1's event lies
// before a1's in the log. A discard of the projection's parked dead
// letters comes between the batch's two Park statements. Both must
// finish, neither a deadlock victim.
func TestDiscardWhileABatchReparks(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "p", 1, "park"))
	var err error
	eb := appendEvent(t, pool, "Thing", "b1")
	ea := appendEvent(t, pool, "Thing", "a1")
	parked := []outbox.Event{eb, ea} // first parked in log order
	// More parked dead letters of other aggregates, as in
	// TestDiscardWhileARepairWorks: a table the planner reads whole.
	for i := range 500 {
		parked = append(parked, outbox.Event{Cursor: outbox.Cursor{TxID: ea.Cursor.TxID, Position: ea.Cursor.Position + 1 + int64(i)},
			AggregateType: "Thing", AggregateID: fmt.Sprintf("z%d", i), Type: "ThingCreated", Version: 1})
	}
	for _, e := range parked {
		require.NoError(t, deadletter.Park(ctx, pool, deadletter.Parking{Projection: "p", Reason: "failed", Error: "boom", Attempts: 5},
			[]outbox.Event{e}))
	}
	_, err = pool.Exec(ctx, `ANALYZE readside.dead_letters`)
	require.NoError(t, err)

	batch := batchInFlight(ctx, t, pool, "p", ea.Cursor)
	require.NoError(t, deadletter.Park(ctx, batch, deadletter.Parking{Projection: "p", Reason: "blocked", Error: "parked"},
		[]outbox.Event{eb}))

	discarded := make(chan error, 1)
	go func() {
		_, err := control.DiscardDeadLetters(ctx, pool, "p", nil)
		discarded <- err
	}()
	waitLockWaiters(ctx, t, pool, 1)
	errPark := deadletter.Park(ctx, batch, deadletter.Parking{Projection: "p", Reason: "blocked", Error: "parked"},
		[]outbox.Event{ea})
	if errPark == nil {
		errPark = batch.Commit(ctx)
	}
	errDiscard := <-discarded
	require.NoError(t, errPark, "the batch")
	require.NoError(t, errDiscard, "discard")
}

// A pause that comes while a scale from 2 to 4 segments waits for a batch:
// the scale writes segments 2 and 3, which the pause's statement, whose
// snapshot was taken before the scale committed, never saw. Every segment
// of the new split must be paused (the scale carries a paused segment's
// status to the segments of its buckets; the pause must see them all).
// The same for a resume.
func TestPauseWhileAScaleAddsSegments(t *testing.T) {
	t.Parallel()
	for _, status := range []checkpoint.Status{checkpoint.Paused, checkpoint.Running} {
		t.Run(string(status), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			pool := pgtest.NewDB(t)
			require.NoError(t, checkpoint.Register(ctx, pool, "p", 2, "park"))
			if status == checkpoint.Running {
				_, err := checkpoint.SetStatus(ctx, pool, "p", checkpoint.Paused)
				require.NoError(t, err)
				// A segment of the old split claimed again after the pause
				// would hold nothing: the batch below needs a running one.
				_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET status = 'running' WHERE projection = 'p' AND segment = 0`)
				require.NoError(t, err)
			}
			head := ship(t, pool, "a", 3)
			batch := batchInFlight(ctx, t, pool, "p", head)

			scaled := make(chan error, 1)
			go func() {
				_, err := control.ScaleCheckpoints(ctx, pool, "p", 4)
				scaled <- err
			}()
			waitLockWaiters(ctx, t, pool, 1)
			set := make(chan error, 1)
			go func() {
				_, err := checkpoint.SetStatus(ctx, pool, "p", status)
				set <- err
			}()
			waitLockWaiters(ctx, t, pool, 2)
			require.NoError(t, batch.Commit(ctx))
			require.NoError(t, <-scaled, "scale")
			require.NoError(t, <-set, "set status")
			rows, err := pool.Query(ctx, `SELECT status FROM readside.checkpoints WHERE projection = 'p' ORDER BY segment`)
			require.NoError(t, err)
			got, err := pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err)
			require.Equal(t, []string{string(status), string(status), string(status), string(status)}, got)
		})
	}
}
