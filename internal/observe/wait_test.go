package observe_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

// waitRows writes events of aggregate Thing/id, one statement per element
// of versions (a statement's versions in one transaction), and returns the
// cursor of every event in log order.
func waitRows(t *testing.T, pool *pgxpool.Pool, id string, versions ...[]int) []outbox.Cursor {
	t.Helper()
	ctx := context.Background()
	var out []outbox.Cursor
	for _, vs := range versions {
		rows, err := pool.Query(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
			SELECT 'Thing', $1, 'Touched', '{}', v FROM unnest($2::int[]) v RETURNING txid, id`, id, vs)
		require.NoError(t, err)
		cs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (outbox.Cursor, error) {
			var c outbox.Cursor
			return c, r.Scan(&c.TxID, &c.Position)
		})
		require.NoError(t, err)
		out = append(out, cs...)
	}
	return out
}

// bucketOf is the outbox bucket of aggregate id (migration 006).
func bucketOf(t *testing.T, pool *pgxpool.Pool, id string) int {
	t.Helper()
	var b int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT readside.readside_segment($1, 64)`, id).Scan(&b))
	return b
}

func TestWaitFor(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "one", 1, "park"))
	// 3 does not divide 64: every segment passes over every bucket.
	require.NoError(t, checkpoint.Register(ctx, pool, "three", 3, "halt"))
	// v1, v2, then v3 and v4 in one transaction, then v5.
	c := waitRows(t, pool, "a", []int{1}, []int{2}, []int{3, 4}, []int{5})
	token := c[3]
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
	// A later transaction is after the token too.
	move("three", 0, c[4], checkpoint.Running, "")
	// Same transaction, earlier position: behind.
	move("three", 1, c[2], checkpoint.Running, "")
	move("three", 2, c[1], checkpoint.Failed, "decode OrderPlaced: boom")
	lag = notCaughtUp(observe.WaitFor(short(), pool, token, "one", "three"))
	require.Equal(t, "three", lag.Projection)
	require.Equal(t, []observe.SegmentLag{
		{Segment: 1, Cursor: c[2], Status: checkpoint.Running},
		{Segment: 2, Cursor: c[1], Status: checkpoint.Failed, LastError: "decode OrderPlaced: boom"},
	}, lag.Behind)
	require.Equal(t, "failed", lag.Status())
	require.True(t, lag.Stuck())
	require.Contains(t, lag.Error(), "segment 2 is at "+c[1].String()+", failed")
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
	move("three", 2, c[4], checkpoint.Running, "")
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-waitCtx.Done():
		t.Fatal("WaitFor did not see the checkpoints pass the token")
	}
}

// TestWaitForSegmentsWithNothingToRead: workers run a segment when a
// notification names one of its buckets, so the other segments of a
// projection stand behind the head with nothing of their own to read
// (until the poll). WaitFor passes them, but only when the read window has
// passed the token (a transaction still writing below it may add rows of
// theirs) and their rows are all in the outbox (not behind the pruning
// horizon).
func TestWaitForSegmentsWithNothingToRead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "four", 4, "park"))
	ids := map[int]string{} // segment of 4 -> an aggregate of it
	for i := 0; len(ids) < 4; i++ {
		id := fmt.Sprintf("agg-%d", i)
		if _, ok := ids[bucketOf(t, pool, id)%4]; !ok {
			ids[bucketOf(t, pool, id)%4] = id
		}
	}
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	long := func() context.Context {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	behind := func(err error) []int {
		t.Helper()
		var lag *observe.NotCaughtUpError
		require.ErrorAs(t, err, &lag)
		var segs []int
		for _, s := range lag.Behind {
			segs = append(segs, s.Segment)
		}
		return segs
	}

	// The read window is the cluster's: another database's young
	// transaction holds it for a grace, so what passes on emptiness does
	// once the window has moved.
	var token outbox.Cursor
	settles := func(want []int, msg string) {
		t.Helper()
		var got []int
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
			if got = behind(observe.WaitFor(short(), pool, token, "four")); slices.Equal(got, want) {
				return
			}
		}
		require.Equal(t, want, got, msg)
	}
	token = waitRows(t, pool, ids[2], []int{1})[0]
	settles([]int{2}, "only the segment whose bucket holds the row is behind")

	// A writer below the token still running: its rows may land in any
	// segment, so no segment passes the token on emptiness.
	holder, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = holder.Rollback(ctx) }()
	_, err = holder.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
		VALUES ('Thing', $1, 'Touched', '{}', 1)`, ids[1])
	require.NoError(t, err)
	token = waitRows(t, pool, ids[2], []int{2})[0]
	require.Equal(t, []int{0, 1, 2, 3}, behind(observe.WaitFor(short(), pool, token, "four")),
		"an older writer still running holds every segment")
	require.NoError(t, holder.Commit(ctx))
	settles([]int{1, 2}, "once it commits, its row holds its own segment")

	// Every segment applied it all; the outbox is pruned.
	head := waitRows(t, pool, ids[3], []int{1})[0]
	_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET cursor_txid = $1, cursor_position = $2 WHERE projection = 'four'`, head.TxID, head.Position)
	require.NoError(t, err)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	pruned, _, err := outbox.PruneChunk(ctx, tx, head, 1000, 0)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	require.Positive(t, pruned)
	require.NoError(t, observe.WaitFor(long(), pool, token, "four"))
	// Reset to the start, behind the horizon: every segment replays from
	// the events table, where WaitFor does not look for its rows.
	_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET cursor_txid = '0', cursor_position = 0 WHERE projection = 'four'`)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1, 2, 3}, behind(observe.WaitFor(short(), pool, token, "four")),
		"a cursor behind the pruning horizon is not passed on emptiness")
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

// TestWaitForWithTheDocumentedGrants: a role with exactly what the README
// lists for a consistency wait (USAGE on readside's schema, SELECT on
// projections, checkpoints, outbox and outbox_horizon) can wait, passed or
// not.
func TestWaitForWithTheDocumentedGrants(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)
	require.NoError(t, checkpoint.Register(ctx, pool, "four", 4, "park"))
	role := pgtest.NewRole(t, "LOGIN", pool)
	_, err := pool.Exec(ctx, `GRANT USAGE ON SCHEMA readside TO `+role+`;
		GRANT SELECT ON readside.projections, readside.checkpoints, readside.outbox, readside.outbox_horizon TO `+role)
	require.NoError(t, err)
	token := waitRows(t, pool, "a", []int{1})[0]
	reader := pgtest.Pool(t, pgtest.AsRole(url, role))

	// (Until the cluster's read window passes the token, every segment
	// is behind: see TestWaitForSegmentsWithNothingToRead.)
	var lag *observe.NotCaughtUpError
	for deadline := time.Now().Add(30 * time.Second); lag == nil || len(lag.Behind) > 1 && time.Now().Before(deadline); {
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		require.ErrorAs(t, observe.WaitFor(short, reader, token, "four"), &lag, "behind, and told so")
		cancel()
	}
	require.Len(t, lag.Behind, 1, "the segment of the row; the others have nothing before the token")

	_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET cursor_txid = $1, cursor_position = $2 WHERE projection = 'four'`, token.TxID, token.Position)
	require.NoError(t, err)
	long, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, observe.WaitFor(long, reader, token, "four"))

	// A token of a transaction still open, and one rolled back, are told
	// apart with the same grants (pg_locks, pg_xact_status).
	tx, open := openWrite(t, pool, "b")
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	require.ErrorAs(t, observe.WaitFor(short, reader, open, "four"), &lag)
	require.True(t, lag.Uncommitted)
	require.NoError(t, tx.Rollback(ctx))
	require.ErrorIs(t, observe.WaitFor(long, reader, open, "four"), observe.ErrTokenRolledBack)
}

