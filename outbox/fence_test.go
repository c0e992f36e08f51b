package outbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

// The read window is held back by event-writing transactions only (README, Guarantees 1):
// the events trigger registers its transaction and refuses one whose xid
// lies below the fence readers publish. These tests hold transactions open
// on purpose; none of them waits by sleeping: they wait for conditions
// (the fence past an xid, an event readable) with a deadline.

// xidOf returns tx's transaction id, assigning one if it has none.
func xidOf(t *testing.T, tx pgx.Tx) uint64 {
	t.Helper()
	var x uint64
	require.NoError(t, tx.QueryRow(context.Background(), `SELECT pg_current_xact_id()`).Scan(&x))
	return x
}

// fence returns the read fence of pool's database.
func fence(t *testing.T, pool *pgxpool.Pool) uint64 {
	t.Helper()
	var f uint64
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT coalesce(pg_sequence_last_value('readside.read_fence'), 0)`).Scan(&f))
	return f
}

// refusals returns how many writers the fence of pool's database refused.
func refusals(t *testing.T, pool *pgxpool.Pool) int64 {
	t.Helper()
	var n int64
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT coalesce(pg_sequence_last_value('readside.read_fence_refusals'), 0)`).Scan(&n))
	return n
}

// until polls cond (every 10 ms, each poll a reader's query) until it holds,
// failing the test after a deadline.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fencePast has readers advance the fence of pool's database past xid:
// from then on a transaction with that xid that has not registered cannot
// write an event.
func fencePast(t *testing.T, pool *pgxpool.Pool, xid uint64) {
	t.Helper()
	// The fence moves to an xmax readers saw: a transaction younger than
	// xid must end first.
	_, err := pool.Exec(context.Background(), `SELECT pg_current_xact_id()`)
	require.NoError(t, err)
	until(t, fmt.Sprintf("the fence past xid %d", xid), func() bool {
		_, err := outbox.ReadHead(context.Background(), pool)
		require.NoError(t, err)
		return fence(t, pool) > xid
	})
}

// readAll reads everything the window holds after c.
func readAll(t *testing.T, pool *pgxpool.Pool, c outbox.Cursor) []outbox.Event {
	t.Helper()
	var out []outbox.Event
	for {
		b, err := outbox.Fetch(context.Background(), pool, c, 100, outbox.Filter{})
		require.NoError(t, err)
		out = append(out, b.Events...)
		if b.Scanned == 0 {
			return out
		}
		c = b.Next
	}
}

func ids(events []outbox.Event) []string {
	var out []string
	for _, e := range events {
		out = append(out, e.AggregateID)
	}
	return out
}

func thing(id string) outbox.Aggregate { return outbox.Aggregate{Type: "Thing", ID: id} }

func appendIn(ctx context.Context, tx pgx.Tx, id string) (*outbox.AppendResult, error) {
	return outbox.Append(ctx, tx, thing(id), 0, []outbox.NewEvent{ev("Touched", 1)})
}

