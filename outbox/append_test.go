package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

func ev(typ string, n int) outbox.NewEvent {
	return outbox.NewEvent{Type: typ, Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, n)),
		Metadata: outbox.Metadata{CorrelationID: "c1", UserID: "u1"}}
}

func appendTx(ctx context.Context, pool *pgxpool.Pool, agg outbox.Aggregate, expected int, events ...outbox.NewEvent) (*outbox.AppendResult, error) {
	var res *outbox.AppendResult
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var err error
		res, err = outbox.Append(ctx, tx, agg, expected, events)
		return err
	})
	return res, err
}

func TestAppendWritesEventsAndOutbox(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	agg := outbox.Aggregate{Type: "Order", ID: "o-1"}

	res, err := appendTx(ctx, pool, agg, 0, ev("OrderPlaced", 1), ev("OrderConfirmed", 2))
	require.NoError(t, err)
	require.Equal(t, 2, res.Version)
	require.Len(t, res.Positions, 2)
	require.Less(t, res.Positions[0], res.Positions[1])
	require.NotZero(t, res.TxID)

	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.events e JOIN readside.outbox o ON o.position = e.id AND o.txid = e.txid
		AND o.aggregate_id = e.aggregate_id AND o.version = e.version AND o.event_type = e.event_type`).Scan(&n))
	require.Equal(t, 2, n)
	var meta string
	require.NoError(t, pool.QueryRow(ctx, `SELECT metadata->>'correlation_id' FROM readside.events WHERE version = 1`).Scan(&meta))
	require.Equal(t, "c1", meta)

	_, err = appendTx(ctx, pool, agg, 1, ev("OrderShipped", 3))
	require.ErrorIs(t, err, outbox.ErrConcurrencyConflict)
	var ce *outbox.ConflictError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "version taken", ce.Reason)

	_, err = appendTx(ctx, pool, agg, 5, ev("OrderShipped", 3))
	require.ErrorIs(t, err, outbox.ErrConcurrencyConflict, "a version gap is a stale expected version")
}

func TestAppendValidates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	for name, tc := range map[string]struct {
		agg    outbox.Aggregate
		exp    int
		events []outbox.NewEvent
	}{
		"no events":     {outbox.Aggregate{Type: "Order", ID: "x"}, 0, nil},
		"no id":         {outbox.Aggregate{Type: "Order"}, 0, []outbox.NewEvent{ev("A", 1)}},
		"negative":      {outbox.Aggregate{Type: "Order", ID: "x"}, -1, []outbox.NewEvent{ev("A", 1)}},
		"bad json":      {outbox.Aggregate{Type: "Order", ID: "x"}, 0, []outbox.NewEvent{{Type: "A", Data: json.RawMessage(`{`)}}},
		"not an object": {outbox.Aggregate{Type: "Order", ID: "x"}, 0, []outbox.NewEvent{{Type: "A", Data: json.RawMessage(`[1]`)}}},
		"no type":       {outbox.Aggregate{Type: "Order", ID: "x"}, 0, []outbox.NewEvent{{Data: json.RawMessage(`{}`)}}},
	} {
		_, err := appendTx(ctx, pool, tc.agg, tc.exp, tc.events...)
		require.Error(t, err, name)
		require.NotErrorIs(t, err, outbox.ErrConcurrencyConflict, name)
	}
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM readside.events) + (SELECT count(*) FROM readside.outbox)`).Scan(&n))
	require.Zero(t, n)
}

