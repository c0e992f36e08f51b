package adopt_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/adopt"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/migrations"
)

// The trigger function adopt installs is SECURITY DEFINER and converts the
// application's columns with ::text. A column whose type the application
// owns (a type named "varchar" passes the check by name; or any type after
// ALTER COLUMN ... TYPE once adopted) brings the application's cast
// function, which then runs with the rights of the role that adopted.
func TestAdoptRunsNoApplicationCastAfterATypeChange(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, pgtest.NewEmptyDatabaseURL(t))
	_, err := pool.Exec(ctx, `
CREATE TABLE public.events (id bigserial PRIMARY KEY, aggregate_id text NOT NULL, aggregate_type text NOT NULL,
  event_type text NOT NULL, event_data jsonb NOT NULL, version int NOT NULL);`)
	require.NoError(t, err)
	_, err = migrations.Migrate(ctx, pool, migrations.Config{})
	require.NoError(t, err)
	_, err = adopt.Adopt(ctx, pool, adopt.Config{Table: "events"}, false)
	require.NoError(t, err)
	// The application (here the same role, for brevity) changes its column
	// to a type of its own with a cast that records who runs it.
	_, err = pool.Exec(ctx, `
CREATE TYPE public.apptype AS (v text);
CREATE TABLE public.cast_ran (who text);
CREATE FUNCTION public.apptype_text(public.apptype) RETURNS text LANGUAGE sql AS
  $$ INSERT INTO public.cast_ran VALUES (current_user); SELECT ($1).v $$;
CREATE CAST (public.apptype AS text) WITH FUNCTION public.apptype_text(public.apptype);
ALTER TABLE public.events ALTER COLUMN aggregate_type TYPE public.apptype USING ROW(aggregate_type);`)
	require.NoError(t, err)
	_, _ = pool.Exec(ctx, `INSERT INTO public.events (aggregate_id, aggregate_type, event_type, event_data, version)
		VALUES ('o1', ROW('Order'), 'OrderPlaced', '{}', 1)`)
	var ran int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM public.cast_ran`).Scan(&ran))
	require.Zero(t, ran, "readside's SECURITY DEFINER trigger ran the application's cast function")
}
