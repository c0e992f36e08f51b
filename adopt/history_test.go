package adopt_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/adopt"
	"github.com/readside/readside/internal/pgtest"
)

// readsideLog is readside's events as "type id vN eventType", in the
// reader's order.
func readsideLog(t *testing.T, rs *pgxpool.Pool) []string {
	t.Helper()
	return column(t, rs, `SELECT aggregate_type || ' ' || aggregate_id || ' v' || version || ' ' || event_type FROM readside.events ORDER BY txid, id`)
}

// waitUntil polls cond until it holds, failing after a deadline.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Issue 21, item 3: with the database's default isolation REPEATABLE READ,
// a row committed while adopt waits for the table's lock is history all
// the same: adopt sets its transactions' isolation itself and reads after
// the trigger is in place.
func TestAdoptReadsHistoryAfterTheLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, _, _, rsURL := setupURLs(t, "rails_schema.sql")
	require.NoError(t, railsEvent(t, app, "o-1", "OrderPlaced", 1, placed("o-1", 100)))
	_, err := app.Exec(ctx, `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation = ''repeatable read''', current_database()); END $$`)
	require.NoError(t, err)
	rs := pgtest.Pool(t, rsURL) // new sessions: repeatable read by default
	var iso string
	require.NoError(t, rs.QueryRow(ctx, `SHOW transaction_isolation`).Scan(&iso))
	require.Equal(t, "repeatable read", iso)

	writer, err := app.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = writer.Rollback(ctx) }()
	require.NoError(t, railsEvent(t, writer, "o-2", "OrderPlaced", 1, placed("o-2", 200)))

	renames, err := adopt.ParseRenames(railsRenames)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := adopt.Adopt(ctx, rs, adopt.Config{Table: "events", Renames: renames, LockTimeout: time.Minute}, false)
		done <- err
	}()
	waitUntil(t, "adopt waits for the table's lock", func() bool {
		var waiting bool
		require.NoError(t, app.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.relation = 'public.events'::regclass AND NOT l.granted AND a.datname = current_database())`).Scan(&waiting))
		return waiting
	})
	require.NoError(t, writer.Commit(ctx))
	require.NoError(t, <-done)
	require.Equal(t, []string{"Order o-1 v1 OrderPlaced", "Order o-2 v1 OrderPlaced"}, readsideLog(t, rs))
}

// Issue 21, item 4: remove, rows written while not adopted, adopt again:
// readside's log gets what it lacks (nothing lost, nothing twice, no
// 23505), and the trigger copies again.
func TestAdoptRemoveAndAdoptAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, _ := setup(t, "rails_schema.sql")
	renames, err := adopt.ParseRenames(railsRenames)
	require.NoError(t, err)
	cfg := adopt.Config{Table: "events", Renames: renames}
	require.NoError(t, railsEvent(t, app, "o-1", "OrderPlaced", 1, placed("o-1", 100)))
	_, err = adopt.Adopt(ctx, rs, cfg, false)
	require.NoError(t, err)
	require.NoError(t, railsEvent(t, app, "o-1", "OrderConfirmed", 2, at("", "confirmed_at", "o-1")))

	_, err = adopt.Remove(ctx, rs, "", "events", false)
	require.NoError(t, err)
	require.NoError(t, railsEvent(t, app, "o-1", "OrderShipped", 3, at("", "shipped_at", "o-1")))
	require.NoError(t, railsEvent(t, app, "o-2", "OrderPlaced", 1, placed("o-2", 200)))
	require.Len(t, readsideLog(t, rs), 2, "not adopted: not copied")

	res, err := adopt.Adopt(ctx, rs, cfg, false)
	require.NoError(t, err)
	require.EqualValues(t, 2, res.History, "what the log lacked")
	require.NoError(t, railsEvent(t, app, "o-2", "OrderConfirmed", 2, at("", "confirmed_at", "o-2")))
	require.Equal(t, []string{"Order o-1 v1 OrderPlaced", "Order o-1 v2 OrderConfirmed", "Order o-1 v3 OrderShipped",
		"Order o-2 v1 OrderPlaced", "Order o-2 v2 OrderConfirmed"}, readsideLog(t, rs))

	// And once more with nothing in between: nothing to copy.
	_, err = adopt.Remove(ctx, rs, "", "events", false)
	require.NoError(t, err)
	res, err = adopt.Adopt(ctx, rs, cfg, false)
	require.NoError(t, err)
	require.Zero(t, res.History)
	require.Len(t, readsideLog(t, rs), 5)
}

// The trigger and the backfill meet per aggregate. While the adoption is
// backfilling, the first INSERT into an aggregate copies that aggregate's
// history itself, before its new row, in its own transaction; the
// backfill then skips it. An aggregate the backfill holds makes the
// INSERT wait for the chunk, not fail; one an application transaction
// holds is left for the end of the backfill.
func TestAdoptTriggerCopiesHistoryOnFirstTouch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, _ := setup(t, "rails_schema.sql")
	for _, id := range []string{"o-1", "o-2", "o-3"} {
		require.NoError(t, railsEvent(t, app, id, "OrderPlaced", 1, placed(id, 100)))
		require.NoError(t, railsEvent(t, app, id, "OrderConfirmed", 2, at("", "confirmed_at", id)))
	}
	renames, err := adopt.ParseRenames(railsRenames)
	require.NoError(t, err)

	// The backfill stops once the trigger is in place, before it has
	// copied a row.
	started, proceed := make(chan struct{}), make(chan struct{})
	progress := func(p adopt.Progress) {
		if p.Read == 0 && started != nil {
			close(started)
			started = nil
			<-proceed
		}
	}
	startedC := started
	done := make(chan error, 1)
	var res *adopt.Result
	go func() {
		var err error
		res, err = adopt.Adopt(ctx, rs, adopt.Config{Table: "events", Renames: renames, ChunkRows: 1, Progress: progress}, false)
		done <- err
	}()
	select {
	case <-startedC:
	case err := <-done:
		t.Fatalf("adopt ended before its backfill: %v", err)
	}
	// o-1 is first touched by the application; o-2's next event is
	// written in a transaction that stays open while the backfill runs.
	require.NoError(t, railsEvent(t, app, "o-1", "OrderShipped", 3, at("", "shipped_at", "o-1")))
	tx, err := app.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	require.NoError(t, railsEvent(t, tx, "o-2", "OrderShipped", 3, at("", "shipped_at", "o-2")))
	close(proceed)
	waitUntil(t, "the backfill waits for o-2", func() bool {
		var waiting bool
		require.NoError(t, app.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND NOT l.granted AND a.datname = current_database())`).Scan(&waiting))
		return waiting
	})
	require.NoError(t, tx.Commit(ctx))
	require.NoError(t, <-done)
	require.EqualValues(t, 2, res.History, "o-3's rows; o-1's and o-2's were copied by the trigger")
	log := readsideLog(t, rs)
	require.Equal(t, []string{
		"Order o-1 v1 OrderPlaced", "Order o-1 v2 OrderConfirmed", "Order o-1 v3 OrderShipped",
		"Order o-2 v1 OrderPlaced", "Order o-2 v2 OrderConfirmed", "Order o-2 v3 OrderShipped",
		"Order o-3 v1 OrderPlaced", "Order o-3 v2 OrderConfirmed",
	}, log)
	var claims int
	var state string
	require.NoError(t, rs.QueryRow(ctx, `SELECT (SELECT count(*) FROM readside.readside_adoption_claims),
		(SELECT state FROM readside.readside_adoptions)`).Scan(&claims, &state))
	require.Zero(t, claims)
	require.Equal(t, "adopted", state)
	require.NoError(t, railsEvent(t, app, "o-3", "OrderShipped", 3, at("", "shipped_at", "o-3")))
	require.Len(t, readsideLog(t, rs), 9)
}

