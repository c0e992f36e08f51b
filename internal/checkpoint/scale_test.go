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

// Scaling regroups the 64 buckets: each new segment starts at the least
// floor of its buckets (the cursor of the old segment that held each one,
// or a floor an earlier scale left further on), its high-water mark at the
// least high; every lease of the old split is fenced; the applied count is
// kept in total; a failed or paused old segment passes its status on to
// the segments that take its buckets. A reset clears the floors and keeps
// the highs.
func TestScaleRegroupsBuckets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "p", 2, "park"))
	claimed, err := checkpoint.ClaimSegments(ctx, pool, "w1", []checkpoint.Segment{{Projection: "p", Segment: 0}, {Projection: "p", Segment: 1}}, time.Minute)
	require.NoError(t, err)
	require.Len(t, claimed, 2)
	c0, c1 := outbox.Cursor{TxID: 100, Position: 7}, outbox.Cursor{TxID: 90, Position: 3}
	for _, cp := range claimed {
		to := c0
		if cp.Segment == 1 {
			to = c1
		}
		require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			return checkpoint.Advance(ctx, tx, lease(cp), outbox.Start, to, 10+cp.Segment)
		}))
	}
	_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET status = 'failed', last_error = 'boom' WHERE projection = 'p' AND segment = 1`)
	require.NoError(t, err)

	scale := func(n int) checkpoint.ScaleResult {
		t.Helper()
		var res checkpoint.ScaleResult
		require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			var err error
			res, err = checkpoint.Scale(ctx, tx, "p", n)
			return err
		}))
		return res
	}
	require.Equal(t, checkpoint.ScaleResult{From: 2, To: 4}, scale(4))
	cps, err := checkpoint.List(ctx, pool, "p")
	require.NoError(t, err)
	require.Len(t, cps, 4)
	var applied int64
	for _, cp := range cps {
		applied += cp.EventsApplied
		want, status := c0, checkpoint.Running // buckets b%4 = 0, 2 are old segment 0's
		if cp.Segment%2 == 1 {
			want, status = c1, checkpoint.Failed
		}
		require.Equal(t, want, cp.Cursor, "segment %d", cp.Segment)
		require.Equal(t, want, cp.HighWater, "segment %d", cp.Segment)
		require.Equal(t, status, cp.Status, "segment %d", cp.Segment)
		require.Empty(t, cp.LeaseOwner)
		require.Greater(t, cp.LeaseEpoch, claimed[0].LeaseEpoch)
		for _, old := range claimed {
			require.ErrorIs(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				return checkpoint.Advance(ctx, tx, lease(old), old.Cursor, outbox.Cursor{TxID: 200}, 1)
			}), checkpoint.ErrFenced, "the old split's leases are fenced")
		}
	}
	require.Equal(t, int64(21), applied, "the applied count is shared out, not lost or doubled")

	// Back to 1: the segment starts at the least floor, c1; events of the
	// buckets of old segment 0 up to c0 are passed over (their floor).
	_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET status = 'running', last_error = NULL WHERE projection = 'p'`)
	require.NoError(t, err)
	scale(1)
	cps, err = checkpoint.List(ctx, pool, "p")
	require.NoError(t, err)
	require.Len(t, cps, 1)
	require.Equal(t, c1, cps[0].Cursor)
	sp, err := checkpoint.Splits(ctx, pool, []checkpoint.Segment{{Projection: "p", Segment: 0}})
	require.NoError(t, err)
	require.Equal(t, checkpoint.Split{Segments: 1, Until: c0}, sp[checkpoint.Segment{Projection: "p", Segment: 0}])
	floors := bucketFloors(t, pool)
	for b, f := range floors {
		want := c0
		if b%2 == 1 {
			want = c1
		}
		require.Equal(t, [2]outbox.Cursor{want, want}, f, "bucket %d", b)
	}

	// A reset clears the floors and keeps the highs.
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return checkpoint.Move(ctx, tx, "p", outbox.Start) }))
	for b, f := range bucketFloors(t, pool) {
		require.Equal(t, [2]outbox.Cursor{outbox.Start, floors[b][1]}, f, "bucket %d", b)
	}

	// Counts that do not divide 64 are refused.
	require.ErrorIs(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := checkpoint.Scale(ctx, tx, "p", 3)
		return err
	}), checkpoint.ErrScaleSplit)
	require.NoError(t, checkpoint.Register(ctx, pool, "q", 3, "park"))
	require.ErrorIs(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := checkpoint.Scale(ctx, tx, "q", 4)
		return err
	}), checkpoint.ErrScaleSplit)
}

// bucketFloors returns each bucket's floor and high.
func bucketFloors(t *testing.T, pool interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}) map[int][2]outbox.Cursor {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT bucket, floor_txid, floor_position, high_txid, high_position FROM readside.checkpoint_buckets WHERE projection = 'p'`)
	require.NoError(t, err)
	out := map[int][2]outbox.Cursor{}
	var b int
	var f, h outbox.Cursor
	_, err = pgx.ForEachRow(rows, []any{&b, &f.TxID, &f.Position, &h.TxID, &h.Position}, func() error {
		out[b] = [2]outbox.Cursor{f, h}
		return nil
	})
	require.NoError(t, err)
	require.Len(t, out, checkpoint.Buckets)
	return out
}