// A transaction that writes no event holds nothing back, however long it
// stays open and wherever it runs: in the same database, in another
// database of the cluster, or writing events into another database that
// runs readside (a window per database).
func TestWindowNotHeldByUnrelatedTransactions(t *testing.T) {
	t.Parallel()
	for name, open := range map[string]func(t *testing.T, pool *pgxpool.Pool) pgx.Tx{
		"same database, no events": func(t *testing.T, pool *pgxpool.Pool) pgx.Tx {
			_, err := pool.Exec(context.Background(), `CREATE TABLE batch (n int)`)
			require.NoError(t, err)
			tx, err := pool.Begin(context.Background())
			require.NoError(t, err)
			_, err = tx.Exec(context.Background(), `INSERT INTO batch VALUES (1)`)
			require.NoError(t, err)
			return tx
		},
		"another database, no events": func(t *testing.T, _ *pgxpool.Pool) pgx.Tx {
			other := pgtest.Pool(t, pgtest.NewEmptyDatabaseURL(t))
			_, err := other.Exec(context.Background(), `CREATE TABLE batch (n int)`)
			require.NoError(t, err)
			tx, err := other.Begin(context.Background())
			require.NoError(t, err)
			_, err = tx.Exec(context.Background(), `INSERT INTO batch VALUES (1)`)
			require.NoError(t, err)
			return tx
		},
		"another database, events": func(t *testing.T, _ *pgxpool.Pool) pgx.Tx {
			other := pgtest.NewDB(t)
			tx, err := other.Begin(context.Background())
			require.NoError(t, err)
			_, err = appendIn(context.Background(), tx, "elsewhere")
			require.NoError(t, err)
			return tx
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := pgtest.NewDB(t)
			long := open(t, pool)
			defer func() { _ = long.Rollback(ctx) }()
			lx := xidOf(t, long)

			res, err := appendTx(ctx, pool, thing("after"), 0, ev("Touched", 1))
			require.NoError(t, err)
			require.Greater(t, res.TxID, lx, "the event's transaction is younger than the open one")
			until(t, "the event after the open transaction is read", func() bool {
				got := readAll(t, pool, outbox.Start)
				return len(got) == 1 && got[0].AggregateID == "after"
			})
			h, err := outbox.ReadHead(ctx, pool)
			require.NoError(t, err)
			require.False(t, h.Behind(), "nothing waits behind the window")
			holder, err := outbox.WindowHolder(ctx, pool)
			require.NoError(t, err)
			require.Nil(t, holder, "no event writer holds this database's window")
			var open bool
			require.NoError(t, long.QueryRow(ctx, `SELECT true`).Scan(&open), "the transaction is still open")
		})
	}
}

// An event-writing transaction holds the window while it is open, past
// the fence, and is named; once it commits its event is read before the
// younger one. Without the registration the reader would pass it and its
// event, committed later, would sort behind the cursor: lost.
func TestWindowHeldByEventWriter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	w, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = w.Rollback(ctx) }()
	wr, err := appendIn(ctx, w, "writer")
	require.NoError(t, err)
	var pid int
	require.NoError(t, w.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))

	_, err = appendTx(ctx, pool, thing("younger"), 0, ev("Touched", 1))
	require.NoError(t, err)
	fencePast(t, pool, wr.TxID)
	require.Empty(t, readAll(t, pool, outbox.Start), "the younger event waits for the open writer")
	h, err := outbox.ReadHead(ctx, pool)
	require.NoError(t, err)
	require.True(t, h.Behind())

	holder, err := outbox.WindowHolder(ctx, pool)
	require.NoError(t, err)
	require.NotNil(t, holder)
	require.Equal(t, wr.TxID, holder.TxID)
	require.Equal(t, pid, holder.PID)
	require.False(t, holder.AgeUnknown, "a superuser sees every session")
	require.False(t, holder.Prepared)
	require.Equal(t, "idle in transaction", holder.State)

	// A second statement of the registered writer is not refused, though
	// the fence has passed its xid.
	_, err = outbox.Append(ctx, w, thing("writer-2"), 0, []outbox.NewEvent{ev("Touched", 1)})
	require.NoError(t, err)
	require.NoError(t, w.Commit(ctx))
	until(t, "all three events read", func() bool { return len(readAll(t, pool, outbox.Start)) == 3 })
	require.Equal(t, []string{"writer", "writer-2", "younger"}, ids(readAll(t, pool, outbox.Start)), "xid order")
}

