package adopt_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/adopt"
	"github.com/readside/readside/internal/pgtest"
)

// ownedTable makes the Rails seed's events table (with one row of
// history) belong to a new non-superuser role, which may create objects in
// public, and returns the role and a pool logged in as it.
func ownedTable(t *testing.T, app *pgxpool.Pool, appURL string) (string, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	owner := pgtest.NewRole(t, "LOGIN", app)
	_, err := app.Exec(ctx, fmt.Sprintf(`ALTER TABLE events OWNER TO %[1]s; GRANT USAGE, CREATE ON SCHEMA public TO %[1]s`, owner))
	require.NoError(t, err)
	require.NoError(t, railsEvent(t, app, "o-1", "OrderPlaced", 1, placed("o-1", 1000)))
	return owner, pgtest.Pool(t, pgtest.AsRole(appURL, owner))
}

func isSuperuser(t *testing.T, pool *pgxpool.Pool, role string) bool {
	t.Helper()
	var super bool
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT rolsuper FROM pg_roles WHERE rolname = $1`, role).Scan(&super))
	return super
}

// Issue 21, item 1: the owner of an adopted table (not a superuser) makes
// a type of its own with a cast to text that runs ALTER ROLE ... SUPERUSER,
// moves a mapped column to that type and inserts. Nothing of readside's
// runs the cast (the trigger runs as the inserting role and refuses a
// column whose type changed; readside's SECURITY DEFINER functions take
// plain values only), so the owner stays what it was.
func TestAdoptOwnerCannotEscalate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, appURL, _ := setupURLs(t, "rails_schema.sql")
	owner, asOwner := ownedTable(t, app, appURL)
	renames, err := adopt.ParseRenames(railsRenames)
	require.NoError(t, err)
	res, err := adopt.Adopt(ctx, rs, adopt.Config{Table: "events", Renames: renames}, false) // as a superuser
	require.NoError(t, err)
	require.Equal(t, []string{owner}, res.Granted, "the roles that may insert get the table's functions")
	// The owner's own writes go through, as the owner.
	require.NoError(t, railsEvent(t, asOwner, "o-1", "OrderConfirmed", 2, at("", "confirmed_at", "o-1")))

	_, err = asOwner.Exec(ctx, fmt.Sprintf(`
		CREATE TYPE evil_t AS (v text);
		CREATE FUNCTION evil2(evil_t) RETURNS text LANGUAGE plpgsql AS $$
		BEGIN
		    EXECUTE 'ALTER ROLE %[1]s SUPERUSER';
		    RETURN ($1).v;
		END $$;
		CREATE CAST (evil_t AS pg_catalog.text) WITH FUNCTION evil2(evil_t);
		ALTER TABLE events ALTER COLUMN event_type TYPE evil_t USING row(event_type)::evil_t`, owner))
	require.NoError(t, err)
	_, err = asOwner.Exec(ctx, `INSERT INTO events (aggregate_id, aggregate_type, event_type, event_data, version, occurred_at, created_at, updated_at)
		VALUES ('o-1', 'Domain::Orders::Order', row('Domain::Orders::Events::OrderShipped')::evil_t, '{}', 3, now(), now(), now())`)
	requirePgError(t, err, "55000", "readside_adopt_column_type")
	require.ErrorContains(t, err, "readside refused the INSERT into public.events: column event_type is public.evil_t, not character varying")
	require.False(t, isSuperuser(t, app, owner), "the owner's cast ran with readside's rights")

	// Adopting the table again refuses the type before reading a row.
	_, err = adopt.Adopt(ctx, rs, adopt.Config{Table: "events", Renames: renames}, false)
	require.ErrorContains(t, err, "column public.events.event_type (for event_type) is evil_t, want one of text, varchar, bpchar")
	_, err = adopt.Adopt(ctx, rs, adopt.Config{Table: "events", Renames: renames, Columns: map[string]string{"event_type": "event_type::text"}}, false)
	require.ErrorContains(t, err, "readside reads only columns of built-in types; not: event_type (evil_t)")
	require.False(t, isSuperuser(t, app, owner))
	var n int
	require.NoError(t, rs.QueryRow(ctx, `SELECT count(*) FROM readside.events`).Scan(&n))
	require.Equal(t, 2, n)
}

// Expressions run only what PostgreSQL has built in: a function of the
// table owner's, even marked IMMUTABLE, is refused; so are functions that
// are not immutable, subqueries, and names the table does not have.
func TestAdoptExpressionsOnlyBuiltIn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, appURL, _ := setupURLs(t, "rails_schema.sql")
	_, asOwner := ownedTable(t, app, appURL)
	_, err := asOwner.Exec(ctx, `CREATE FUNCTION public.same(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT $1';
		CREATE OPERATOR public.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = texteq)`)
	require.NoError(t, err)
	for expr, want := range map[string]string{
		"public.same(event_type)":                   "uses public.same(text), not built into PostgreSQL",
		"event_type::text OPERATOR(public.===) 'x'": "not built into PostgreSQL",
		"event_type || now()::text":                 "not immutable",
		"(SELECT max(event_type) FROM events)":      "cannot use subquery",
		"lower(nope)":                               `column "nope" does not exist`,
		"version + 0":                               "yields integer, want one of text, varchar, bpchar",
		"event_type); DROP TABLE events; --":        "syntax error",
	} {
		_, err := adopt.Adopt(ctx, rs, adopt.Config{Table: "events", Columns: map[string]string{"event_type": expr}}, true)
		require.ErrorContains(t, err, want, expr)
		require.ErrorContains(t, err, "--column event_type=", expr)
	}
	var n int
	require.NoError(t, app.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&n))
	require.Equal(t, 1, n)
}

// The roles that may insert into the table get the table's functions at
// adoption; one given INSERT later is refused, naming readside and the
// fix, until adopt runs again.
func TestAdoptGrantsTheRolesThatMayInsert(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, appURL, _ := setupURLs(t, "rails_schema.sql")
	_, asOwner := ownedTable(t, app, appURL)
	renames, err := adopt.ParseRenames(railsRenames)
	require.NoError(t, err)
	cfg := adopt.Config{Table: "events", Renames: renames}
	_, err = adopt.Adopt(ctx, rs, cfg, false)
	require.NoError(t, err)

	late := pgtest.NewRole(t, "LOGIN", app)
	_, err = asOwner.Exec(ctx, fmt.Sprintf(`GRANT SELECT, INSERT ON events TO %[1]s; GRANT USAGE ON SEQUENCE events_id_seq TO %[1]s`, late))
	require.NoError(t, err)
	asLate := pgtest.Pool(t, pgtest.AsRole(appURL, late))
	err = railsEvent(t, asLate, "o-1", "OrderConfirmed", 2, at("", "confirmed_at", "o-1"))
	requirePgError(t, err, "42501", "")
	require.ErrorContains(t, err, "readside refused the INSERT into public.events: role "+late+" may insert into the table but may not append to readside's log")

	res, err := adopt.Adopt(ctx, rs, cfg, false)
	require.NoError(t, err)
	require.Equal(t, []string{late}, res.Granted)
	require.Zero(t, res.History)
	require.NoError(t, railsEvent(t, asLate, "o-1", "OrderConfirmed", 2, at("", "confirmed_at", "o-1")))
	again, err := adopt.Adopt(ctx, rs, cfg, false)
	require.NoError(t, err)
	require.False(t, again.Changed)
	require.Equal(t, []string{"Order o-1 v1 OrderPlaced", "Order o-1 v2 OrderConfirmed"}, readsideLog(t, rs))
}

// adopt's own statements run with a search_path it sets (pg_catalog,
// pg_temp): a database setting that puts the owner's schema first cannot
// make them call the owner's functions (a max(integer) aggregate in public
// would be found before pg_catalog's of the same signature).
func TestAdoptIgnoresTheDatabasesSearchPath(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, appURL, rsURL := setupURLs(t, "rails_schema.sql")
	owner, asOwner := ownedTable(t, app, appURL)
	renames, err := adopt.ParseRenames(railsRenames)
	require.NoError(t, err)
	cfg := adopt.Config{Table: "events", Renames: renames, ChunkRows: 1}
	// Adopted, removed: readside's log has o-1, so adopting again reads
	// how far (max(version)).
	_, err = adopt.Adopt(ctx, rs, cfg, false)
	require.NoError(t, err)
	_, err = adopt.Remove(ctx, rs, "", "events", false)
	require.NoError(t, err)
	require.NoError(t, railsEvent(t, asOwner, "o-1", "OrderConfirmed", 2, at("", "confirmed_at", "o-1")))

	_, err = asOwner.Exec(ctx, fmt.Sprintf(`CREATE FUNCTION public.evil_max(s integer, v integer) RETURNS integer LANGUAGE plpgsql AS $$
		BEGIN
		    BEGIN
		        EXECUTE 'ALTER ROLE %[1]s SUPERUSER';
		    EXCEPTION WHEN insufficient_privilege THEN NULL;
		    END;
		    RETURN greatest(s, v);
		END $$;
		CREATE AGGREGATE public.max(integer) (SFUNC = public.evil_max, STYPE = integer)`, owner))
	require.NoError(t, err)
	_, err = app.Exec(ctx, `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = public, pg_catalog', current_database()); END $$`)
	require.NoError(t, err)
	rs = pgtest.Pool(t, rsURL) // new sessions: public first
	res, err := adopt.Adopt(ctx, rs, cfg, false)
	require.NoError(t, err)
	require.EqualValues(t, 1, res.History)
	require.False(t, isSuperuser(t, app, owner))
	require.Equal(t, []string{"Order o-1 v1 OrderPlaced", "Order o-1 v2 OrderConfirmed"}, readsideLog(t, rs))
}
