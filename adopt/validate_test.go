package adopt_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/adopt"
)

// streamCols maps the stream-id table (testdata/stream_schema.sql) by
// expression, as projector adopt --column does.
var streamCols = map[string]string{
	"aggregate_type": "split_part(stream, '-', 1)",
	"aggregate_id":   "substr(stream, strpos(stream, '-') + 1)",
	"id":             "seq",
	"version":        "stream_version",
	"event_type":     "type",
	"event_data":     "body",
	"occurred_at":    "recorded_at",
}

// Issue 21, item 5: rows readside's log cannot take are refused before
// anything changes, each named by its id and the column (or expression)
// it maps.
func TestAdoptRefusesRowsUpFront(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name, rows, want string
	}{
		{"version 0", `('Order-1', 0, 'OrderPlaced', '{}')`,
			`row id 1: column "stream_version" (for version) is 0; readside's versions run from 1 to 2147483647`},
		{"no payload", `('Order-1', 1, 'OrderPlaced', NULL)`,
			`row id 1: column "body" (for event_data) is NULL; readside's events all have a payload`},
		{"no stream", `(NULL, 1, 'OrderPlaced', '{}')`,
			`row id 1: expression split_part(stream, '-'::text, 1) (for aggregate_type) is NULL`},
		{"a version twice", `('Order-1', 1, 'OrderPlaced', '{}'), ('Order-2', 1, 'OrderPlaced', '{}'), ('order-2', 1, 'OrderPlaced', '{}')`, ``},
		{"a gap", `('Order-1', 1, 'OrderPlaced', '{}'), ('Order-1', 3, 'OrderShipped', '{}'), ('Order-1', 4, 'OrderShipped', '{}')`,
			`Order 1: version 2 is missing (v1 id 1, v3 id 2, v4 id 3); readside needs every version of an aggregate`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			app, rs, _ := setup(t, "stream_schema.sql")
			_, err := app.Exec(ctx, `INSERT INTO app_events (stream, stream_version, type, body) VALUES `+tc.rows)
			require.NoError(t, err)
			cols := streamCols
			if tc.name == "a version twice" { // two streams that one mapping makes one aggregate
				cols = map[string]string{}
				for k, v := range streamCols {
					cols[k] = v
				}
				cols["aggregate_type"] = "initcap(split_part(stream, '-', 1))"
				tc.want = `Order 2: version 1 is in two rows (v1 id 2, v1 id 3); readside keeps one event per aggregate version`
			}
			_, err = adopt.Adopt(ctx, rs, adopt.Config{Table: "app_events", Columns: cols}, true)
			require.ErrorIs(t, err, adopt.ErrInvalid)
			require.ErrorContains(t, err, tc.want)
			_, err = adopt.Adopt(ctx, rs, adopt.Config{Table: "app_events", Columns: cols}, false)
			require.ErrorContains(t, err, tc.want)
			var n int
			require.NoError(t, rs.QueryRow(ctx, `SELECT (SELECT count(*) FROM readside.events) + (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'app_events'::regclass)`).Scan(&n))
			require.Zero(t, n, "nothing changed")
		})
	}
}

// Issue 21, item 5: what the table admits and readside refuses is said at
// adoption (warnings), and an INSERT that breaks one of readside's rules
// fails in the application's statement naming readside, the rule and the
// row, with a SQLSTATE per rule.
func TestAdoptRefusalsNameReadside(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, _ := setup(t, "stream_schema.sql")
	res, err := adopt.Adopt(ctx, rs, adopt.Config{Table: "app_events", Columns: streamCols}, false)
	require.NoError(t, err)
	require.Equal(t, []string{
		`column public.app_events.body (for event_data) admits NULL: readside refuses such a row (23502 readside_adopt_not_null)`,
		`column public.app_events.stream_version (for version) admits NULL: readside refuses such a row (23502 readside_adopt_not_null)`,
		`column public.app_events.type (for event_type) admits NULL: readside refuses such a row (23502 readside_adopt_not_null)`,
		`no CHECK constraint of public.app_events reads column stream_version (for version): a version below 1 is refused by readside (23514 readside_adopt_version_range)`,
	}, res.Warnings)

	for _, tc := range []struct {
		row, code, constraint, msg string
	}{
		{`('Order-1', 0, 'OrderPlaced', '{}')`, "23514", "readside_adopt_version_range",
			`readside refused the row of public.app_events with id 1: its version (column "stream_version") is 0; readside's versions run from 1 to 2147483647`},
		{`('Order-1', 1, 'OrderPlaced', NULL)`, "23502", "readside_adopt_not_null",
			`readside refused the row of public.app_events with id 2: its payload (column "body", for event_data) is NULL`},
		{`('Order-1', 2, 'OrderShipped', '{}')`, "23514", "readside_aggregate_version_gap", `readside: Order 1 version 1 does not exist`},
	} {
		_, err := app.Exec(ctx, `INSERT INTO app_events (stream, stream_version, type, body) VALUES `+tc.row)
		requirePgError(t, err, tc.code, tc.constraint)
		require.ErrorContains(t, err, tc.msg)
	}
	// A version the log has under another stream the mapping makes the
	// same aggregate: refused as readside's, naming the row.
	_, err = app.Exec(ctx, `INSERT INTO app_events (stream, stream_version, type, body) VALUES ('Order-1', 1, 'OrderPlaced', '{}')`)
	require.NoError(t, err)
	_, err = app.Exec(ctx, `DELETE FROM app_events`) // the application's own business: recorded, not mirrored
	require.NoError(t, err)
	_, err = app.Exec(ctx, `INSERT INTO app_events (stream, stream_version, type, body) VALUES ('Order-1', 1, 'OrderPlaced', '{}')`)
	requirePgError(t, err, "23505", "events_aggregate_version_key")
	require.ErrorContains(t, err, `readside refused the row of public.app_events with id 5: Order 1 version 1 is already in readside's log (event `)
}

