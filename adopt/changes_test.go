package adopt_test

import (
	"context"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/adopt"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/migrations"
)

// Issue 21, item 8: an INSERT straight into a partition of an adopted
// partitioned table (present or created later) is refused, naming readside
// and the table to insert into; inserts through the table, and an UPDATE
// that moves a row to another partition, go through. UPDATE, DELETE and
// TRUNCATE are not mirrored (readside's log is append-only): they are
// recorded and projector status shows them.
func TestAdoptPartitionsAndChanges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, _ := setup(t, "elixir_schema.sql")
	const a = "00000000-0000-0000-0000-00000000000a"
	require.NoError(t, ectoInsert(ctx, app, "2024-01-15", ectoRow{a, "OrderPlaced", placed(a, 500), 1}))
	renames, err := adopt.ParseRenames(elixirRenames)
	require.NoError(t, err)
	_, err = adopt.Adopt(ctx, rs, adopt.Config{Table: "events", Columns: elixirCols, Renames: renames}, false)
	require.NoError(t, err)
	_, err = app.Exec(ctx, `CREATE TABLE events_2026_12 PARTITION OF events FOR VALUES FROM ('2026-12-01') TO ('2027-01-01')`)
	require.NoError(t, err)

	for partition, day := range map[string]string{"events_2024_02": "2024-02-10", "events_2026_12": "2026-12-10"} {
		_, err = app.Exec(ctx, `INSERT INTO `+partition+` (aggregate_id, aggregate_type, event_type, event_data, event_version, created_at)
			VALUES ($1, 'Order', 'Elixir.CommandService.Domain.Events.OrderConfirmed', '{}', 2, $2)`, a, day)
		requirePgError(t, err, "0A000", "readside_adopt_partition_insert")
		require.ErrorContains(t, err, "readside refused an INSERT straight into public."+partition+", a partition of the adopted table public.events")
	}
	// Through the table, in the same transaction as a refused one (after
	// a savepoint) and alone.
	tx, err := app.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, ectoInsert(ctx, tx, "2024-02-15", ectoRow{a, "OrderConfirmed", at("", "confirmed_at", a), 2}))
	_, err = tx.Exec(ctx, `SAVEPOINT s`)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO events_2024_02 (aggregate_id, aggregate_type, event_type, event_data, event_version, created_at)
		VALUES ($1, 'Order', 'x', '{}', 3, '2024-02-16')`, a)
	requirePgError(t, err, "0A000", "readside_adopt_partition_insert")
	_, err = tx.Exec(ctx, `ROLLBACK TO SAVEPOINT s`)
	require.NoError(t, err)
	require.NoError(t, ectoInsert(ctx, tx, "2026-12-02", ectoRow{a, "OrderShipped", at("", "shipped_at", a), 3}))
	require.NoError(t, tx.Commit(ctx))
	require.Len(t, readsideLog(t, rs), 3)

	// Changes: recorded, not mirrored; a move across partitions too.
	_, err = app.Exec(ctx, `UPDATE events SET created_at = '2024-02-20' WHERE event_version = 3`)
	require.NoError(t, err)
	_, err = app.Exec(ctx, `UPDATE events SET event_metadata = '{}' WHERE event_version < 3`)
	require.NoError(t, err)
	_, err = app.Exec(ctx, `UPDATE events SET event_metadata = '{}' WHERE false`) // no row: nothing to record
	require.NoError(t, err)
	_, err = app.Exec(ctx, `DELETE FROM events WHERE event_version = 1`)
	require.NoError(t, err)
	_, err = app.Exec(ctx, `TRUNCATE events`)
	require.NoError(t, err)
	require.Len(t, readsideLog(t, rs), 3, "readside's log keeps every event")
	list, err := adopt.List(ctx, rs)
	require.NoError(t, err)
	require.Len(t, list, 1)
	st := list[0]
	require.Equal(t, "public.events", st.Table)
	require.Equal(t, "adopted", st.State)
	require.EqualValues(t, 1, st.HistoryCopied)
	require.Equal(t, [3]int64{3, 1, 1}, [3]int64{st.UpdatedRows, st.DeletedRows, st.Truncates})
	require.NotNil(t, st.LastChange)
}

// A table adopted by a release whose trigger ran with readside's rights
// shows as outdated until it is adopted again, which replaces the trigger
// and copies nothing twice.
func TestAdoptReplacesAnEarlierReleasesTrigger(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, _ := setup(t, "rails_schema.sql")
	require.NoError(t, railsEvent(t, app, "o-1", "OrderPlaced", 1, placed("o-1", 100)))
	// What release 10's adopt left: a SECURITY DEFINER trigger function
	// over the table's columns, the history copied, the mapping stored.
	fn := `"readside"."readside_adopt_a7cd25fe5ce5"`
	_, err := rs.Exec(ctx, `CREATE FUNCTION `+fn+`() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
		SET search_path = pg_catalog, readside, pg_temp AS $$
		BEGIN
		    INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, metadata, version, occurred_at)
		    SELECT 'Order', n.aggregate_id::text, replace(n.event_type::text, 'Domain::Orders::Events::', ''), n.event_data::jsonb, '{}', n.version::int, now()
		      FROM readside_new_rows n ORDER BY n.id;
		    RETURN NULL;
		END $$;
		CREATE TRIGGER readside_adopted AFTER INSERT ON public.events REFERENCING NEW TABLE AS readside_new_rows
		    FOR EACH STATEMENT EXECUTE FUNCTION `+fn+`();
		INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version) VALUES ('Order', 'o-1', 'OrderPlaced', '{}', 1);
		INSERT INTO readside.readside_adoptions (table_name, columns, renames, function_name, history_events)
		VALUES ('public.events', '{"id":"id","aggregate_type":"aggregate_type","aggregate_id":"aggregate_id","event_type":"event_type","event_data":"event_data","version":"version","occurred_at":"occurred_at"}',
		        '[{"from":"Domain::Orders::Order","to":"Order"},{"from":"Domain::Orders::Events::","to":"","prefix":true}]', '`+fn+`', 1)`)
	require.NoError(t, err)
	list, err := adopt.List(ctx, rs)
	require.NoError(t, err)
	require.True(t, list[0].Outdated)

	renames, err := adopt.ParseRenames(railsRenames)
	require.NoError(t, err)
	res, err := adopt.Adopt(ctx, rs, adopt.Config{Table: "events", Renames: renames}, false)
	require.NoError(t, err)
	require.True(t, res.Changed)
	require.Zero(t, res.History)
	list, err = adopt.List(ctx, rs)
	require.NoError(t, err)
	require.False(t, list[0].Outdated)
	require.NoError(t, railsEvent(t, app, "o-1", "OrderConfirmed", 2, at("", "confirmed_at", "o-1")))
	require.Equal(t, []string{"Order o-1 v1 OrderPlaced", "Order o-1 v2 OrderConfirmed"}, readsideLog(t, rs))
}

// readside in a schema of its own name: the trigger, the backfill and
// status find its tables there, and nothing lands in schema readside.
func TestAdoptInAnotherSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.NewEmptyDatabaseURL(t)
	app := pgtest.Pool(t, dbURL)
	ddl, err := os.ReadFile("testdata/stream_schema.sql")
	require.NoError(t, err)
	_, err = app.Exec(ctx, string(ddl)+`; INSERT INTO app_events (stream, stream_version, type, body) VALUES ('Order-1', 1, 'OrderPlaced', '{}')`)
	require.NoError(t, err)
	_, err = migrations.Migrate(ctx, app, migrations.Config{Schema: "rs_other"})
	require.NoError(t, err)
	res, err := adopt.Adopt(ctx, app, adopt.Config{Table: "app_events", Columns: streamCols, Schema: "rs_other"}, false)
	require.NoError(t, err)
	require.EqualValues(t, 1, res.History)
	_, err = app.Exec(ctx, `INSERT INTO app_events (stream, stream_version, type, body) VALUES ('Order-1', 2, 'OrderShipped', '{}')`)
	require.NoError(t, err)
	var n int
	var other bool
	require.NoError(t, app.QueryRow(ctx, `SELECT (SELECT count(*) FROM rs_other.events), to_regnamespace('readside') IS NOT NULL`).Scan(&n, &other))
	require.Equal(t, 2, n)
	require.False(t, other)
	list, err := adopt.List(ctx, dbschema.Name("rs_other").Pool(app))
	require.NoError(t, err)
	require.Equal(t, "adopted", list[0].State)
	_, err = adopt.Remove(ctx, app, "rs_other", "app_events", false)
	require.NoError(t, err)
}