// 16 writers race for every version of one aggregate: each version is
// written once, losers see ErrConcurrencyConflict, events and outbox match
// one to one, and rolled-back transactions leave nothing.
func TestAppendConcurrentWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	agg := outbox.Aggregate{Type: "Order", ID: "hot"}
	const writers, rounds = 16, 15
	var (
		mu        sync.Mutex
		wins      = map[int]int{}
		conflicts int
		wg        sync.WaitGroup
	)
	for w := range writers {
		wg.Go(func() {
			for r := range rounds {
				var v int
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM readside.events WHERE aggregate_type = $1 AND aggregate_id = $2`, agg.Type, agg.ID).Scan(&v); err != nil {
						return err
					}
					if _, err := outbox.Append(ctx, tx, agg, v, []outbox.NewEvent{ev("Touched", w*100+r)}); err != nil {
						return err
					}
					if r%5 == 4 {
						return errRollback
					}
					return nil
				})
				mu.Lock()
				switch {
				case err == nil:
					wins[v+1]++
				case errors.Is(err, outbox.ErrConcurrencyConflict):
					conflicts++
				case errors.Is(err, errRollback):
				default:
					t.Errorf("writer %d: %v", w, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for v, n := range wins {
		require.Equal(t, 1, n, "version %d committed %d times", v, n)
	}
	require.NotZero(t, conflicts, "16 writers on one aggregate must conflict")
	var events, outboxRows, matched, maxVersion int
	require.NoError(t, pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM readside.events), (SELECT count(*) FROM readside.outbox),
		(SELECT count(*) FROM readside.events e JOIN readside.outbox o ON o.position = e.id AND o.txid = e.txid),
		(SELECT coalesce(max(version), 0) FROM readside.events)`).Scan(&events, &outboxRows, &matched, &maxVersion))
	require.Equal(t, len(wins), events)
	require.Equal(t, events, outboxRows)
	require.Equal(t, events, matched)
	require.Equal(t, events, maxVersion, "versions are gap-free")
	t.Logf("%d versions, %d conflicts", events, conflicts)
}

var errRollback = errors.New("rollback on purpose")

// Guarantee 2: a transaction that took its xid before another transaction
// committed version N must not append N+1, since the reader orders by xid
// and would apply N+1 first.
func TestAppendRefusesStaleTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	agg := outbox.Aggregate{Type: "Product", ID: "p-1"}
	_, err := appendTx(ctx, pool, agg, 0, ev("ProductCreated", 1))
	require.NoError(t, err)

	old, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer old.Rollback(ctx)
	// The old transaction takes its xid by writing to another aggregate.
	_, err = outbox.Append(ctx, old, outbox.Aggregate{Type: "Product", ID: "p-2"}, 0, []outbox.NewEvent{ev("ProductCreated", 1)})
	require.NoError(t, err)

	// A newer transaction commits version 2.
	_, err = appendTx(ctx, pool, agg, 1, ev("PriceUpdated", 2))
	require.NoError(t, err)

	// The old transaction now sees version 2 (read committed) and tries 3.
	_, err = outbox.Append(ctx, old, agg, 2, []outbox.NewEvent{ev("PriceUpdated", 3)})
	require.ErrorIs(t, err, outbox.ErrConcurrencyConflict)
	var ce *outbox.ConflictError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "stale transaction", ce.Reason)
	require.NoError(t, old.Rollback(ctx))

	// A retry in a fresh transaction succeeds.
	_, err = appendTx(ctx, pool, agg, 2, ev("PriceUpdated", 3))
	require.NoError(t, err)
}

// The SQL contract: a writer that only speaks SQL inserts into events and
// gets the same outbox rows as Append.
func TestSQLContractMatchesAppend(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	goDB := pgtest.NewDB(t)
	sqlDB := pgtest.NewDB(t)
	agg := outbox.Aggregate{Type: "Order", ID: "o-9"}

	_, err := appendTx(ctx, goDB, agg, 0, ev("OrderPlaced", 1), ev("OrderConfirmed", 2))
	require.NoError(t, err)
	_, err = sqlDB.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, metadata, version)
		VALUES ('Order', 'o-9', 'OrderPlaced', '{"n":1}', '{"correlation_id":"c1","user_id":"u1"}', 1),
		       ('Order', 'o-9', 'OrderConfirmed', '{"n":2}', '{"correlation_id":"c1","user_id":"u1"}', 2)`)
	require.NoError(t, err)

	dump := func(pool *pgxpool.Pool) string {
		var s string
		require.NoError(t, pool.QueryRow(ctx, `SELECT json_agg(x ORDER BY x.version)::text FROM (
			SELECT e.aggregate_type, e.aggregate_id, e.event_type, e.event_data, e.metadata, e.schema_version, e.version,
			       o.event_type AS o_type, o.version AS o_version, o.txid = e.txid AS same_tx
			  FROM readside.events e JOIN readside.outbox o ON o.position = e.id) x`).Scan(&s))
		return s
	}
	require.Equal(t, dump(goDB), dump(sqlDB))

	// The contract enforces versions too.
	_, err = sqlDB.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
		VALUES ('Order', 'o-9', 'OrderShipped', '{}', 4)`)
	require.Error(t, err)
}

