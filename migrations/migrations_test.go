package migrations_test

import (
	"context"
	"errors"
	"net/url"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/migrations"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Fleet members all run `projector migrate` at start: three at once on an
// empty database, then again, must leave one schema at the latest version.
func TestMigrateConcurrentlyAndAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, pgtest.NewEmptyDatabaseURL(t))
	require.ErrorIs(t, migrations.Check(ctx, pool, ""), migrations.ErrNotMigrated)

	var wg sync.WaitGroup
	errs := make([]error, 3)
	results := make([]*migrations.Result, 3)
	for i := range 3 {
		wg.Go(func() { results[i], errs[i] = migrations.Migrate(ctx, pool, migrations.Config{}) })
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	applied := 0
	for _, r := range results {
		applied += len(r.Applied)
		require.Equal(t, migrations.Latest(), r.Version)
	}
	require.Equal(t, migrations.Latest(), applied, "each migration applied exactly once")
	require.NoError(t, migrations.Check(ctx, pool, ""))

	again, err := migrations.Migrate(ctx, pool, migrations.Config{})
	require.NoError(t, err)
	require.Empty(t, again.Applied)
	require.Empty(t, again.River)

	// A newer binary's migration: this one refuses to touch the schema.
	_, err = pool.Exec(ctx, `INSERT INTO readside.readside_migrations (version, name) VALUES ($1, 'future')`, migrations.Latest()+1)
	require.NoError(t, err)
	_, err = migrations.Migrate(ctx, pool, migrations.Config{})
	require.ErrorIs(t, err, migrations.ErrSchemaTooNew)
	require.ErrorIs(t, migrations.Check(ctx, pool, ""), migrations.ErrSchemaTooNew)
}

// A database migrated by an older binary (up to 009, in schema readside)
// upgrades: a dead letter in the retired 'retrying' status becomes parked,
// the status check refuses 'retrying', and the parked index holds parked
// rows only.
func TestMigrateFrom009(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, old := migratedTo(t, 9)
	_, err := old.Exec(ctx, `INSERT INTO projections (name, segments) VALUES ('p', 1);
		INSERT INTO dead_letters (projection, segment, event_id, txid, aggregate_type, aggregate_id, event_type, version, reason, error, status)
		VALUES ('p', 0, 1, '1', 'Order', 'o1', 'OrderPlaced', 1, 'failed', 'boom', 'retrying')`)
	require.NoError(t, err)

	res, err := migrations.Migrate(ctx, pool, migrations.Config{})
	require.NoError(t, err)
	require.Equal(t, migrations.Latest(), res.Version)
	require.NoError(t, migrations.Check(ctx, pool, ""))

	var status string
	require.NoError(t, pool.QueryRow(ctx, `SELECT status FROM readside.dead_letters`).Scan(&status))
	require.Equal(t, "parked", status)
	_, err = pool.Exec(ctx, `UPDATE readside.dead_letters SET status = 'retrying'`)
	require.ErrorContains(t, err, "dead_letters_status_check")
	var def string
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_get_indexdef('readside.dead_letters_parked_idx'::regclass)`).Scan(&def))
	require.Contains(t, def, "WHERE (status = 'parked'::text)")
}

// migratedTo returns an empty database migrated to version n the way an
// older binary did it (unqualified, under readside's search_path): a pool
// on it, and one with that search_path.
func migratedTo(t *testing.T, n int) (pool, old *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	dbURL := pgtest.NewEmptyDatabaseURL(t)
	pool = pgtest.Pool(t, dbURL)
	_, err := pool.Exec(ctx, `CREATE SCHEMA readside`)
	require.NoError(t, err)
	old = pgtest.Pool(t, withSearchPath(t, dbURL, "readside"))
	_, err = old.Exec(ctx, `CREATE TABLE readside_migrations (version integer PRIMARY KEY, name text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`)
	require.NoError(t, err)
	for _, m := range migrations.All()[:n] {
		_, err := old.Exec(ctx, m.SQL)
		require.NoError(t, err, m.Name)
		_, err = old.Exec(ctx, `INSERT INTO readside_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name)
		require.NoError(t, err)
	}
	return pool, old
}

func withSearchPath(t *testing.T, rawURL, path string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	require.NoError(t, err)
	q := u.Query()
	q.Set("search_path", path)
	u.RawQuery = q.Encode()
	return u.String()
}

// Writers may call readside_register() (migration 012): a role granted the
// writer rights before 012 gets it at the upgrade, the writer grant
// includes it from then on, and revoking the writer rights takes it back.
func TestMigrateGivesWritersReadsideRegister(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := migratedTo(t, 11)
	before, after := pgtest.NewRole(t, "NOLOGIN", pool), pgtest.NewRole(t, "NOLOGIN", pool)
	_, err := pool.Exec(ctx, `SELECT readside.readside_grant_writer($1::regrole)`, before)
	require.NoError(t, err)

	_, err = migrations.Migrate(ctx, pool, migrations.Config{})
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `SELECT readside.readside_grant_writer($1::regrole)`, after)
	require.NoError(t, err)
	may := func(role string) bool {
		var ok bool
		require.NoError(t, pool.QueryRow(ctx, `SELECT has_function_privilege($1, 'readside.readside_register()', 'EXECUTE')`, role).Scan(&ok))
		return ok
	}
	require.True(t, may(before), "granted before 012")
	require.True(t, may(after), "granted after 012")
	other := pgtest.NewRole(t, "NOLOGIN", pool)
	require.False(t, may(other), "not PUBLIC's")
	_, err = pool.Exec(ctx, `SELECT readside.readside_revoke_writer($1::regrole)`, before)
	require.NoError(t, err)
	require.False(t, may(before), "revoked with the writer rights")
}

// Migration 019 declares readside_event_bytes STABLE. An index or a
// generated column of the database's own that uses it would need it
// IMMUTABLE (the running database would not notice; a restore of its dump
// would fail): the migration refuses, naming it, and runs once it is gone.
// A column default may use a STABLE function and is left alone.
func TestMigrate019RefusesAnIndexOnTheEventSize(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := migratedTo(t, 18)
	_, err := pool.Exec(ctx, `CREATE TABLE public.app_events (d jsonb, m jsonb,
			sized bigint DEFAULT readside.readside_event_bytes('{}', '{}'));
		CREATE INDEX app_events_size ON public.app_events (readside.readside_event_bytes(d, m))`)
	require.NoError(t, err)
	_, err = migrations.Migrate(ctx, pool, migrations.Config{})
	require.ErrorContains(t, err, "index public.app_events_size uses readside_event_bytes")

	_, err = pool.Exec(ctx, `DROP INDEX public.app_events_size;
		ALTER TABLE public.app_events ADD COLUMN size bigint GENERATED ALWAYS AS (readside.readside_event_bytes(d, m)) STORED`)
	require.NoError(t, err)
	_, err = migrations.Migrate(ctx, pool, migrations.Config{})
	require.ErrorContains(t, err, "column size of table public.app_events uses readside_event_bytes")

	_, err = pool.Exec(ctx, `ALTER TABLE public.app_events DROP COLUMN size`)
	require.NoError(t, err)
	res, err := migrations.Migrate(ctx, pool, migrations.Config{})
	require.NoError(t, err, "a default may use a STABLE function")
	require.Equal(t, migrations.Latest(), res.Version)
	var volatility string
	require.NoError(t, pool.QueryRow(ctx, `SELECT provolatile::text FROM pg_proc WHERE oid = 'readside.readside_event_bytes(jsonb, jsonb)'::regprocedure`).Scan(&volatility))
	require.Equal(t, "s", volatility)
}
