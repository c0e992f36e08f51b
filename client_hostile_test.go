package readside_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/migrations"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/shipped"
)

// A Start that fails (here: the database is not migrated yet) leaves
// the client startable: the CLI retries Start on transient errors, and a
// service retries it after running Migrate.
func TestStartAgainAfterFailedStart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, pgtest.NewEmptyDatabaseURL(t))
	c := newClient(t, readside.Config{Pool: pool, Projections: shipped.All(), Registerer: prometheus.NewRegistry()})
	err := c.Start(ctx)
	require.ErrorIs(t, err, migrations.ErrNotMigrated)
	_, err = c.Migrate(ctx)
	require.NoError(t, err)
	err = c.Start(ctx)
	if err == nil {
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		require.NoError(t, c.Stop(sctx))
	}
	require.NoError(t, err, "second Start after a failed one")
}

// Cancelling Start's context stops the member: Stopped closes.
func TestStartContextCancelStops(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	c := newClient(t, readside.Config{Pool: pool, Projections: shipped.All()})
	ctx, cancel := context.WithCancel(context.Background())
	require.NoError(t, c.Start(ctx))
	cancel()
	select {
	case <-c.Stopped():
	case <-time.After(20 * time.Second):
		t.Fatal("Stopped not closed 20s after Start's context was cancelled")
	}
	sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer scancel()
	require.NoError(t, c.Stop(sctx))
}

// Wait checks the Job it is handed against River's: a reset job presented
// as another kind, or of another projection, is refused.
func TestWaitChecksKind(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	c := newClient(t, readside.Config{Pool: pool, Projections: shipped.All()})
	start(t, c)
	appendOrders(t, pool, "", 3)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	require.NoError(t, c.WaitCaughtUp(wctx))
	job, err := c.Reset(ctx, "order_summary", readside.ResetToStart())
	require.NoError(t, err)
	require.NoError(t, c.Wait(wctx, job, nil))

	wrong := *job
	wrong.Kind = "readside_dead_letters_retry"
	wrong.Projection = "no_such_projection"
	err = c.Wait(wctx, &wrong, nil)
	require.Error(t, err, "Wait of a reset job presented as a dead-letter retry of an unknown projection succeeded")
}

// An operation on a projection the client does not carry names what it
// carries; errors.Is finds checkpoint.ErrUnknownProjection.
func TestResetNotCarried(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	c := newClient(t, readside.Config{Pool: pool, Projections: shipped.All()[:1]})
	_, err := c.Reset(ctx, "order_details", readside.ResetToStart())
	var u *readside.UnknownProjectionError
	require.True(t, errors.As(err, &u), "%v", err)
	t.Log(err)
}

// A function in public (on every role's default search_path) whose exact
// signature beats pg_catalog's polymorphic or variadic one, whatever the
// search order: readside's statements and the search_path it gives a
// projection name only what pg_catalog holds, or qualify it.
func TestSearchPathHijackedByPublicFunction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := pool.Exec(ctx, `CREATE SCHEMA evil;
		CREATE TABLE evil.order_summary (LIKE readside.order_summary INCLUDING ALL);
		CREATE FUNCTION public.concat_ws(text, text, text) RETURNS text LANGUAGE sql AS $$ SELECT 'evil, ' || $2 $$`)
	require.NoError(t, err)
	c := newClient(t, readside.Config{Pool: pool, Projections: []projectors.Projection{ordersummary.New()}})
	start(t, c)
	token := appendOrders(t, pool, "", 5)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, c.WaitFor(wctx, token, "order_summary"))
	var live, diverted int
	require.NoError(t, pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM readside.order_summary), (SELECT count(*) FROM evil.order_summary)`).
		Scan(&live, &diverted))
	require.Zero(t, diverted, "the projection wrote into evil.order_summary")
	require.Equal(t, 5, live)
}

// A rebuild would move the live tables to <schema>_retired_<name> and drop
// them: the application's views over the read model and foreign keys to it
// would go with them. It is refused, naming them, before it is queued and
// at the switch; the grants on the live table are carried to the copy.
func TestRebuildRefusesDependentsAndKeepsGrants(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	c := newClient(t, readside.Config{Pool: pool, Projections: []projectors.Projection{ordersummary.New()}})
	start(t, c)
	token := appendOrders(t, pool, "", 3)
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	require.NoError(t, c.WaitFor(wctx, token, "order_summary"))
	_, err := pool.Exec(ctx, `CREATE VIEW public.recent_orders AS SELECT order_id, status FROM readside.order_summary;
		CREATE TABLE public.invoices (order_id text REFERENCES readside.order_summary (order_id))`)
	require.NoError(t, err)
	_, err = c.Rebuild(ctx, "order_summary")
	require.ErrorIs(t, err, readside.ErrDependents)
	require.ErrorContains(t, err, "recent_orders")
	require.ErrorContains(t, err, "invoices")

	_, err = pool.Exec(ctx, `DROP VIEW public.recent_orders; DROP TABLE public.invoices;
		GRANT SELECT ON readside.order_summary TO pg_read_all_data`)
	require.NoError(t, err)
	job, err := c.Rebuild(ctx, "order_summary")
	require.NoError(t, err)
	require.NoError(t, c.Wait(wctx, job, nil))
	var grant bool
	require.NoError(t, pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_class c, aclexplode(c.relacl) a
		WHERE c.oid = 'readside.order_summary'::regclass AND a.grantee = 'pg_read_all_data'::regrole AND a.privilege_type = 'SELECT')`).Scan(&grant))
	require.True(t, grant, "the grant on order_summary is carried to the rebuilt table")
}

// Migrate refuses a schema owned by a role it is not a member of: a role
// that created schema readside first (an application role with CREATE on
// the database) could drop readside's tables and plant functions where its
// code looks.
func TestMigrateRefusesSchemaOwnedByAnotherRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, pgtest.NewEmptyDatabaseURL(t))
	_, err := pool.Exec(ctx, `DO $$ BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'review19_app') THEN CREATE ROLE review19_app; END IF; END $$;
		CREATE SCHEMA readside AUTHORIZATION review19_app`)
	require.NoError(t, err)
	c := newClient(t, readside.Config{Pool: pool, Projections: []projectors.Projection{counter{}}})
	_, err = c.Migrate(ctx)
	require.ErrorIs(t, err, migrations.ErrSchemaOwner, "migrated into a schema owned by another (unprivileged) role")
}

// A database migrated by the previous release (readside in public):
// migrating it without Schema "public" is refused, naming public, unless a
// second install is asked for.
func TestMigrateSeesInstallInAnotherSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, pgtest.NewEmptyDatabaseURL(t))
	old := newClient(t, readside.Config{Pool: pool, Schema: "public", Projections: []projectors.Projection{counter{}}})
	_, err := old.Migrate(ctx)
	require.NoError(t, err)
	forgot := newClient(t, readside.Config{Pool: pool, Projections: []projectors.Projection{counter{}}})
	_, err = forgot.Migrate(ctx)
	require.ErrorIs(t, err, migrations.ErrOtherInstall, "a second install beside readside in public, with no warning")
	require.ErrorContains(t, err, "--schema public")
	require.ErrorContains(t, forgot.CheckSchema(ctx), "--schema public")
	beside := newClient(t, readside.Config{Pool: pool, Projections: []projectors.Projection{counter{}}, BesideOtherInstalls: true})
	_, err = beside.Migrate(ctx)
	require.NoError(t, err, "asked for")
}
