package adopt_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/adopt"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/migrations"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/orderstatistics"
	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/projectortest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// setup returns a database with the application's schema (file in
// testdata) in public and readside migrated by a plain URL (into schema
// readside): a pool as the application and one as readside.
func setup(t *testing.T, schemaFile string) (app, rs *pgxpool.Pool, rsURL string) {
	app, rs, _, rsURL = setupURLs(t, schemaFile)
	return app, rs, rsURL
}

func setupURLs(t *testing.T, schemaFile string) (app, rs *pgxpool.Pool, appURL, rsURL string) {
	t.Helper()
	ctx := context.Background()
	dbURL := pgtest.NewEmptyDatabaseURL(t)
	app = pgtest.Pool(t, dbURL)
	ddl, err := os.ReadFile("testdata/" + schemaFile)
	require.NoError(t, err)
	_, err = app.Exec(ctx, string(ddl))
	require.NoError(t, err)
	rsURL = dbURL // readside needs no search_path: its tables are in schema readside
	rs = pgtest.Pool(t, rsURL)
	_, err = migrations.Migrate(ctx, rs, migrations.Config{Projections: pgtest.ShippedDDL()})
	require.NoError(t, err)
	return app, rs, dbURL, rsURL
}

func requirePgError(t *testing.T, err error, code, constraint string) {
	t.Helper()
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "want SQLSTATE %s, got %v", code, err)
	require.Equal(t, code, pgErr.Code, "%v", err)
	require.Equal(t, constraint, pgErr.ConstraintName, "%v", err)
}

// railsEvent inserts as ActiveRecord's EventRecord.create! does.
func railsEvent(t *testing.T, q interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, id, typ string, version int, data string) error {
	t.Helper()
	_, err := q.Exec(context.Background(), `INSERT INTO events (aggregate_id, aggregate_type, event_type, event_data, version, occurred_at, created_at, updated_at)
		VALUES ($1, 'Domain::Orders::Order', $2, $3, $4, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC') RETURNING id`,
		id, "Domain::Orders::Events::"+typ, data, version)
	return err
}

func placed(id string, cents int) string {
	return fmt.Sprintf(`{"order_id":%q,"customer_name":"Ada","items":[{"product_name":"pen","quantity":1,"unit_price":"%d.%02d"}],"total_amount":"%d.%02d","placed_at":"2025-01-02T03:04:05Z"}`,
		id, cents/100, cents%100, cents/100, cents%100)
}

func at(typ, field, id string) string {
	return fmt.Sprintf(`{"order_id":%q,%q:"2025-01-03T00:00:00Z"}`, id, field)
}

const railsRenames = "Domain::Orders::Events::*=*,Domain::Orders::Order=Order"

func TestAdoptRailsSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, _ := setup(t, "rails_schema.sql")

	// History, written before adoption.
	require.NoError(t, railsEvent(t, app, "o-1", "OrderPlaced", 1, placed("o-1", 1000)))
	require.NoError(t, railsEvent(t, app, "o-1", "OrderConfirmed", 2, at("", "confirmed_at", "o-1")))
	require.NoError(t, railsEvent(t, app, "o-2", "OrderPlaced", 1, placed("o-2", 250)))

	renames, err := adopt.ParseRenames(railsRenames)
	require.NoError(t, err)
	cfg := adopt.Config{Table: "events", Renames: renames}

	// A dry run prints the SQL and changes nothing.
	res, err := adopt.Adopt(ctx, rs, cfg, true)
	require.NoError(t, err)
	require.True(t, res.Changed)
	require.Contains(t, res.SQL, `CREATE OR REPLACE TRIGGER readside_adopted AFTER INSERT ON "public"."events"`)
	require.Contains(t, res.SQL, "history is copied in chunks")
	var n int
	require.NoError(t, rs.QueryRow(ctx, `SELECT count(*) FROM readside.events`).Scan(&n))
	require.Zero(t, n)

	res, err = adopt.Adopt(ctx, rs, cfg, false)
	require.NoError(t, err)
	require.Equal(t, "public.events", res.Table)
	require.EqualValues(t, 3, res.History)

	// Idempotent: again, nothing to do, no second history.
	again, err := adopt.Adopt(ctx, rs, cfg, false)
	require.NoError(t, err)
	require.False(t, again.Changed)
	require.Empty(t, again.SQL)

	// The application goes on writing, unchanged.
	require.NoError(t, railsEvent(t, app, "o-1", "OrderShipped", 3, at("", "shipped_at", "o-1")))
	require.NoError(t, pgx.BeginFunc(ctx, app, func(tx pgx.Tx) error {
		if err := railsEvent(t, tx, "o-2", "OrderCancelled", 2, at("", "cancelled_at", "o-2")); err != nil {
			return err
		}
		return railsEvent(t, tx, "o-3", "OrderPlaced", 1, placed("o-3", 4200))
	}))
	// A write that breaks the rules fails in the application's statement.
	err = railsEvent(t, app, "o-3", "OrderShipped", 3, at("", "shipped_at", "o-3"))
	requirePgError(t, err, "23514", "readside_aggregate_version_gap")

	// readside's log: renamed, history first in id order, then the rest.
	rows, err := rs.Query(ctx, `SELECT aggregate_type, aggregate_id, event_type, version FROM readside.events ORDER BY txid, id`)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var typ, id, et string
		var v int
		err := r.Scan(&typ, &id, &et, &v)
		return fmt.Sprintf("%s %s v%d %s", typ, id, v, et), err
	})
	require.NoError(t, err)
	require.Equal(t, []string{
		"Order o-1 v1 OrderPlaced", "Order o-1 v2 OrderConfirmed", "Order o-2 v1 OrderPlaced",
		"Order o-1 v3 OrderShipped", "Order o-2 v2 OrderCancelled", "Order o-3 v1 OrderPlaced",
	}, got)
	require.NoError(t, rs.QueryRow(ctx, `SELECT count(*) FROM readside.outbox`).Scan(&n))
	require.Equal(t, 6, n)

	// The shipped projections read them as their own.
	for _, p := range []projectors.Projection{ordersummary.New(), orderstatistics.New()} {
		s := p.Spec()
		projectortest.ApplyStream(t, rs, p, outbox.Filter{EventTypes: s.EventTypes, AggregateTypes: s.AggregateTypes}, 100)
	}
	rows, err = rs.Query(ctx, `SELECT order_id || ' ' || status || ' ' || total_amount FROM readside.order_summary ORDER BY order_id`)
	require.NoError(t, err)
	summary, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"o-1 shipped 10.00", "o-2 cancelled 2.50", "o-3 pending 42.00"}, summary)
	mismatches, err := orderstatistics.Mismatches(ctx, rs)
	require.NoError(t, err)
	require.Empty(t, mismatches)

	// Another mapping replaces the trigger, keeps the history.
	renames2, err := adopt.ParseRenames(railsRenames + ",Domain::Orders::Events::OrderPlaced=OrderPlaced")
	require.NoError(t, err)
	res, err = adopt.Adopt(ctx, rs, adopt.Config{Table: "public.events", Renames: renames2}, false)
	require.NoError(t, err)
	require.True(t, res.Changed)
	require.Zero(t, res.History, "readside's log has every version already")

	// Remove: the application's writes no longer reach readside.
	res, err = adopt.Remove(ctx, rs, "", "events", false)
	require.NoError(t, err)
	require.True(t, res.Changed)
	require.NoError(t, railsEvent(t, app, "o-4", "OrderPlaced", 1, placed("o-4", 100)))
	require.NoError(t, rs.QueryRow(ctx, `SELECT count(*) FROM readside.events`).Scan(&n))
	require.Equal(t, 6, n)
	var triggers int
	require.NoError(t, rs.QueryRow(ctx, `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.events'::regclass`).Scan(&triggers))
	require.Zero(t, triggers)
	res, err = adopt.Remove(ctx, rs, "", "events", false)
	require.NoError(t, err)
	require.False(t, res.Changed)
}

func TestAdoptValidates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, rs, _ := setup(t, "elixir_schema.sql")
	for _, tc := range []struct {
		cfg  adopt.Config
		want string
	}{
		{adopt.Config{Table: "events"}, `no column "version" (for version); map it with --column version=`},
		{adopt.Config{Table: "events", Columns: map[string]string{"version": "event_version", "metadata": "nope"}}, `no column "nope" (for metadata)`},
		{adopt.Config{Table: "events", Columns: map[string]string{"version": "event_version", "event_data": "event_type"}},
			`column public.events.event_type (for event_data) is varchar, want one of jsonb, json`},
		{adopt.Config{Table: "events", Columns: map[string]string{"version": "created_at"}}, `(for version) is timestamptz`},
		{adopt.Config{Table: "events_2024_01"}, "is a partition"},
		{adopt.Config{Table: "readside.events"}, "is in readside's own schema"},
		{adopt.Config{Table: "nothere"}, "no such table"},
		{adopt.Config{}, "--table is required"},
	} {
		_, err := adopt.Adopt(ctx, rs, tc.cfg, false)
		require.ErrorContains(t, err, tc.want)
	}
	_, err := adopt.ParseColumns("version=event_version,colour=x")
	require.ErrorContains(t, err, `unknown key "colour"`)
	_, err = adopt.ParseRenames("A::*=B")
	require.ErrorContains(t, err, "prefix rule")
	// Exact before prefix, longest prefix first.
	r, err := adopt.ParseRenames("A::*=*,A::B::*=X*,A::B::C=Y")
	require.NoError(t, err)
	require.Equal(t, []adopt.Rename{{From: "A::B::C", To: "Y"}, {From: "A::B::", To: "X", Prefix: true}, {From: "A::", To: "", Prefix: true}}, r)
}

