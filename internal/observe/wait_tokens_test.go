package observe_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/internal/pgtemp"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/migrations"
	"github.com/readside/readside/outbox"
)

// isolatedDB starts a disposable cluster, runs the given settings
// statements (ALTER SYSTEM) and restarts it when there are any, and
// returns a migrated database on it: for tests that need settings the
// shared server may not have, or no other session's transactions.
func isolatedDB(t *testing.T, settings ...string) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	cl, err := pgtemp.Start(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cl.Stop() })
	admin := pgtest.Pool(t, cl.URL)
	for _, s := range settings {
		_, err = admin.Exec(ctx, s)
		require.NoError(t, err)
	}
	if len(settings) > 0 {
		admin.Reset()
		require.NoError(t, cl.Restart(ctx))
	}
	_, err = admin.Exec(ctx, `CREATE DATABASE isolated`)
	require.NoError(t, err)
	pool := pgtest.Pool(t, pgtest.WithDatabase(cl.URL, "isolated"))
	_, err = migrations.Migrate(ctx, pool, migrations.Config{})
	require.NoError(t, err)
	return pool
}

// hookQuerier runs before(sql) ahead of every query it passes on.
type hookQuerier struct {
	inner  outbox.Querier
	mu     sync.Mutex
	seen   []string
	before func(sql string)
}

func (h *hookQuerier) note(sql string) {
	h.mu.Lock()
	h.seen = append(h.seen, strings.Join(strings.Fields(sql), " "))
	h.mu.Unlock()
	if h.before != nil {
		h.before(sql)
	}
}

func (h *hookQuerier) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	h.note(sql)
	return h.inner.Query(ctx, sql, args...)
}

func (h *hookQuerier) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	h.note(sql)
	return h.inner.QueryRow(ctx, sql, args...)
}

// A forged token whose xid8 is a whole epoch (2^32) past a transaction
// that is open now is beyond the head (no transaction can have it for
// ~4 billion more xids), though pg_locks.transactionid, the 32-bit xid,
// matches the open transaction's: refused at once, not waited for until
// the deadline (a 504 with Retry-After over HTTP).
func TestWaitForForgedTokenOneEpochAheadOfAnOpenTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "one", 1, "park"))
	_, open := openWrite(t, pool, "a")
	forged := outbox.Cursor{TxID: open.TxID + 1<<32, Position: 1}

	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	start := time.Now()
	err := observe.WaitFor(wctx, pool, forged, "one")
	t.Logf("after %v: %T %v", time.Since(start).Round(time.Millisecond), err, err)
	require.ErrorIs(t, err, observe.ErrTokenBeyondHead, "xid8 %d is one epoch past open xid %d", forged.TxID, open.TxID)
}

// The token's transaction is open when the wait begins and rolls back
// while the first poll runs, which the wait's deadline interrupts (a busy
// server). The last look after the deadline finds the projection passed
// and asks how the transaction ended with a context of its own: the
// rollback is reported, not "context canceled" (an HTTP 500).
func TestWaitForLastLookAfterTheDeadline(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "one", 1, "park"))
	tx, token := openWrite(t, pool, "a")

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var once sync.Once
	q := &hookQuerier{inner: pool, before: func(sql string) {
		if strings.Contains(sql, "unnest($1::text[])") { // lagSQL
			once.Do(func() {
				require.NoError(t, tx.Rollback(ctx))
				cancel() // the deadline, as the first poll runs
			})
		}
	}}
	err := observe.WaitFor(wctx, q, token, "one")
	t.Logf("%T %v", err, err)
	var lag *observe.NotCaughtUpError
	if !errors.As(err, &lag) {
		require.ErrorIs(t, err, observe.ErrTokenRolledBack, "rolled back: say so (or at least a NotCaughtUpError)")
	}
}

