package projectors_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// segmentOf is the segment of n that reads aggregate id (its bucket among
// 64, modulo n).
func segmentOf(t *testing.T, pool *pgxpool.Pool, id string, n int) int {
	t.Helper()
	var b int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT readside.readside_segment($1, 64)`, id).Scan(&b))
	return b % n
}

// holdWindow writes an event of aggregate Thing/id in a transaction it
// leaves open (rolled back when the test ends): an event writer holding
// the read window.
func holdWindow(t *testing.T, pool *pgxpool.Pool, id string) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	holder, err := pool.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = holder.Rollback(ctx) })
	_, err = holder.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
		VALUES ('Thing', $1, 'Touched', '{}', 1)`, id)
	require.NoError(t, err)
	return holder
}

// aggregatesBySegment returns an aggregate id read by each segment of n.
func aggregatesBySegment(t *testing.T, pool *pgxpool.Pool, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i, found := 0, 0; found < n; i++ {
		id := fmt.Sprintf("agg-%d", i)
		if s := segmentOf(t, pool, id, n); ids[s] == "" {
			ids[s], found = id, found+1
		}
	}
	return ids
}

func cursors(t *testing.T, pool *pgxpool.Pool, projection string) []outbox.Cursor {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT cursor_txid, cursor_position FROM readside.checkpoints WHERE projection = $1 ORDER BY segment`, projection)
	require.NoError(t, err)
	defer rows.Close()
	var out []outbox.Cursor
	for rows.Next() {
		var c outbox.Cursor
		require.NoError(t, rows.Scan(&c.TxID, &c.Position))
		out = append(out, c)
	}
	require.NoError(t, rows.Err())
	return out
}

// TestNotificationRunsOnlyItsSegments: an event wakes the segment that
// reads its bucket, not the projection's other segments (each would fetch
// and move its checkpoint); WaitFor still passes them, as they have
// nothing of their own before the token.
func TestNotificationRunsOnlyItsSegments(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	const n = 8
	startSegmented(t, pool, pool, n, projectors.Config{LeaseTTL: 4 * time.Second})
	ids := aggregatesBySegment(t, pool, n)
	// Every other segment applies an event of its own first: its run at
	// the start (after the listener connected) is then behind it. On a
	// loaded machine that run came after the events below, and moved the
	// segment's checkpoint to the window's end.
	for s, id := range ids {
		if s != 5 {
			appendEvents(t, pool, id, 0, `{}`)
		}
	}
	eventually(t, 60*time.Second, "every other segment applied its event", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`) == n-1
	})
	before := cursors(t, pool, "rec")
	id := ids[5]
	for i := range 5 {
		appendEvents(t, pool, id, i, `{}`)
		// With a one-hour poll, only the notification can wake the worker.
		eventually(t, 60*time.Second, "applied via LISTEN/NOTIFY", func() bool {
			return count(t, pool, `SELECT count(*) FROM applied`) == n-1+i+1
		})
	}
	var token outbox.Cursor
	require.NoError(t, pool.QueryRow(ctx, `SELECT txid, id FROM readside.events ORDER BY txid DESC, id DESC LIMIT 1`).Scan(&token.TxID, &token.Position))
	after := cursors(t, pool, "rec")
	for s := range n {
		if s == 5 {
			require.False(t, after[s].Less(token), "segment 5 applied the events")
		} else {
			require.Equal(t, before[s], after[s], "segment %d has no event: its checkpoint did not move", s)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, observe.WaitFor(wctx, pool, token, "rec"), "segments with nothing before the token pass it")
}

// TestEventsHeldBackAreAppliedWhenTheHolderRollsBack: an event committed
// while an older event writer holds the read window is announced, read by
// nothing (its segment's fetch stops at the window), and the holder's
// rollback sends no notification: the head checks that follow the
// announcement keep its bucket until the window is whole again, and then
// run its segment.
func TestEventsHeldBackAreAppliedWhenTheHolderRollsBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	const n = 8
	startSegmented(t, pool, pool, n, projectors.Config{LeaseTTL: 4 * time.Second})
	ids := aggregatesBySegment(t, pool, n)
	holder := holdWindow(t, pool, ids[2])
	appendEvents(t, pool, ids[6], 0, `{}`)
	time.Sleep(300 * time.Millisecond) // segment 6 ran and found the window held
	require.Equal(t, 0, count(t, pool, `SELECT count(*) FROM applied`), "held back behind the open writer")
	require.NoError(t, holder.Rollback(ctx))
	eventually(t, 60*time.Second, "the held-back event applied after the holder's rollback, with a one-hour poll", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`) == 1
	})
}

// startSegmented starts a worker on pool running the recorder "rec" in n
// segments, with cfg's other settings (a one-hour poll when none), and
// returns once it holds every segment and listens (db is for the test's own
// queries). The listener connects on its own and then runs every segment
// once (notifications sent before it listened are lost): tests write after
// that.
func startSegmented(t *testing.T, db, pool *pgxpool.Pool, n int, cfg projectors.Config) {
	t.Helper()
	cfg.Pool, cfg.Projections = pool, []projectors.Projection{&recorder{name: "rec", segments: n}}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = time.Hour
	}
	startWorker(t, cfg)
	eventually(t, 60*time.Second, "leases claimed", func() bool {
		return count(t, db, `SELECT count(*) FROM readside.checkpoints WHERE lease_owner IS NOT NULL`) == n
	})
	eventually(t, 60*time.Second, "listening", func() bool {
		return count(t, db, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'listen%'`) == 1
	})
	time.Sleep(100 * time.Millisecond)
}

// failFetches makes a segmented fetch that passes over aggregate id fail
// with a query cancellation while `nextval('public.fetch_failures') when`
// holds ("= 1": once; "> 0": every time). Buckets (readside_segment(id,
// 64), computed at insert) are left as they were.
func failFetches(t *testing.T, pool *pgxpool.Pool, id, when string) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `CREATE SEQUENCE public.fetch_failures;
CREATE OR REPLACE FUNCTION readside.readside_segment(aggregate_id text, n integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF n <> 64 AND aggregate_id = `+pgQuote(id)+` AND nextval('public.fetch_failures') `+when+` THEN
        RAISE EXCEPTION 'injected fetch failure' USING ERRCODE = '57014';
    END IF;
    RETURN CASE WHEN n <= 1 THEN 0 ELSE (hashtext(aggregate_id) & 2147483647) % n END;
END
$$`)
	require.NoError(t, err)
}

func pgQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
