package projectorcli

import (
	"context"
	"os"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
)

// projector adopt on the Rails seed's schema, behind an application that
// already has public.events, public.outbox, public.workers and
// public.checkpoints, with a plain URL (no search_path): migrate creates
// nothing in public; dry run, adopt, again (nothing to do), remove.
func TestAdoptCommand(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.NewEmptyDatabaseURL(t)
	app := pgtest.Pool(t, dbURL)
	ddl, err := os.ReadFile("../adopt/testdata/rails_schema.sql")
	require.NoError(t, err)
	_, err = app.Exec(ctx, string(ddl)+`;
		CREATE TABLE outbox (id bigint PRIMARY KEY, payload text);
		CREATE TABLE workers (id text PRIMARY KEY);
		CREATE TABLE checkpoints (name text PRIMARY KEY, position bigint);
		INSERT INTO events (aggregate_id, aggregate_type, event_type, event_data, version, occurred_at, created_at, updated_at)
		VALUES ('o-1', 'Domain::Orders::Order', 'Domain::Orders::Events::OrderPlaced', '{}', 1, now(), now(), now())`)
	require.NoError(t, err)
	publicObjects := func() []string {
		var names []string
		require.NoError(t, pgxscan(ctx, app, &names, `SELECT kind || ' ' || name FROM (
			SELECT 'relation' AS kind, c.relname::text AS name FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
			UNION ALL SELECT 'function', p.proname::text FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
			UNION ALL SELECT 'type', t.typname::text FROM pg_type t WHERE t.typnamespace = 'public'::regnamespace
			UNION ALL SELECT 'trigger', g.tgname::text FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
			    WHERE c.relnamespace = 'public'::regnamespace AND NOT g.tgisinternal) o ORDER BY 1`))
		return names
	}
	before := publicObjects()
	rs := dbURL

	_, err = runCmd(t, "adopt", "--table", "events", "--database-url", rs)
	require.ErrorContains(t, err, "projector migrate")
	_, err = runCmd(t, "migrate", "--database-url", rs)
	require.NoError(t, err)
	require.Equal(t, before, publicObjects(), "migrate created nothing in public")

	_, err = runCmd(t, "adopt", "--database-url", rs)
	require.ErrorContains(t, err, "--table is required")
	_, err = runCmd(t, "adopt", "--table", "events", "--columns", "version=nope", "--database-url", rs)
	require.ErrorContains(t, err, `no column "nope" (for version)`)
	_, err = runCmd(t, "adopt", "--table", "events", "--rename", "A::*=B", "--database-url", rs)
	require.ErrorContains(t, err, "prefix rule")

	args := []string{"adopt", "--table", "events", "--rename", "Domain::Orders::Events::*=*,Domain::Orders::Order=Order", "--database-url", rs}
	out, err := runCmd(t, append(args, "--dry-run")...)
	require.NoError(t, err)
	require.Contains(t, out, "CREATE OR REPLACE TRIGGER readside_adopted")
	require.Contains(t, out, "-- dry run: nothing changed")
	out, err = runCmd(t, args...)
	require.NoError(t, err)
	require.Contains(t, out, "adopted public.events: 1 rows copied as history")
	require.Equal(t, slices.Sorted(slices.Values(append(slices.Clone(before), "trigger readside_adopted", "trigger readside_adopted_delete",
		"trigger readside_adopted_truncate", "trigger readside_adopted_update"))), publicObjects(),
		"adopt puts only its readside_* triggers in public (their functions are in readside's schema)")
	out, err = runCmd(t, args...)
	require.NoError(t, err)
	require.Contains(t, out, "already adopted")
	var typ string
	require.NoError(t, app.QueryRow(ctx, `SELECT event_type FROM readside.events`).Scan(&typ))
	require.Equal(t, "OrderPlaced", typ)
	_, err = app.Exec(ctx, `UPDATE events SET updated_at = now()`)
	require.NoError(t, err)
	out, err = runCmd(t, "status", "--database-url", rs)
	require.NoError(t, err)
	require.Contains(t, out, "adopted table public.events: 1 rows of history copied; not mirrored in readside's log: 1 rows updated, 0 deleted, 0 truncates")

	_, err = runCmd(t, "adopt", "--remove", "--table", "events", "--rename", "x=y", "--database-url", rs)
	require.ErrorContains(t, err, "--remove takes only --table")
	out, err = runCmd(t, "adopt", "--remove", "--table", "events", "--database-url", rs)
	require.NoError(t, err)
	require.Contains(t, out, "removed the adoption of public.events")
	out, err = runCmd(t, "adopt", "--remove", "--table", "events", "--database-url", rs)
	require.NoError(t, err)
	require.Contains(t, out, "not adopted")
}