// elixirCols is the Elixir seed's mapping.
var elixirCols = map[string]string{"version": "event_version", "metadata": "event_metadata", "occurred_at": "created_at"}

const elixirRenames = "Elixir.CommandService.Domain.Events.*=*"

type ectoRow struct {
	id, typ, data string
	version       int
}

// ectoInsert writes as Repo.insert! does (one row) or Repo.insert_all (rows).
func ectoInsert(ctx context.Context, q interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, createdAt string, rows ...ectoRow) error {
	sql := `INSERT INTO events (aggregate_id, aggregate_type, event_type, event_data, event_metadata, event_version, created_at) VALUES `
	args := []any{createdAt}
	for i, r := range rows {
		if i > 0 {
			sql += ", "
		}
		n := len(args)
		sql += fmt.Sprintf(`($%d::uuid, 'Order', 'Elixir.CommandService.Domain.Events.' || $%d, $%d::jsonb, '{"user_id":"u"}', $%d::int, $1::timestamptz)`, n+1, n+2, n+3, n+4)
		args = append(args, r.id, r.typ, r.data, r.version)
	}
	_, err := q.Exec(ctx, sql, args...)
	return err
}

func TestAdoptElixirPartitioned(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, _ := setup(t, "elixir_schema.sql")
	const a, b = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"
	ev := func(id, typ string, v int) ectoRow {
		var data string
		switch typ {
		case "OrderPlaced":
			data = placed(id, 500)
		case "OrderConfirmed":
			data = at("", "confirmed_at", id)
		default:
			data = at("", "shipped_at", id)
		}
		return ectoRow{id, typ, data, v}
	}
	// History in two monthly partitions.
	require.NoError(t, ectoInsert(ctx, app, "2024-01-15", ev(a, "OrderPlaced", 1)))
	require.NoError(t, ectoInsert(ctx, app, "2024-02-15", ev(a, "OrderConfirmed", 2), ev(b, "OrderPlaced", 1)))

	renames, err := adopt.ParseRenames(elixirRenames)
	require.NoError(t, err)
	res, err := adopt.Adopt(ctx, rs, adopt.Config{Table: "public.events", Columns: elixirCols, Renames: renames}, false)
	require.NoError(t, err)
	require.EqualValues(t, 3, res.History)

	// A partition the application creates after adoption is covered.
	_, err = app.Exec(ctx, `CREATE TABLE events_2026_12 PARTITION OF events FOR VALUES FROM ('2026-12-01') TO ('2027-01-01')`)
	require.NoError(t, err)
	require.NoError(t, pgx.BeginFunc(ctx, app, func(tx pgx.Tx) error {
		if err := ectoInsert(ctx, tx, "2026-12-02", ev(a, "OrderShipped", 3)); err != nil {
			return err
		}
		return ectoInsert(ctx, tx, "2026-12-02", ev(b, "OrderConfirmed", 2))
	}))

	// A stale transaction (older xid than the one that wrote the previous
	// version) is refused as a serialization failure: Postgrex
	// :serialization_failure, retried by the application.
	old, err := app.Begin(ctx)
	require.NoError(t, err)
	defer old.Rollback(ctx)
	_, err = old.Exec(ctx, `SELECT pg_current_xact_id()`)
	require.NoError(t, err)
	require.NoError(t, ectoInsert(ctx, app, "2026-12-03", ev(b, "OrderShipped", 3)))
	err = ectoInsert(ctx, old, "2026-12-03", ev(b, "OrderShipped", 4))
	requirePgError(t, err, "40001", "readside_aggregate_xid_order")
	require.NoError(t, old.Rollback(ctx))

	var got []string
	rows, err := rs.Query(ctx, `SELECT right(aggregate_id, 1) || ' v' || version || ' ' || event_type || ' ' || (metadata->>'user_id') || ' ' || to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM') FROM readside.events ORDER BY txid, id`)
	require.NoError(t, err)
	got, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{
		"a v1 OrderPlaced u 2024-01", "a v2 OrderConfirmed u 2024-02", "b v1 OrderPlaced u 2024-02",
		"a v3 OrderShipped u 2026-12", "b v2 OrderConfirmed u 2026-12", "b v3 OrderShipped u 2026-12",
	}, got)

	p := ordersummary.New()
	s := p.Spec()
	projectortest.ApplyStream(t, rs, p, outbox.Filter{EventTypes: s.EventTypes, AggregateTypes: s.AggregateTypes}, 2)
	var shipped int
	require.NoError(t, rs.QueryRow(ctx, `SELECT count(*) FROM readside.order_summary WHERE status = 'shipped'`).Scan(&shipped))
	require.Equal(t, 2, shipped)
}
