package projectorcli

import (
	"context"
	"net/url"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
)

// projector adopt on the Rails seed's schema, readside in a schema of its
// own: dry run, adopt, again (nothing to do), remove.
func TestAdoptCommand(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.NewEmptyDatabaseURL(t)
	app := pgtest.Pool(t, dbURL)
	ddl, err := os.ReadFile("../adopt/testdata/rails_schema.sql")
	require.NoError(t, err)
	_, err = app.Exec(ctx, string(ddl)+`; CREATE SCHEMA readside;
		INSERT INTO events (aggregate_id, aggregate_type, event_type, event_data, version, occurred_at, created_at, updated_at)
		VALUES ('o-1', 'Domain::Orders::Order', 'Domain::Orders::Events::OrderPlaced', '{}', 1, now(), now(), now())`)
	require.NoError(t, err)
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	q := u.Query()
	q.Set("search_path", "readside")
	u.RawQuery = q.Encode()
	rs := u.String()

	_, err = runCmd(t, "adopt", "--table", "events", "--database-url", rs)
	require.ErrorContains(t, err, "projector migrate")
	_, err = runCmd(t, "migrate", "--database-url", rs)
	require.NoError(t, err)

	_, err = runCmd(t, "adopt", "--database-url", rs)
	require.ErrorContains(t, err, "--table is required")
	_, err = runCmd(t, "adopt", "--table", "events", "--columns", "version=nope", "--database-url", rs)
	require.ErrorContains(t, err, `no column "nope" (for version)`)
	_, err = runCmd(t, "adopt", "--table", "events", "--rename", "A::*=B", "--database-url", rs)
	require.ErrorContains(t, err, "prefix rule")

	args := []string{"adopt", "--table", "events", "--rename", "Domain::Orders::Events::*=*,Domain::Orders::Order=Order", "--database-url", rs}
	out, err := runCmd(t, append(args, "--dry-run")...)
	require.NoError(t, err)
	require.Contains(t, out, "CREATE TRIGGER readside_adopted")
	require.Contains(t, out, "-- dry run: nothing changed")
	out, err = runCmd(t, args...)
	require.NoError(t, err)
	require.Contains(t, out, "adopted public.events: 1 rows copied as history")
	out, err = runCmd(t, args...)
	require.NoError(t, err)
	require.Contains(t, out, "already adopted")
	var typ string
	require.NoError(t, app.QueryRow(ctx, `SELECT event_type FROM readside.events`).Scan(&typ))
	require.Equal(t, "OrderPlaced", typ)
	_, err = runCmd(t, "status", "--database-url", rs)
	require.NoError(t, err)

	_, err = runCmd(t, "adopt", "--remove", "--table", "events", "--rename", "x=y", "--database-url", rs)
	require.ErrorContains(t, err, "--remove takes only --table")
	out, err = runCmd(t, "adopt", "--remove", "--table", "events", "--database-url", rs)
	require.NoError(t, err)
	require.Contains(t, out, "removed the adoption of public.events")
	out, err = runCmd(t, "adopt", "--remove", "--table", "events", "--database-url", rs)
	require.NoError(t, err)
	require.Contains(t, out, "not adopted")
}