// The xid window never skips a row whose transaction commits late: a reader
// that resumes by position alone would pass over A's row once B (larger
// position... or smaller) commits first.
func TestFetchIsGapSafe(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)

	a, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer a.Rollback(ctx)
	ra, err := outbox.Append(ctx, a, outbox.Aggregate{Type: "T", ID: "a"}, 0, []outbox.NewEvent{ev("E", 1)})
	require.NoError(t, err)

	rb, err := appendTx(ctx, pool, outbox.Aggregate{Type: "T", ID: "b"}, 0, ev("E", 2))
	require.NoError(t, err)
	require.Less(t, ra.Positions[0], rb.Positions[0], "A took the smaller position")

	// B is committed, but A is in flight with an older xid: the window
	// holds B back, so no cursor can move past A's slot.
	batch, err := outbox.Fetch(ctx, pool, outbox.Start, 100, outbox.Filter{})
	require.NoError(t, err)
	require.Empty(t, batch.Events)
	require.Equal(t, outbox.Start, batch.Next)
	var naive int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.outbox WHERE position > 0`).Scan(&naive))
	require.Equal(t, 1, naive, "a position-only reader would read B now and skip A forever")

	head, err := outbox.ReadHead(ctx, pool)
	require.NoError(t, err)
	require.True(t, head.Behind(), "committed rows wait behind the window")
	// The holder is the oldest event-writing transaction of this
	// database: A.
	holder, err := outbox.WindowHolder(ctx, pool)
	require.NoError(t, err)
	require.NotNil(t, holder)
	require.Equal(t, ra.TxID, holder.TxID)

	require.NoError(t, a.Commit(ctx))
	waitWindow(t, pool)
	batch, err = outbox.Fetch(ctx, pool, outbox.Start, 100, outbox.Filter{})
	require.NoError(t, err)
	require.Len(t, batch.Events, 2)
	require.Equal(t, "a", batch.Events[0].AggregateID, "xid order: A first")
	require.Equal(t, "b", batch.Events[1].AggregateID)
	require.Equal(t, batch.Events[1].Cursor, batch.Next)

	// Resuming from the cursor returns nothing more.
	batch, err = outbox.Fetch(ctx, pool, batch.Next, 100, outbox.Filter{})
	require.NoError(t, err)
	require.Zero(t, batch.Scanned)
}

func TestFetchFiltersAndSegments(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	for i := range 40 {
		_, err := appendTx(ctx, pool, outbox.Aggregate{Type: "T", ID: fmt.Sprintf("agg-%d", i)}, 0, ev("Created", i), ev("Renamed", i))
		require.NoError(t, err)
	}
	waitWindow(t, pool)
	// Segments partition the stream; together they cover it exactly, each
	// reading the aggregates readside_segment gives it: with 3 segments by
	// a filter over every row, with 4 and 8 (dividing the 64 buckets) from
	// their own buckets, one statement for all of them.
	for _, n := range []int{3, 4, 8} {
		seen := map[int64]int{}
		for seg := range n {
			cur := outbox.Start
			for {
				b, err := outbox.Fetch(ctx, pool, cur, 7, outbox.Filter{Segment: seg, Segments: n, EventTypes: []string{"Renamed"}})
				require.NoError(t, err)
				if b.Scanned == 0 {
					break
				}
				for _, e := range b.Events {
					require.Equal(t, "Renamed", e.Type)
					var want int
					require.NoError(t, pool.QueryRow(ctx, `SELECT readside.readside_segment($1, $2)`, e.AggregateID, n).Scan(&want))
					require.Equal(t, want, seg, "%s read by segment %d of %d", e.AggregateID, seg, n)
					seen[e.ID()]++
				}
				cur = b.Next
			}
		}
		require.Len(t, seen, 40, "%d segments", n)
		for id, k := range seen {
			require.Equal(t, 1, k, "event %d, %d segments", id, n)
		}
	}
	_, err := outbox.Fetch(ctx, pool, outbox.Start, 10, outbox.Filter{Segment: 3, Segments: 3})
	require.Error(t, err)
}

func TestCheckXIDsDetectsRestore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := appendTx(ctx, pool, outbox.Aggregate{Type: "T", ID: "x"}, 0, ev("E", 1))
	require.NoError(t, err)
	require.NoError(t, outbox.CheckXIDs(ctx, pool))
	// Simulate a restore into a younger cluster: stored txids far ahead.
	_, err = pool.Exec(ctx, `ALTER TABLE readside.outbox DISABLE TRIGGER ALL`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `UPDATE readside.outbox SET txid = (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000)::text::xid8`)
	require.NoError(t, err)
	err = outbox.CheckXIDs(ctx, pool)
	require.ErrorIs(t, err, outbox.ErrXIDRegression)
	require.ErrorContains(t, err, "restored")
}

// waitWindow waits until every committed outbox row is inside the read
// window: tests share a cluster, and another test's open transaction holds
// the window for all databases.
func waitWindow(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		h, err := outbox.ReadHead(context.Background(), pool)
		require.NoError(t, err)
		if !h.Behind() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("read window still held back: %+v", h)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