// Same, on the main loop's path: the poll sees the projection passed (the
// transaction, open at the start, has rolled back), and the deadline falls
// before the look at its status, which still reports the rollback.
func TestWaitForStatusLookAfterTheDeadline(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "one", 1, "park"))
	tx, token := openWrite(t, pool, "a")

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var lagged, once sync.Once
	q := &hookQuerier{inner: pool, before: func(sql string) {
		switch {
		case strings.Contains(sql, "unnest($1::text[])"):
			lagged.Do(func() { require.NoError(t, tx.Rollback(ctx)) })
		case strings.TrimSpace(sql) == "SELECT pg_xact_status($1::xid8)":
			once.Do(cancel) // the deadline, between the poll and passed()
		}
	}}
	err := observe.WaitFor(wctx, q, token, "one")
	t.Logf("%T %v", err, err)
	var lag *observe.NotCaughtUpError
	if !errors.As(err, &lag) {
		require.ErrorIs(t, err, observe.ErrTokenRolledBack)
	}
}

// An event written in a savepoint that is rolled back while the top-level
// transaction stays open: once readers' fence passes the transaction (it
// is no longer a registered writer) the read window passes the token, but
// the transaction is still in progress: the wait goes on until it ends,
// and says so when it ends first.
func TestWaitForTokenOfAWriteRolledBackToASavepoint(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "one", 1, "park"))
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SAVEPOINT s`)
	require.NoError(t, err)
	var token outbox.Cursor
	require.NoError(t, tx.QueryRow(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
		VALUES ('Thing', 'a', 'Touched', '{}', 1) RETURNING txid, id`).Scan(&token.TxID, &token.Position))
	_, err = tx.Exec(ctx, `ROLLBACK TO SAVEPOINT s`)
	require.NoError(t, err)

	// (Past the fence's grace, 250 ms, the read window passes the token.)
	wctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	err = observe.WaitFor(wctx, pool, token, "one")
	var lag *observe.NotCaughtUpError
	require.ErrorAs(t, err, &lag, "not passed while its transaction is open")
	require.True(t, lag.Uncommitted, "%v", err)

	err = waitWhile(t, pool, token, func() error { return tx.Rollback(ctx) }, "one")
	require.ErrorIs(t, err, observe.ErrTokenRolledBack)
}

// Interleavings between headSQL, lockSQL and the second headSQL: the
// token's transaction ends just before lockSQL, or after lockSQL found it
// open, before the first poll. Expect ErrTokenRolledBack for a rollback, a normal wait for a
// commit; never ErrTokenBeyondHead.
func TestWaitForTokenEndingBetweenTheLooks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A cluster of its own: on a shared one, other tests' transactions end
	// all the time, and the token's would seldom be the newest.
	pool := isolatedDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "one", 1, "park"))
	for _, c := range []struct {
		at     string
		commit bool
	}{{"pg_locks", false}, {"pg_locks", true}, {"first poll", false}, {"first poll", true}} {
		// Make the token's transaction the newest so that headSQL finds it
		// at or above xmax (retry if another test's transaction ended after).
		for try := 0; ; try++ {
			tx, token := openWrite(t, pool, fmt.Sprintf("%s-%v-%d", c.at, c.commit, try))
			var once sync.Once
			q := &hookQuerier{inner: pool, before: func(sql string) {
				if c.at == "pg_locks" && strings.Contains(sql, "pg_locks") ||
					c.at == "first poll" && strings.Contains(sql, "unnest($1::text[])") {
					once.Do(func() {
						if c.commit {
							require.NoError(t, tx.Commit(ctx))
							_, err := pool.Exec(ctx, `UPDATE readside.checkpoints SET cursor_txid = $1, cursor_position = $2`, token.TxID, token.Position)
							require.NoError(t, err)
						} else {
							require.NoError(t, tx.Rollback(ctx))
						}
					})
				}
			}}
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := observe.WaitFor(wctx, q, token, "one")
			cancel()
			tookLockPath := false
			for _, s := range q.seen {
				tookLockPath = tookLockPath || strings.Contains(s, "pg_locks")
			}
			if !tookLockPath {
				_ = tx.Rollback(ctx)
				require.Less(t, try, 20, "never at or above xmax")
				continue
			}
			t.Logf("%s commit=%v: %v", c.at, c.commit, err)
			if c.commit {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, observe.ErrTokenRolledBack)
			}
			break
		}
	}
}