func pgxscan(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, out *[]string, sql string) error {
	rows, err := q.Query(ctx, sql)
	if err != nil {
		return err
	}
	*out, err = pgx.CollectRows(rows, pgx.RowTo[string])
	return err
}

// The stream-id layout of issue 21, adopted with the --column form: one
// column holds "Type-id", split by expressions PostgreSQL checks. --dry-run
// checks the rows first and names one that does not fit.
func TestAdoptCommandColumnExpressions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.NewDatabaseURL(t)
	app := pgtest.Pool(t, dbURL)
	ddl, err := os.ReadFile("../adopt/testdata/stream_schema.sql")
	require.NoError(t, err)
	_, err = app.Exec(ctx, string(ddl)+`;
		INSERT INTO app_events (stream, stream_version, type, body) VALUES
		('Order-6f1c2b3a-0000-4000-8000-000000000001', 1, 'OrderPlaced', '{"order_id":"6f1c2b3a-0000-4000-8000-000000000001"}'),
		('Order-6f1c2b3a-0000-4000-8000-000000000001', 2, 'OrderConfirmed', '{}'),
		('Order-6f1c2b3a-0000-4000-8000-000000000002', 0, 'OrderPlaced', '{}')`)
	require.NoError(t, err)
	args := []string{"adopt", "--table", "app_events",
		"--column", "aggregate_type=split_part(stream, '-', 1)",
		"--column", "aggregate_id=substr(stream, strpos(stream, '-') + 1)",
		"--column", "id=seq", "--column", "version=stream_version", "--column", "event_type=type", "--column", "event_data=body",
		"--database-url", dbURL}

	_, err = runCmd(t, append(args, "--dry-run")...)
	require.ErrorContains(t, err, `row id 3: column "stream_version" (for version) is 0`)
	_, err = app.Exec(ctx, `UPDATE app_events SET stream_version = 1 WHERE seq = 3`)
	require.NoError(t, err)
	out, err := runCmd(t, append(args, "--dry-run")...)
	require.NoError(t, err)
	require.Contains(t, out, "-- 3 rows of public.app_events fit readside's rules")
	require.Contains(t, out, `split_part(stream, '-'::text, 1)`)

	out, err = runCmd(t, append(args, "--chunk-rows", "1")...)
	require.NoError(t, err)
	require.Contains(t, out, "copying the history of app_events: 100%")
	require.Contains(t, out, "adopted public.app_events: 3 rows copied as history")
	_, err = app.Exec(ctx, `INSERT INTO app_events (stream, stream_version, type, body) VALUES ('Order-6f1c2b3a-0000-4000-8000-000000000002', 2, 'OrderCancelled', '{}')`)
	require.NoError(t, err)
	var got []string
	require.NoError(t, pgxscan(ctx, app, &got, `SELECT aggregate_type || ' ' || aggregate_id || ' v' || version || ' ' || event_type FROM readside.events ORDER BY txid, id`))
	require.Equal(t, []string{
		"Order 6f1c2b3a-0000-4000-8000-000000000001 v1 OrderPlaced", "Order 6f1c2b3a-0000-4000-8000-000000000001 v2 OrderConfirmed",
		"Order 6f1c2b3a-0000-4000-8000-000000000002 v1 OrderPlaced", "Order 6f1c2b3a-0000-4000-8000-000000000002 v2 OrderCancelled",
	}, got)

	_, err = runCmd(t, "adopt", "--table", "app_events", "--column", "version=stream_version", "--columns", "version=stream_version", "--database-url", dbURL)
	require.ErrorContains(t, err, "version given twice")
	_, err = runCmd(t, "adopt", "--table", "app_events", "--column", "colour=x", "--database-url", dbURL)
	require.ErrorContains(t, err, `unknown key "colour"`)
}
