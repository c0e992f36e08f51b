package checkpoint_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func lease(cp checkpoint.Checkpoint) checkpoint.Lease {
	return checkpoint.Lease{Projection: cp.Projection, Segment: cp.Segment, Owner: cp.LeaseOwner, Epoch: cp.LeaseEpoch}
}

func TestLeaseFencing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "p", 2, "park"))
	require.NoError(t, checkpoint.Register(ctx, pool, "p", 2, "park"), "registering again is fine")
	require.NoError(t, checkpoint.Register(ctx, pool, "p", 4, "park"), "the registered count stands: Scale changes it")
	regs, err := checkpoint.Registry(ctx, pool)
	require.NoError(t, err)
	require.Equal(t, 2, regs[0].Segments)

	both := []checkpoint.Segment{{Projection: "p", Segment: 0}, {Projection: "p", Segment: 1}}
	claimed, err := checkpoint.ClaimSegments(ctx, pool, "w1", []checkpoint.Segment{{Projection: "p", Segment: 0}}, 300*time.Millisecond)
	require.NoError(t, err)
	require.Len(t, claimed, 1)
	l1 := lease(claimed[0])
	require.Equal(t, int64(1), l1.Epoch)

	to := outbox.Cursor{TxID: 10, Position: 5}
	advance := func(l checkpoint.Lease, from, to outbox.Cursor) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return checkpoint.Advance(ctx, tx, l, from, to, 1) })
	}
	require.NoError(t, advance(l1, outbox.Start, to))
	require.ErrorIs(t, advance(l1, outbox.Start, to), checkpoint.ErrFenced, "cursor moved: from no longer matches")

	// The lease expires without renewal; another worker claims it.
	time.Sleep(400 * time.Millisecond)
	require.ErrorIs(t, advance(l1, to, outbox.Cursor{TxID: 11}), checkpoint.ErrFenced, "expired lease")
	kept, err := checkpoint.Renew(ctx, pool, "w1", []checkpoint.Lease{l1}, time.Minute)
	require.NoError(t, err)
	require.Empty(t, kept, "an expired lease is not renewed")

	claimed, err = checkpoint.ClaimSegments(ctx, pool, "w2", both, time.Minute)
	require.NoError(t, err)
	require.Len(t, claimed, 2)
	var l2 checkpoint.Lease
	for _, c := range claimed {
		if c.Segment == l1.Segment {
			l2 = lease(c)
			require.Equal(t, to, c.Cursor)
		}
	}
	require.Equal(t, l1.Epoch+1, l2.Epoch)
	require.ErrorIs(t, advance(l1, to, outbox.Cursor{TxID: 11}), checkpoint.ErrFenced, "old epoch")
	require.NoError(t, advance(l2, to, outbox.Cursor{TxID: 11}))

	// While an apply transaction holds the row, nobody claims it, even
	// with the lease expired: the holder either commits within its lease
	// (checked at its start) or is rolled back.
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, checkpoint.Advance(ctx, tx, l2, outbox.Cursor{TxID: 11}, outbox.Cursor{TxID: 12}, 1))
	stolen, err := checkpoint.ClaimSegments(ctx, pool, "w3", both, time.Minute)
	require.NoError(t, err)
	require.Empty(t, stolen)
	require.NoError(t, tx.Rollback(ctx))

	// Pause drops the lease at the next renewal; Move fences everyone.
	n, err := checkpoint.SetStatus(ctx, pool, "p", checkpoint.Paused)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	kept, err = checkpoint.Renew(ctx, pool, "w2", []checkpoint.Lease{l2}, time.Minute)
	require.NoError(t, err)
	require.Empty(t, kept)
	_, err = checkpoint.SetStatus(ctx, pool, "p", checkpoint.Running)
	require.NoError(t, err)
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return checkpoint.Move(ctx, tx, "p", outbox.Start) }))
	require.ErrorIs(t, advance(l2, outbox.Start, to), checkpoint.ErrFenced, "a reset fences the owner")
	cps, err := checkpoint.List(ctx, pool, "p")
	require.NoError(t, err)
	for _, c := range cps {
		require.Equal(t, outbox.Start, c.Cursor)
		require.Empty(t, c.LeaseOwner)
		if c.Segment == l1.Segment {
			require.Equal(t, outbox.Cursor{TxID: 11}, c.HighWater, "high water survives the reset")
		}
	}
	_, err = checkpoint.SetStatus(ctx, pool, "nope", checkpoint.Paused)
	require.ErrorIs(t, err, checkpoint.ErrUnknownProjection)

	// Only the epoch tells an owner's old lease from its new one: the same
	// worker id claims the segment again after a reset to where its cursor
	// was (a worker stopped with a batch fetched, and a process with the
	// same --worker-id in its place). The old lease's batch must not commit
	// on top of the replay.
	claimed, err = checkpoint.ClaimSegments(ctx, pool, "w2", both, time.Minute)
	require.NoError(t, err)
	old := lease(claimed[0])
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return checkpoint.Move(ctx, tx, "p", outbox.Start) }))
	claimed, err = checkpoint.ClaimSegments(ctx, pool, "w2", both, time.Minute)
	require.NoError(t, err)
	require.Equal(t, old.Owner, claimed[0].LeaseOwner)
	require.Equal(t, old.Epoch+2, claimed[0].LeaseEpoch)
	require.ErrorIs(t, advance(old, outbox.Start, to), checkpoint.ErrFenced, "the owner's old epoch")
	require.NoError(t, advance(lease(claimed[0]), outbox.Start, to))
}