// A token of a prepared transaction (PREPARE TRANSACTION): its xid keeps
// its lock (held by the prepared transaction's dummy proc, pid NULL) and
// pg_xact_status says "in progress" until COMMIT/ROLLBACK PREPARED.
// (On a disposable cluster: the shared test server may not allow prepared
// transactions.)
func TestWaitForTokenOfAPreparedTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := isolatedDB(t, `ALTER SYSTEM SET max_prepared_transactions = 8`)
	require.NoError(t, checkpoint.Register(ctx, pool, "one", 1, "park"))
	_, err := pool.Exec(ctx, `CREATE TABLE scratch (x text)`)
	require.NoError(t, err)
	prepare := func(id, gid string) outbox.Cursor {
		conn, err := pool.Acquire(ctx)
		require.NoError(t, err)
		defer conn.Release()
		_, err = conn.Exec(ctx, `BEGIN`)
		require.NoError(t, err)
		var c outbox.Cursor
		// An event writer cannot be prepared (its trigger NOTIFYs): a
		// transaction that wrote elsewhere, and a token of its xid.
		require.NoError(t, conn.QueryRow(ctx, `INSERT INTO scratch VALUES ($1) RETURNING pg_current_xact_id(), 1`, id).Scan(&c.TxID, &c.Position))
		_, err = conn.Exec(ctx, `PREPARE TRANSACTION '`+gid+`'`)
		require.NoError(t, err)
		t.Cleanup(func() { _, _ = pool.Exec(ctx, `ROLLBACK PREPARED '`+gid+`'`) })
		return c
	}
	gid := fmt.Sprintf("review-%d", time.Now().UnixNano())
	token := prepare("a", gid+"a")
	var locked bool
	require.NoError(t, pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'transactionid' AND transactionid = xid($1::xid8) AND pid IS NULL)`, token.TxID).Scan(&locked))
	require.True(t, locked, "the prepared transaction holds its xid's lock")

	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err = observe.WaitFor(wctx, pool, token, "one")
	t.Logf("prepared: %v", err)
	var lag *observe.NotCaughtUpError
	require.ErrorAs(t, err, &lag)
	require.True(t, lag.Uncommitted)
	_, err = pool.Exec(ctx, `ROLLBACK PREPARED '`+gid+`a'`)
	require.NoError(t, err)
	err = observe.WaitFor(ctx, pool, token, "one")
	t.Logf("rolled back prepared: %v", err)
	require.ErrorIs(t, err, observe.ErrTokenRolledBack)

	finish := func(how, gid string) func() error {
		return func() error { _, err := pool.Exec(ctx, how+` PREPARED '`+gid+`'`); return err }
	}
	token = prepare("b", gid+"b")
	require.NoError(t, waitWhile(t, pool, token, finish("COMMIT", gid+"b"), "one"), "committed prepared")
	token = prepare("c", gid+"c")
	err = waitWhile(t, pool, token, finish("ROLLBACK", gid+"c"), "one")
	require.ErrorIs(t, err, observe.ErrTokenRolledBack, "prepared, rolled back while waited for")
}

// Forged tokens: special xids pass at once (nothing lies before them), ids
// beyond the head are refused at once; none waits for the deadline.
func TestWaitForForgedTokens(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	require.NoError(t, checkpoint.Register(ctx, pool, "one", 1, "park"))
	for _, x := range []uint64{0, 1, 2, 3, 1 << 32, 1<<32 + 1, 1<<32 + 3, 1 << 63, 1<<64 - 1} {
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		start := time.Now()
		err := observe.WaitFor(wctx, pool, outbox.Cursor{TxID: x, Position: 1}, "one")
		cancel()
		require.Less(t, time.Since(start), 3*time.Second, "%d: at once", x)
		if x < 4 {
			// Special xids, long before any write: nothing of the
			// projection's lies before them.
			require.NoError(t, err, "%d", x)
		} else {
			require.ErrorIs(t, err, observe.ErrTokenBeyondHead, "%d", x)
		}
	}
}