// A transaction that took its xid early (it wrote something else first)
// and reaches its first event after readers have passed it is refused
// with a retryable 40001, at every isolation level: REPEATABLE READ and
// SERIALIZABLE writers took their snapshot before the fence moved, and
// still see it (the fence is not read through a snapshot). Its retry is
// read. Never lost: without the fence check the event would commit behind
// the reader's cursor.
func TestEarlyWriterCrossingTheFenceIsRefused(t *testing.T) {
	t.Parallel()
	for _, iso := range []pgx.TxIsoLevel{pgx.ReadCommitted, pgx.RepeatableRead, pgx.Serializable} {
		t.Run(string(iso), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := pgtest.NewDB(t)
			_, err := pool.Exec(ctx, `CREATE TABLE app_rows (n int)`)
			require.NoError(t, err)

			early, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: iso})
			require.NoError(t, err)
			defer func() { _ = early.Rollback(ctx) }()
			_, err = early.Exec(ctx, `INSERT INTO app_rows VALUES (1)`) // takes the xid and, above READ COMMITTED, the snapshot
			require.NoError(t, err)
			ex := xidOf(t, early)

			passed, err := appendTx(ctx, pool, thing("passed"), 0, ev("Touched", 1))
			require.NoError(t, err)
			var cursor outbox.Cursor
			until(t, "the reader passes the early transaction", func() bool {
				got := readAll(t, pool, outbox.Start)
				if len(got) == 1 {
					cursor = got[0].Cursor
				}
				return len(got) == 1
			})
			require.Equal(t, passed.Cursor(), cursor)
			require.Greater(t, cursor.TxID, ex)
			require.Greater(t, fence(t, pool), ex, "the reader read past the early xid only once the fence had passed it")
			before := refusals(t, pool)

			_, err = appendIn(ctx, early, "early")
			if err == nil {
				require.NoError(t, early.Commit(ctx))
				got := readAll(t, pool, cursor)
				require.Equal(t, []string{"early"}, ids(got), "the early transaction's event committed behind the reader's cursor: lost")
				return
			}
			require.ErrorIs(t, err, outbox.ErrReadFence)
			require.ErrorIs(t, err, outbox.ErrConcurrencyConflict, "retryable")
			requirePgError(t, err, "40001", "readside_read_fence")
			require.Equal(t, before+1, refusals(t, pool), "the refusal is counted")
			require.NoError(t, early.Rollback(ctx))

			retry, err := appendTx(ctx, pool, thing("early"), 0, ev("Touched", 1))
			require.NoError(t, err)
			until(t, "the retry is read", func() bool { return len(readAll(t, pool, cursor)) == 1 })
			require.Equal(t, retry.Cursor(), readAll(t, pool, cursor)[0].Cursor)
		})
	}
}

// A registration lives as long as the rows it covers: ROLLBACK TO
// SAVEPOINT drops both, so the next event of a transaction the fence has
// passed is refused; RELEASE keeps both, and it is not.
func TestRegistrationFollowsSubtransactions(t *testing.T) {
	t.Parallel()
	for _, end := range []string{"ROLLBACK TO SAVEPOINT s", "RELEASE SAVEPOINT s"} {
		t.Run(end, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := pgtest.NewDB(t)
			tx, err := pool.Begin(ctx)
			require.NoError(t, err)
			defer func() { _ = tx.Rollback(ctx) }()
			_, err = tx.Exec(ctx, `SAVEPOINT s`)
			require.NoError(t, err)
			first, err := appendIn(ctx, tx, "in-savepoint")
			require.NoError(t, err)
			_, err = tx.Exec(ctx, end)
			require.NoError(t, err)
			require.Equal(t, first.TxID, xidOf(t, tx), "events carry the top-level xid")

			_, err = appendTx(ctx, pool, thing("other"), 0, ev("Touched", 1))
			require.NoError(t, err)
			fencePast(t, pool, first.TxID)
			_, err = appendIn(ctx, tx, "after")
			if end == "RELEASE SAVEPOINT s" {
				require.NoError(t, err)
				require.NoError(t, tx.Commit(ctx))
				until(t, "all read", func() bool { return len(readAll(t, pool, outbox.Start)) == 3 })
				return
			}
			require.ErrorIs(t, err, outbox.ErrReadFence)
		})
	}
}