// The backfill reads the history in one snapshot, holding ACCESS SHARE on
// the table; an ALTER TABLE of the application's would queue behind it and
// the application's inserts behind the ALTER. The backfill lets go when
// someone waits for the table, and goes on once nobody does.
func TestAdoptBackfillYieldsToDDL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, _ := setup(t, "stream_schema.sql")
	_, err := app.Exec(ctx, `INSERT INTO app_events (stream, stream_version, type, body)
		SELECT 'Order-' || (g / 5), g % 5 + 1, 'OrderNoted', '{}' FROM generate_series(0, 499) g`)
	require.NoError(t, err)

	altered := make(chan error, 1)
	calls, sawAltered := 0, false
	progress := func(p adopt.Progress) {
		calls++
		switch {
		case calls == 3:
			go func() {
				_, err := app.Exec(ctx, `ALTER TABLE app_events ADD COLUMN note text`)
				altered <- err
			}()
			waitUntil(t, "the ALTER TABLE waits for the backfill's read", func() bool {
				var waiting bool
				require.NoError(t, app.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = 'app_events'::regclass AND NOT granted
					AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))`).Scan(&waiting))
				return waiting
			})
		case calls > 3 && p.Read < p.Total && !sawAltered:
			require.NoError(t, app.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'app_events'::regclass AND attname = 'note')`).Scan(&sawAltered))
		}
	}
	res, err := adopt.Adopt(ctx, rs, adopt.Config{Table: "app_events", Columns: streamCols, ChunkRows: 50, Progress: progress}, false)
	require.NoError(t, err)
	require.NoError(t, <-altered)
	require.True(t, sawAltered, "the ALTER TABLE committed while the backfill was still reading")
	require.EqualValues(t, 500, res.History)
	require.Len(t, readsideLog(t, rs), 500)
}