// A transaction that outlives its lease after its first fenced UPDATE still
// holds the row: nobody could claim it, so its later UPDATEs (AdvanceHeld)
// check owner and epoch, not expiry, and leave the lease live for the next
// transaction. A first Advance in a new transaction does check expiry.
func TestAdvanceHeldOutlivesExpiry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "p", 1, "park"))
	seg := []checkpoint.Segment{{Projection: "p", Segment: 0}}
	claimed, err := checkpoint.ClaimSegments(ctx, pool, "w1", seg, 200*time.Millisecond)
	require.NoError(t, err)
	require.Len(t, claimed, 1)
	l := lease(claimed[0])
	c1, c2, c3 := outbox.Cursor{TxID: 10, Position: 1}, outbox.Cursor{TxID: 10, Position: 2}, outbox.Cursor{TxID: 10, Position: 3}

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	require.NoError(t, checkpoint.Advance(ctx, tx, l, outbox.Start, c1, 1))
	_, err = tx.Exec(ctx, `DO $$ BEGIN
		WHILE (SELECT lease_expires_at FROM readside.checkpoints WHERE projection = 'p') > clock_timestamp() LOOP
			PERFORM pg_sleep(0.01);
		END LOOP;
	END $$`)
	require.NoError(t, err)
	stolen, err := checkpoint.ClaimSegments(ctx, pool, "w2", seg, time.Minute)
	require.NoError(t, err)
	require.Empty(t, stolen, "the row lock keeps an expired lease")
	require.ErrorIs(t, checkpoint.Advance(ctx, tx, l, c1, c2, 1), checkpoint.ErrFenced, "Advance checks expiry")
	wrong := l
	wrong.Epoch++
	require.ErrorIs(t, checkpoint.AdvanceHeld(ctx, tx, wrong, c1, c2, 1, time.Minute), checkpoint.ErrFenced, "another epoch")
	require.ErrorIs(t, checkpoint.AdvanceHeld(ctx, tx, l, c2, c3, 1, time.Minute), checkpoint.ErrFenced, "cursor moved")
	require.NoError(t, checkpoint.AdvanceHeld(ctx, tx, l, c1, c2, 1, time.Minute))
	require.NoError(t, tx.Commit(ctx))

	cps, err := checkpoint.List(ctx, pool, "p")
	require.NoError(t, err)
	require.Equal(t, c2, cps[0].Cursor)
	require.Equal(t, int64(2), cps[0].EventsApplied)
	require.Equal(t, "w1", cps[0].LeaseOwner)
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return checkpoint.Advance(ctx, tx, l, c2, c3, 1) }),
		"the held advance renewed the lease for the next transaction")
}

// A worker whose checkpoint UPDATE was fenced by the cursor alone (a
// crash of the server moved the stored cursor back) releases its lease,
// still its own, and the segment is claimed again, with a new epoch, from
// the stored cursor; a live lease is nobody else's to claim, not even a
// process's that shares the worker's id. Renewal reports the stored cursor.
func TestReleaseAfterCursorFence(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "p", 1, "park"))
	seg := []checkpoint.Segment{{Projection: "p", Segment: 0}}
	claimed, err := checkpoint.ClaimSegments(ctx, pool, "w1", seg, time.Minute)
	require.NoError(t, err)
	require.Len(t, claimed, 1)
	old := lease(claimed[0])
	to := outbox.Cursor{TxID: 10, Position: 5}
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return checkpoint.Advance(ctx, tx, old, outbox.Start, to, 1) }))
	kept, err := checkpoint.Renew(ctx, pool, "w1", []checkpoint.Lease{old}, time.Minute)
	require.NoError(t, err)
	require.Len(t, kept, 1)
	require.Equal(t, to, kept[0].Cursor, "renewal reports the stored cursor")

	for _, id := range []string{"w2", "w1"} {
		stolen, err := checkpoint.ClaimSegments(ctx, pool, id, seg, time.Minute)
		require.NoError(t, err)
		require.Empty(t, stolen, "a live lease is not %s's to claim", id)
	}
	// The worker believed the cursor further on: its UPDATE is fenced.
	ahead := outbox.Cursor{TxID: 12}
	require.ErrorIs(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return checkpoint.Advance(ctx, tx, old, ahead, outbox.Cursor{TxID: 13}, 1)
	}), checkpoint.ErrFenced)
	require.NoError(t, checkpoint.Release(ctx, pool, old))
	again, err := checkpoint.ClaimSegments(ctx, pool, "w1", seg, time.Minute)
	require.NoError(t, err)
	require.Len(t, again, 1)
	require.Equal(t, old.Epoch+1, again[0].LeaseEpoch)
	require.Equal(t, to, again[0].Cursor, "claimed from the stored cursor")
	require.ErrorIs(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return checkpoint.Advance(ctx, tx, old, to, outbox.Cursor{TxID: 11}, 1)
	}), checkpoint.ErrFenced, "the earlier epoch is fenced")
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return checkpoint.Advance(ctx, tx, lease(again[0]), to, outbox.Cursor{TxID: 11}, 1)
	}))
	// Released by an earlier epoch, a lease taken over stays its owner's.
	require.NoError(t, checkpoint.Release(ctx, pool, old))
	cps, err := checkpoint.List(ctx, pool, "p")
	require.NoError(t, err)
	require.Equal(t, "w1", cps[0].LeaseOwner)
	require.Equal(t, again[0].LeaseEpoch, cps[0].LeaseEpoch)
}