// A transaction that writes other tables first and its events later than
// the fence's grace calls readside_register() first: it holds the window
// from then on (named as the holder) and its events are not refused. The
// writer grant (readside_grant_writer) includes calling it.
func TestRegisterFirst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	role := writerRole(t, pool)
	_, err := pool.Exec(ctx, `CREATE TABLE app_rows (n int); GRANT INSERT ON app_rows TO `+role)
	require.NoError(t, err)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SET LOCAL ROLE `+role)
	require.NoError(t, err)
	var x uint64
	require.NoError(t, tx.QueryRow(ctx, `SELECT readside.readside_register()`).Scan(&x))
	_, err = tx.Exec(ctx, `INSERT INTO app_rows VALUES (1)`)
	require.NoError(t, err)

	_, err = appendTx(ctx, pool, thing("younger"), 0, ev("Touched", 1))
	require.NoError(t, err)
	fencePast(t, pool, x)
	require.Empty(t, readAll(t, pool, outbox.Start), "the registered transaction holds the window")
	holder, err := outbox.WindowHolder(ctx, pool)
	require.NoError(t, err)
	require.NotNil(t, holder)
	require.Equal(t, x, holder.TxID)

	_, err = appendIn(ctx, tx, "registered")
	require.NoError(t, err, "registered before the fence passed it")
	require.NoError(t, tx.Commit(ctx))
	until(t, "both read", func() bool { return len(readAll(t, pool, outbox.Start)) == 2 })
	require.Equal(t, []string{"registered", "younger"}, ids(readAll(t, pool, outbox.Start)))
}

// Erasure updates an event in place and writes no outbox row: an erasure
// in progress holds nothing back; readers see the payload committed when
// they read.
func TestErasureDoesNotHoldTheWindow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	first, err := appendTx(ctx, pool, thing("erased"), 0,
		outbox.NewEvent{Type: "Touched", Data: json.RawMessage(`{"name":"Ada"}`)})
	require.NoError(t, err)
	erase, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = erase.Rollback(ctx) }()
	_, err = erase.Exec(ctx, `SELECT readside.readside_erase_event_data($1, '{"name":"[erased]"}', NULL, 'test')`, first.Positions[0])
	require.NoError(t, err)

	_, err = appendTx(ctx, pool, thing("after"), 0, ev("Touched", 1))
	require.NoError(t, err)
	until(t, "both read during the erasure", func() bool { return len(readAll(t, pool, outbox.Start)) == 2 })
	require.JSONEq(t, `{"name":"Ada"}`, string(readAll(t, pool, outbox.Start)[0].Data))
	require.NoError(t, erase.Commit(ctx))
	require.JSONEq(t, `{"name":"[erased]"}`, string(readAll(t, pool, outbox.Start)[0].Data), "a replay reads the erased payload")
}

// Writers never wait for readers: a reader holds its own lock (the one
// that serialises the fence's advance) until its transaction ends, and a
// writer with a lock timeout appends meanwhile; so does a second reader.
func TestWritersDoNotWaitForReaders(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	reader, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	require.NoError(t, err)
	defer func() { _ = reader.Rollback(ctx) }()
	_, err = outbox.Fetch(ctx, reader, outbox.Start, 10, outbox.Filter{})
	require.NoError(t, err)

	for i := range 3 {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '100ms'`); err != nil {
				return err
			}
			_, err := outbox.Append(ctx, tx, thing(fmt.Sprint("w", i)), 0, []outbox.NewEvent{ev("Touched", 1)})
			return err
		})
		require.NoError(t, err)
	}
	until(t, "a second reader reads them", func() bool { return len(readAll(t, pool, outbox.Start)) == 3 })
	var waiting int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
		WHERE d.datname = current_database() AND NOT l.granted`).Scan(&waiting))
	require.Zero(t, waiting)
}

// Readers advance the fence one at a time under a lock (advisory key
// 1920168548, 0) held for the advance only: taken in a subtransaction that
// every call rolls back, it never outlives the call, on any path. Through
// readside's pinned pipeline (an implicit transaction), inside a reader's
// own long transaction (which then does not keep other readers from
// advancing the fence), and when statement_timeout cancels the call
// anywhere, nothing is left on the session (PgBouncer hands it on).
func TestReaderLockLastsOneCall(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	raw := pgtest.NewDB(t)
	pool := dbschema.Default.Pool(raw)
	readerLocks := func() int {
		var n int
		require.NoError(t, raw.QueryRow(ctx, `SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
			WHERE d.datname = current_database() AND l.locktype = 'advisory' AND l.classid = 1920168548 AND l.objsubid = 2`).Scan(&n))
		return n
	}
	newXID := func() {
		_, err := raw.Exec(ctx, `SELECT pg_current_xact_id()`)
		require.NoError(t, err)
	}

	for range 10 {
		_, err := outbox.ReadHead(ctx, pool)
		require.NoError(t, err)
	}
	require.Zero(t, readerLocks(), "pinned pipeline")

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	until(t, "the reader in a transaction advances the fence", func() bool {
		newXID()
		f := fence(t, raw)
		_, err := outbox.Fetch(ctx, tx, outbox.Start, 1, outbox.Filter{})
		require.NoError(t, err)
		return fence(t, raw) > f
	})
	require.Zero(t, readerLocks(), "the transaction that advanced the fence is open, its lock is not held")
	newXID()
	var x uint64
	require.NoError(t, raw.QueryRow(ctx, `SELECT pg_current_xact_id()`).Scan(&x))
	fencePast(t, raw, x) // by other readers, the transaction still open
	require.NoError(t, tx.Rollback(ctx))

	conn, err := raw.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.Exec(ctx, `SET statement_timeout = '1ms'`)
	require.NoError(t, err)
	canceled := 0
	for range 200 {
		if _, err := outbox.ReadHead(ctx, conn); err != nil {
			requirePgError(t, err, "57014", "")
			canceled++
		}
	}
	_, err = conn.Exec(ctx, `RESET statement_timeout`)
	require.NoError(t, err)
	t.Logf("%d of 200 reads cancelled by statement_timeout", canceled)
	require.Zero(t, readerLocks(), "cancelled reads")
}

// The bound is computed for the snapshot the reading statement runs with.
// A transaction running in that snapshot that ended before the bound was
// computed may have committed events the snapshot cannot see: the bound
// stays below it. One that ended without events, or that is still running
// unregistered below the fence, holds nothing back. A REPEATABLE READ
// reader, whose statements all run with the transaction's snapshot, is
// held by every one that ended.
func TestReadBoundOfAnOlderSnapshot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := pool.Exec(ctx, `CREATE TABLE app_rows (n int)`)
	require.NoError(t, err)
	begin := func() pgx.Tx {
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { _ = tx.Rollback(ctx) })
		return tx
	}
	// xids in this order: plain < running < writer.
	plain, running, writer := begin(), begin(), begin()
	for _, tx := range []pgx.Tx{plain, running} {
		_, err = tx.Exec(ctx, `INSERT INTO app_rows VALUES (1)`)
		require.NoError(t, err)
	}
	px, rx := xidOf(t, plain), xidOf(t, running)
	wr, err := appendIn(ctx, writer, "writer")
	require.NoError(t, err)
	require.Less(t, rx, wr.TxID)
	// A transaction ending after all three puts them below the snapshot's
	// xmax (the first xid not yet ended); its event is one the snapshots
	// below see, behind the writer's.
	after, err := appendTx(ctx, pool, thing("after"), 0, ev("Touched", 1))
	require.NoError(t, err)
	var snap string
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&snap))
	rr, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	require.NoError(t, err)
	defer func() { _ = rr.Rollback(ctx) }()
	_, err = rr.Exec(ctx, `SELECT 1`) // takes the snapshot: writer and plain still running
	require.NoError(t, err)
	fencePast(t, pool, max(wr.TxID, px, rx))

	bound := func(q outbox.Querier) uint64 {
		var b uint64
		require.NoError(t, q.QueryRow(ctx, `SELECT readside.readside_read_bound($1::pg_snapshot)`, snap).Scan(&b))
		return b
	}
	require.LessOrEqual(t, bound(pool), wr.TxID, "the registered writer holds the bound")
	require.NoError(t, plain.Commit(ctx))
	require.NoError(t, writer.Commit(ctx))
	require.Equal(t, wr.TxID, bound(pool), "the writer ended after the snapshot with events it cannot see; "+
		"the transaction that ended without events, and the one still running below the fence, hold nothing")

	// The REPEATABLE READ reader cannot see the writer's event: it must
	// not read past it.
	batch, err := outbox.Fetch(ctx, rr, outbox.Start, 10, outbox.Filter{})
	require.NoError(t, err)
	require.Empty(t, batch.Events, "nothing before the writer's event: the one after it waits")
	require.True(t, batch.Next.Less(wr.Cursor()))
	require.Equal(t, []string{"writer", "after"}, ids(readAll(t, pool, batch.Next)))
	require.Equal(t, after.Cursor(), readAll(t, pool, batch.Next)[1].Cursor)
	var now uint64
	require.NoError(t, pool.QueryRow(ctx, `SELECT readside.readside_read_bound(pg_current_snapshot())`).Scan(&now))
	require.Greater(t, now, wr.TxID, "a READ COMMITTED reader now is held by none of them")
	var open bool
	require.NoError(t, running.QueryRow(ctx, `SELECT true`).Scan(&open))
}

// The refusal is the retryable 40001 with its own constraint name, for
// writers outside Go (Rails ActiveRecord::SerializationFailure, Ecto
// :serialization_failure).
func TestFenceRefusalIsSerializationFailure(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := pool.Exec(ctx, `CREATE TABLE app_rows (n int)`)
	require.NoError(t, err)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `INSERT INTO app_rows VALUES (1)`)
	require.NoError(t, err)
	_, err = appendTx(ctx, pool, thing("other"), 0, ev("Touched", 1))
	require.NoError(t, err)
	fencePast(t, pool, xidOf(t, tx))
	// An INSERT of no row writes nothing to refuse (a statement trigger
	// fires all the same).
	_, err = tx.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
		SELECT 'Thing', 'none', 'Touched', '{}', 1 WHERE false`)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version) VALUES ('Thing', 'sql', 'Touched', '{}', 1)`)
	requirePgError(t, err, "40001", "readside_read_fence")
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Contains(t, pgErr.Hint, "readside_register()")
}

// A transaction the fence has not passed yet may still write its first
// event, so it holds the window until the fence passes it (one to two
// grace periods), whether or not it turns out to write events. Here the
// fence is held still (a session holds the lock readers advance it under)
// so that the transaction stays above it.
func TestUnfencedTransactionHoldsTheWindow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := pool.Exec(ctx, `CREATE TABLE app_rows (n int)`)
	require.NoError(t, err)
	_, err = outbox.ReadHead(ctx, pool) // a first fence
	require.NoError(t, err)
	still, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer still.Release()
	_, err = still.Exec(ctx, `SELECT pg_advisory_lock(1920168548, 0)`)
	require.NoError(t, err)
	defer still.Exec(context.Background(), `SELECT pg_advisory_unlock(1920168548, 0)`) //nolint:errcheck

	young, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = young.Rollback(ctx) }()
	_, err = young.Exec(ctx, `INSERT INTO app_rows VALUES (1)`)
	require.NoError(t, err)
	yx := xidOf(t, young)
	require.GreaterOrEqual(t, yx, fence(t, pool))
	_, err = appendTx(ctx, pool, thing("later"), 0, ev("Touched", 1))
	require.NoError(t, err)
	require.Empty(t, readAll(t, pool, outbox.Start), "the younger event waits: the open transaction may still write one")
	require.Empty(t, readAll(t, pool, outbox.Start))

	_, err = appendIn(ctx, young, "young")
	require.NoError(t, err, "above the fence: not refused")
	require.NoError(t, young.Commit(ctx))
	until(t, "both read", func() bool { return len(readAll(t, pool, outbox.Start)) == 2 })
	require.Equal(t, []string{"young", "later"}, ids(readAll(t, pool, outbox.Start)))
}

// withUser returns rawURL connecting as user (the test server trusts
// local connections).
func withUser(rawURL, user string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		panic(err)
	}
	u.User = url.User(user)
	return u.String()
}

// newRole creates a login role for this test (roles are cluster-wide),
// dropped in t.Cleanup.
func newRole(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	ctx := context.Background()
	var name string
	require.NoError(t, pool.QueryRow(ctx, `SELECT 'fleet_' || substr(md5(random()::text), 1, 12)`).Scan(&name))
	_, err := pool.Exec(ctx, `CREATE ROLE `+name+` LOGIN; GRANT USAGE ON SCHEMA readside TO `+name)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP OWNED BY `+name+`; DROP ROLE IF EXISTS `+name) })
	return name
}