// An ALTER TABLE that rewrites the table (a column with a volatile
// default: the ALTER's transaction writes every row anew) takes the table
// while the backfill has let go of it, and commits while the backfill
// waits to read again. The backfill's next snapshot must be taken once it
// holds the table: one taken before the ALTER commits sees the rewritten
// table empty, and the history it had not copied yet would never be.
func TestAdoptBackfillReadsAfterTableRewrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, _ := setup(t, "stream_schema.sql")
	_, err := app.Exec(ctx, `INSERT INTO app_events (stream, stream_version, type, body)
		SELECT 'Order-' || (g / 5), g % 5 + 1, 'OrderNoted', '{}' FROM generate_series(0, 499) g`)
	require.NoError(t, err)
	waiting := func(mode string) (bool, error) {
		var w bool
		err := app.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = 'app_events'::regclass AND mode = $1 AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))`, mode).Scan(&w)
		return w, err
	}

	ddl, err := app.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = ddl.Rollback(ctx) }()
	altered := make(chan error, 1)
	alter := func() error {
		// Granted once the backfill lets go, after its first chunk.
		if _, err := ddl.Exec(ctx, `LOCK TABLE app_events IN ACCESS EXCLUSIVE MODE`); err != nil {
			return err
		}
		if _, err := ddl.Exec(ctx, `ALTER TABLE app_events ADD COLUMN imported_at timestamptz DEFAULT clock_timestamp()`); err != nil {
			return err
		}
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			w, err := waiting("AccessShareLock")
			if err != nil {
				return err
			}
			if w {
				break
			}
			if time.Now().After(deadline) {
				return errors.New("the backfill did not come back for the table")
			}
		}
		return ddl.Commit(ctx)
	}
	calls := 0
	progress := func(adopt.Progress) {
		if calls++; calls != 2 { // the first chunk is copied
			return
		}
		go func() { altered <- alter() }()
		waitUntil(t, "the ALTER TABLE waits for the backfill's read", func() bool {
			w, err := waiting("AccessExclusiveLock")
			require.NoError(t, err)
			return w
		})
	}
	res, err := adopt.Adopt(ctx, rs, adopt.Config{Table: "app_events", Columns: streamCols, ChunkRows: 50, Progress: progress}, false)
	require.NoError(t, err)
	require.NoError(t, <-altered)
	require.EqualValues(t, 500, res.History)
	require.Len(t, readsideLog(t, rs), 500)
}
