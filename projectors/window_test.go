package projectors_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// seen is an idempotent test projection: it records each event id once,
// however often it is replayed, so that pure checkpoint moves (which replay
// over the read model) are safe with it.
type seen struct{ name string }

func (p *seen) Spec() projectors.Spec {
	return projectors.Spec{Name: p.name, Tables: []string{"seen"}}
}

func (p *seen) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	ids := make([]int64, len(b.Events))
	aggs := make([]string, len(b.Events))
	for i, e := range b.Events {
		ids[i], aggs[i] = e.ID(), e.AggregateID
	}
	_, err := tx.Exec(ctx, `INSERT INTO seen (event_id, aggregate_id) SELECT * FROM unnest($1::bigint[], $2::text[])
		ON CONFLICT DO NOTHING`, ids, aggs)
	return err
}

func (p *seen) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `DELETE FROM seen`)
	return err
}

func setupSeen(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `CREATE TABLE seen (event_id bigint PRIMARY KEY, aggregate_id text NOT NULL)`)
	require.NoError(t, err)
}

func appendOne(t *testing.T, db outbox.Querier, aggID string) outbox.Cursor {
	t.Helper()
	res, err := outbox.Append(context.Background(), db, outbox.Aggregate{Type: "Thing", ID: aggID}, 0,
		[]outbox.NewEvent{{Type: "Touched", Data: json.RawMessage(`{}`)}})
	require.NoError(t, err)
	return res.Cursor()
}

func appendCommitted(t *testing.T, pool *pgxpool.Pool, aggID string) outbox.Cursor {
	t.Helper()
	var c outbox.Cursor
	require.NoError(t, pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
		c = appendOne(t, tx, aggID)
		return nil
	}))
	return c
}

// A reset to a time or a cursor past a transaction that is still open must
// not put that transaction's event behind the checkpoint: the target is
// clamped to the read window, and the event is applied once it commits.
func TestResetTargetClampedToReadWindow(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"time", "cursor"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := pgtest.NewDB(t)
			setupSeen(t, pool)
			p := &seen{name: "seen"}
			appendCommitted(t, pool, "a")
			startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{p},
				PollInterval: 20 * time.Millisecond, LeaseTTL: time.Second})
			eventually(t, 20*time.Second, "a applied", func() bool { return count(t, pool, `SELECT count(*) FROM seen`) == 1 })

			long, err := pool.Begin(ctx)
			require.NoError(t, err)
			defer func() { _ = long.Rollback(ctx) }()
			lc := appendOne(t, long, "long")
			var after time.Time
			require.NoError(t, pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&after))
			b := appendCommitted(t, pool, "b")

			target := "time:" + after.Format(time.RFC3339Nano)
			if kind == "cursor" {
				target = "cursor:" + b.String()
			}
			require.NoError(t, control.MoveCheckpoints(ctx, pool, p, target))
			cps, err := checkpoint.List(ctx, pool, "seen")
			require.NoError(t, err)
			require.Len(t, cps, 1)
			require.Less(t, cps[0].Cursor.TxID, lc.TxID, "the reset target lies inside the read window, below the open writer")

			require.NoError(t, long.Commit(ctx))
			appendCommitted(t, pool, "c")
			eventually(t, 20*time.Second, "c applied", func() bool {
				return count(t, pool, `SELECT count(*) FROM seen WHERE aggregate_id = 'c'`) == 1
			})
			require.Equal(t, 1, count(t, pool, `SELECT count(*) FROM seen WHERE aggregate_id = 'long'`),
				"the open transaction's event was applied after its commit")
		})
	}
}

// A cursor beyond the head of the log is refused: it would skip every event
// written until the log reached it, and lag would read 0.
func TestResetBeyondHeadRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupSeen(t, pool)
	p := &seen{name: "seen"}
	require.NoError(t, projectors.Register(ctx, pool, p))
	head := appendCommitted(t, pool, "a")

	for _, to := range []string{
		"9000000000000/1",
		fmt.Sprintf("%d/%d", head.TxID, head.Position+1),
		fmt.Sprintf("%d/0", head.TxID+1),
	} {
		err := control.MoveCheckpoints(ctx, pool, p, "cursor:"+to)
		require.ErrorIs(t, err, control.ErrBeyondHead, to)
		require.ErrorContains(t, err, "beyond the head", to)
		require.ErrorIs(t, control.CheckResetTarget(ctx, pool, "cursor:"+to), control.ErrBeyondHead, to)
	}
	cps, err := checkpoint.List(ctx, pool, "seen")
	require.NoError(t, err)
	require.Equal(t, outbox.Start, cps[0].Cursor, "a refused reset moves nothing")

	require.NoError(t, control.MoveCheckpoints(ctx, pool, p, "cursor:"+head.String()), "the head itself is a fine target")
	require.NoError(t, control.CheckResetTarget(ctx, pool, "cursor:"+head.String()))
	require.NoError(t, control.CheckResetTarget(ctx, pool, "start"))
}

// A checkpoint beyond the read window (however it got there) must not make
// pruning record a horizon above a transaction still running: once that
// transaction commits, its rows would be read from both the events table
// (below the horizon) and the outbox, so applied twice.
func TestPruneNeverPassesTheReadWindow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupSeen(t, pool)
	require.NoError(t, projectors.Register(ctx, pool, &seen{name: "seen"}))
	appendCommitted(t, pool, "a")

	long, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = long.Rollback(ctx) }()
	lc := appendOne(t, long, "long")
	b := appendCommitted(t, pool, "b")
	// A checkpoint past the window, as an unchecked reset once left one.
	_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET cursor_txid = $1, cursor_position = $2 WHERE projection = 'seen'`, b.TxID, b.Position)
	require.NoError(t, err)

	_, _, err = control.PruneOutbox(ctx, pool, -1)
	require.NoError(t, err)
	var horizon outbox.Cursor
	err = pool.QueryRow(ctx, `SELECT txid, position FROM readside.outbox_horizon`).Scan(&horizon.TxID, &horizon.Position)
	if err == nil {
		require.Less(t, horizon.TxID, lc.TxID, "the horizon stays below the running transaction")
	} else {
		require.ErrorIs(t, err, pgx.ErrNoRows)
	}
	require.Equal(t, 1, count(t, pool, `SELECT count(*) FROM readside.outbox WHERE txid = $1`, b.TxID), "b is outside the window: kept")

	require.NoError(t, long.Commit(ctx))
	eventually(t, 30*time.Second, "the window passed the long transaction", func() bool {
		var in bool
		require.NoError(t, pool.QueryRow(ctx, `SELECT $1::xid8 < readside.readside_read_bound(pg_current_snapshot())`, lc.TxID).Scan(&in))
		return in
	})
	batch, err := outbox.Fetch(ctx, pool, outbox.Start, 100, outbox.Filter{})
	require.NoError(t, err)
	n := 0
	for _, e := range batch.Events {
		if e.AggregateID == "long" {
			n++
		}
	}
	require.Equal(t, 1, n, "the long transaction's event is read once")
}