// A fleet that runs as an ordinary role lists the event writers (pg_locks
// needs no privilege) but pg_stat_activity hides another role's start,
// state and query from it: the holder's age is unknown, not 0, until the
// role is granted pg_read_all_stats.
func TestWindowHolderForAnOrdinaryRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, dbURL)
	role := newRole(t, pool)
	w, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = w.Rollback(ctx) }()
	wr, err := appendIn(ctx, w, "writer")
	require.NoError(t, err)

	for _, granted := range []bool{false, true} {
		if granted {
			_, err := pool.Exec(ctx, `GRANT pg_read_all_stats TO `+role)
			require.NoError(t, err)
		}
		fleet := pgtest.Pool(t, withUser(dbURL, role))
		holder, err := outbox.WindowHolder(ctx, fleet)
		require.NoError(t, err)
		require.NotNil(t, holder)
		require.Equal(t, wr.TxID, holder.TxID)
		require.NotZero(t, holder.PID)
		require.Equal(t, !granted, holder.AgeUnknown)
		if granted {
			require.Equal(t, "idle in transaction", holder.State)
			require.Positive(t, holder.Age)
		} else {
			require.Zero(t, holder.Age)
			require.Empty(t, holder.Query, "not <insufficient privilege>")
		}
		fleet.Close()
	}
}

