package adopt_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/adopt"
	"github.com/readside/readside/outbox"
)

// readAllEvents reads everything the read window holds.
func readAllEvents(t *testing.T, rs *pgxpool.Pool) []outbox.Event {
	t.Helper()
	var out []outbox.Event
	for c := outbox.Start; ; {
		b, err := outbox.Fetch(context.Background(), rs, c, 100, outbox.Filter{})
		require.NoError(t, err)
		out = append(out, b.Events...)
		if b.Scanned == 0 {
			return out
		}
		c = b.Next
	}
}

// waitFor polls cond (each poll a reader's query, which also advances the
// read fence) until it holds, failing after a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An application writing its own adopted table goes through readside's
// events trigger: its transaction is registered (it holds the read window
// until it ends, and is named as the holder), and one that took its xid
// before the fence passed it and writes its first event after is refused
// with 40001 readside_read_fence, through the application's own INSERT.
func TestAdoptedWritesHoldAndAreFenced(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, _ := setup(t, "rails_schema.sql")
	renames, err := adopt.ParseRenames(railsRenames)
	require.NoError(t, err)
	_, err = adopt.Adopt(ctx, rs, adopt.Config{Table: "events", Renames: renames}, false)
	require.NoError(t, err)
	_, err = app.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY)`)
	require.NoError(t, err)

	held, err := app.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = held.Rollback(ctx) }()
	require.NoError(t, railsEvent(t, held, "o-held", "OrderPlaced", 1, placed("o-held", 100)))
	var hx uint64
	require.NoError(t, held.QueryRow(ctx, `SELECT pg_current_xact_id()`).Scan(&hx))

	early, err := app.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = early.Rollback(ctx) }()
	_, err = early.Exec(ctx, `INSERT INTO orders VALUES ('o-early')`)
	require.NoError(t, err)
	var ex uint64
	require.NoError(t, early.QueryRow(ctx, `SELECT pg_current_xact_id()`).Scan(&ex))

	require.NoError(t, pgx.BeginFunc(ctx, app, func(tx pgx.Tx) error {
		return railsEvent(t, tx, "o-later", "OrderPlaced", 1, placed("o-later", 200))
	}))
	waitFor(t, "the fence past both open transactions", func() bool {
		require.Empty(t, readAllEvents(t, rs), "the adopted writer holds the window")
		var f uint64
		require.NoError(t, rs.QueryRow(ctx, `SELECT coalesce(pg_sequence_last_value('readside.read_fence'), 0)`).Scan(&f))
		return f > max(hx, ex)
	})
	holder, err := outbox.WindowHolder(ctx, rs)
	require.NoError(t, err)
	require.NotNil(t, holder)
	require.Equal(t, hx, holder.TxID)

	err = railsEvent(t, early, "o-early", "OrderPlaced", 1, placed("o-early", 300))
	requirePgError(t, err, "40001", "readside_read_fence")

	require.NoError(t, held.Commit(ctx))
	waitFor(t, "both committed events read", func() bool { return len(readAllEvents(t, rs)) == 2 })
	got := readAllEvents(t, rs)
	require.Equal(t, "o-held", got[0].AggregateID)
	require.Equal(t, "o-later", got[1].AggregateID)
}
