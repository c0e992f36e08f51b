package observe_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

func TestWaitFor(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "one", 1, "park"))
	require.NoError(t, checkpoint.Register(ctx, pool, "three", 3, "halt"))
	token := outbox.Cursor{TxID: 900, Position: 40}
	move := func(projection string, segment int, c outbox.Cursor, status checkpoint.Status, lastError string) {
		t.Helper()
		_, err := pool.Exec(ctx, `UPDATE readside.checkpoints SET cursor_txid = $3, cursor_position = $4, status = $5, last_error = nullif($6, '')
			WHERE projection = $1 AND segment = $2`, projection, segment, c.TxID, c.Position, status, lastError)
		require.NoError(t, err)
	}
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	// A wait that should succeed gets a generous deadline: it returns as
	// soon as the check passes, and a loaded machine may take longer than
	// the short deadline for the first query alone.
	long := func() context.Context {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	notCaughtUp := func(err error) *observe.NotCaughtUpError {
		t.Helper()
		var lag *observe.NotCaughtUpError
		require.ErrorAs(t, err, &lag)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		return lag
	}

	require.NoError(t, observe.WaitFor(long(), pool, token), "no projections: nothing to wait for")
	require.NoError(t, observe.WaitFor(long(), pool, outbox.Start, "one", "three"), "every cursor is at or after the start")

	lag := notCaughtUp(observe.WaitFor(short(), pool, token, "one", "three"))
	require.Equal(t, "one", lag.Projection, "the first lagging projection is named")
	require.Equal(t, "running", lag.Status())
	require.False(t, lag.Stuck())

	// Equal counts: the cursor of the write itself means it was applied.
	move("one", 0, token, checkpoint.Running, "")
	// A later transaction with a smaller position is after the token too.
	move("three", 0, outbox.Cursor{TxID: 901, Position: 1}, checkpoint.Running, "")
	// Same transaction, earlier position: behind.
	move("three", 1, outbox.Cursor{TxID: 900, Position: 39}, checkpoint.Running, "")
	move("three", 2, outbox.Cursor{TxID: 899, Position: 99}, checkpoint.Failed, "decode OrderPlaced: boom")
	lag = notCaughtUp(observe.WaitFor(short(), pool, token, "one", "three"))
	require.Equal(t, "three", lag.Projection)
	require.Equal(t, []observe.SegmentLag{
		{Segment: 1, Cursor: outbox.Cursor{TxID: 900, Position: 39}, Status: checkpoint.Running},
		{Segment: 2, Cursor: outbox.Cursor{TxID: 899, Position: 99}, Status: checkpoint.Failed, LastError: "decode OrderPlaced: boom"},
	}, lag.Behind)
	require.Equal(t, "failed", lag.Status())
	require.True(t, lag.Stuck())
	require.Contains(t, lag.Error(), "segment 2 is at 899/99, failed")
	require.Contains(t, lag.Error(), "decode OrderPlaced: boom")

	// Unregistered projections are reported as such.
	lag = notCaughtUp(observe.WaitFor(short(), pool, token, "one", "nobody"))
	require.Equal(t, "nobody", lag.Projection)
	require.False(t, lag.Registered)
	require.Equal(t, "unregistered", lag.Status())

	// A wait ends as soon as the projections catch up.
	done := make(chan error, 1)
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	go func() { done <- observe.WaitFor(waitCtx, pool, token, "three") }()
	move("three", 1, token, checkpoint.Running, "")
	move("three", 2, outbox.Cursor{TxID: 1000, Position: 1}, checkpoint.Running, "")
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-waitCtx.Done():
		t.Fatal("WaitFor did not see the checkpoints pass the token")
	}
}

type failingQuerier struct{ err error }

func (f failingQuerier) Query(context.Context, string, ...any) (pgx.Rows, error) { return nil, f.err }
func (f failingQuerier) QueryRow(context.Context, string, ...any) pgx.Row        { return f }
func (f failingQuerier) Scan(...any) error                                       { return f.err }

func TestWaitForDatabaseError(t *testing.T) {
	t.Parallel()
	boom := errors.New("connection refused")
	err := observe.WaitFor(context.Background(), failingQuerier{boom}, outbox.Cursor{TxID: 1, Position: 1}, "one")
	require.ErrorIs(t, err, boom)
	var lag *observe.NotCaughtUpError
	require.False(t, errors.As(err, &lag), "a broken database is not a lagging projection")
}

// A token whose transaction id is not assigned yet is refused at once.
func TestWaitForTokenBeyondHead(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	err := observe.WaitFor(context.Background(), pool, outbox.Cursor{TxID: 1 << 62, Position: 1}, "any")
	require.ErrorIs(t, err, observe.ErrTokenBeyondHead)
}