// A database restored into a new cluster brings its read fence along, above
// every xid of the new cluster: every writer would be refused. CheckXIDs
// counts the fence as a stored xid, so readers refuse to run with
// ErrXIDRegression; the writer's refusal names the cause.
func TestCheckXIDsDetectsRestoredFence(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := outbox.ReadHead(ctx, pool)
	require.NoError(t, err)
	require.NoError(t, outbox.CheckXIDs(ctx, pool), "a fence readers published is below the next xid")
	_, err = pool.Exec(ctx, `SELECT setval('readside.read_fence', pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000)`)
	require.NoError(t, err)
	require.ErrorIs(t, outbox.CheckXIDs(ctx, pool), outbox.ErrXIDRegression)
	_, err = appendTx(ctx, pool, thing("restored"), 0, ev("Touched", 1))
	require.ErrorIs(t, err, outbox.ErrReadFence)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Contains(t, pgErr.Message, "restored into a new cluster")
}

// A reader whose own transaction has an xid (a reset locks its checkpoints
// before it clamps its target to the window) is not held back by itself:
// a snapshot's xmin counts the reader's own xid, which its list of running
// transactions leaves out, so a bound taken from the xmin alone would stop
// at the reader's xid and leave out an event writer that committed after
// it took its xid (review of migration 017's fast path).
func TestReaderWithAnXidIsNotHeldByItself(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := pool.Exec(ctx, `CREATE TABLE app_rows (id int)`)
	require.NoError(t, err)
	reader, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = reader.Rollback(ctx) }()
	_, err = reader.Exec(ctx, `INSERT INTO app_rows VALUES (1)`)
	require.NoError(t, err)
	own := xidOf(t, reader)

	var w *outbox.AppendResult
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var err error
		w, err = appendIn(ctx, tx, "after-the-reader")
		return err
	}))
	written := outbox.Cursor{TxID: w.TxID, Position: w.Positions[0]}
	require.Greater(t, written.TxID, own)

	// The bound never stops at the reader's own xid (it is in none of the
	// bound's terms); taken from the snapshot's xmin alone it would, as
	// long as the reader is the oldest transaction of the cluster.
	var bound uint64
	require.NoError(t, reader.QueryRow(ctx, `SELECT readside.readside_read_bound(pg_current_snapshot())::text::bigint`).Scan(&bound))
	require.NotEqual(t, own, bound, "the reader's own xid bounds its window")
	// Other transactions of the cluster (other tests' databases) that took
	// their xids before the writer did hold the window for a grace or two
	// (they might still register as event writers); the reader's own xid,
	// held for the whole test, must not hold it at all.
	var head outbox.Head
	deadline := time.Now().Add(10 * time.Second)
	for {
		head, err = outbox.ReadHead(ctx, reader)
		require.NoError(t, err)
		if !head.Window.Less(written) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	require.False(t, head.Window.Less(written), "the reader's window %s leaves out %s, committed after the reader took xid %d", head.Window, written, own)
	clamped, err := outbox.ClampToWindow(ctx, reader, written)
	require.NoError(t, err)
	require.Equal(t, written, clamped)
}