// openWrite writes an event of aggregate Thing/id in a transaction it
// leaves open, and returns the transaction and the write's token.
func openWrite(t *testing.T, pool *pgxpool.Pool, id string) (pgx.Tx, outbox.Cursor) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	var c outbox.Cursor
	require.NoError(t, tx.QueryRow(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
		VALUES ('Thing', $1, 'Touched', '{}', 1) RETURNING txid, id`, id).Scan(&c.TxID, &c.Position))
	return tx, c
}

// waitWhile runs WaitFor for token and, once it is under way, end (which
// ends the token's transaction), and returns what WaitFor returned.
func waitWhile(t *testing.T, pool *pgxpool.Pool, token outbox.Cursor, end func() error, projections ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- observe.WaitFor(ctx, pool, token, projections...) }()
	time.Sleep(100 * time.Millisecond)
	require.NoError(t, end())
	return <-done
}

// A token handed out before its transaction committed (read from the
// INSERT's RETURNING) is waited for, never passed while the transaction is
// open: not by a segment's cursor, not by the rule for segments with
// nothing of their own to read. The wait that ends first says that the
// transaction has not committed. Once it commits and is applied, the wait
// passes. On a cluster of its own: the token's transaction must be the
// newest (its xid at or above the snapshot's xmax, where WaitFor looks for
// its lock); on the shared server another test's transaction often began
// after it, and the look went untested (make mutants let it through
// while other tests ran).
func TestWaitForTokenOfAnOpenTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := isolatedDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "one", 1, "park"))
	require.NoError(t, checkpoint.Register(ctx, pool, "eight", 8, "park"))
	tx, token := openWrite(t, pool, "a")

	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err := observe.WaitFor(wctx, pool, token, "one", "eight")
	var lag *observe.NotCaughtUpError
	require.ErrorAs(t, err, &lag, "open: not passed")
	require.True(t, lag.Uncommitted, "%v", err)
	require.Contains(t, err.Error(), "has not committed")
	require.False(t, lag.Stuck(), "it may still commit")

	wctx, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err = observe.WaitFor(wctx, pool, token, "eight")
	require.ErrorAs(t, err, &lag, "the segments without the row wait for the transaction too")
	require.Len(t, lag.Behind, 8)

	require.NoError(t, tx.Commit(ctx))
	_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET cursor_txid = $1, cursor_position = $2`, token.TxID, token.Position)
	require.NoError(t, err)
	wctx, cancel = context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, observe.WaitFor(wctx, pool, token, "one", "eight"), "committed and applied")
}

// A token whose transaction rolled back names a write that never happened:
// WaitFor says so at once, also when the transaction was still open when
// the wait began, rather than pass it (nothing to read) or time out.
func TestWaitForTokenOfARolledBackTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "one", 1, "park"))
	require.NoError(t, checkpoint.Register(ctx, pool, "eight", 8, "park"))

	tx, token := openWrite(t, pool, "a")
	require.NoError(t, tx.Rollback(ctx))
	start := time.Now()
	err := observe.WaitFor(ctx, pool, token, "one", "eight")
	require.ErrorIs(t, err, observe.ErrTokenRolledBack)
	require.Less(t, time.Since(start), 5*time.Second, "at once")

	tx, token = openWrite(t, pool, "b")
	err = waitWhile(t, pool, token, func() error { return tx.Rollback(ctx) }, "one", "eight")
	require.ErrorIs(t, err, observe.ErrTokenRolledBack, "rolled back while waited for")
}