// The application's ids need not rise with the version: readside copies
// each aggregate's rows in version order, history and new rows alike.
func TestAdoptOrdersByVersionNotID(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, _ := setup(t, "stream_schema.sql")
	_, err := app.Exec(ctx, `INSERT INTO app_events (seq, stream, stream_version, type, body) VALUES
		(10, 'Order-1', 1, 'OrderPlaced', '{}'), (5, 'Order-1', 2, 'OrderConfirmed', '{}'), (7, 'Order-2', 1, 'OrderPlaced', '{}')`)
	require.NoError(t, err)
	res, err := adopt.Adopt(ctx, rs, adopt.Config{Table: "app_events", Columns: streamCols}, false)
	require.NoError(t, err)
	require.EqualValues(t, 3, res.History)
	_, err = app.Exec(ctx, `INSERT INTO app_events (seq, stream, stream_version, type, body) VALUES
		(20, 'Order-1', 4, 'OrderCancelled', '{}'), (30, 'Order-1', 3, 'OrderShipped', '{}')`)
	require.NoError(t, err)
	require.Equal(t, []string{
		"Order 1 v1 OrderPlaced", "Order 1 v2 OrderConfirmed", "Order 2 v1 OrderPlaced", // history: aggregates by their first id
		"Order 1 v3 OrderShipped", "Order 1 v4 OrderCancelled",
	}, readsideLog(t, rs))
}

// Issue 21, item 6: renames that would make two stored aggregate types
// one are refused at adoption, naming both; event types merge only by an
// exact rule (OldName=NewName), never by a prefix rule.
func TestAdoptRefusesMergingRenames(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, _ := setup(t, "rails_schema.sql")
	require.NoError(t, railsEvent(t, app, "o-1", "OrderPlaced", 1, placed("o-1", 100)))
	_, err := app.Exec(ctx, `INSERT INTO events (aggregate_id, aggregate_type, event_type, event_data, version, occurred_at, created_at, updated_at)
		VALUES ('o-1', 'Order', 'OrderPlaced', '{}', 1, now(), now(), now())`)
	require.NoError(t, err)
	renames, err := adopt.ParseRenames(railsRenames)
	require.NoError(t, err)
	_, err = adopt.Adopt(ctx, rs, adopt.Config{Table: "events", Renames: renames}, false)
	require.ErrorIs(t, err, adopt.ErrInvalid)
	require.ErrorContains(t, err, `the aggregate types "Domain::Orders::Order", "Order" would all be "Order" in readside's log (--rename): readside refuses to merge stored aggregate types into one`)
	require.ErrorContains(t, err, `the event types "Domain::Orders::Events::OrderPlaced", "OrderPlaced" would all be "OrderPlaced"`)

	_, err = app.Exec(ctx, `UPDATE events SET aggregate_type = 'Domain::Orders::Order', aggregate_id = 'o-2', event_type = 'OrderCreated' WHERE aggregate_type = 'Order'`)
	require.NoError(t, err)
	renames, err = adopt.ParseRenames(railsRenames + ",OrderCreated=OrderPlaced")
	require.NoError(t, err)
	res, err := adopt.Adopt(ctx, rs, adopt.Config{Table: "events", Renames: renames}, false)
	require.NoError(t, err, "an exact rule merges event types on purpose")
	require.EqualValues(t, 2, res.History)
	require.Equal(t, []string{"Order o-1 v1 OrderPlaced", "Order o-2 v1 OrderPlaced"}, readsideLog(t, rs))
}
