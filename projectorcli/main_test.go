package projectorcli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/shipped"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := Config{Projections: shipped.All()}.Run(context.Background(), args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func TestBadInvocations(t *testing.T) {
	t.Parallel()
	unreachable := "postgres://nobody@127.0.0.1:1/none?connect_timeout=1"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no command"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"run", "--concurrency", "x"}, "invalid argument"},
		{[]string{"run", "--projections", "nope", "--database-url", unreachable}, `unknown projection "nope"`},
		{[]string{"run", "--log-format", "xml"}, "--log-format"},
		{[]string{"status", "--database-url", unreachable}, "unreachable"},
		{[]string{"migrate", "--database-url", unreachable}, "unreachable"},
		{[]string{"pause"}, "missing argument"},
		{[]string{"pause", "a", "b"}, "unexpected argument"},
		{[]string{"status", "--bogus"}, "unknown flag: --bogus"},
	} {
		_, err := runCmd(t, tc.args...)
		require.ErrorContains(t, err, tc.want, "args %q", tc.args)
	}
}

func TestMigrateStatusPauseResume(t *testing.T) {
	t.Parallel()
	url := pgtest.NewEmptyDatabaseURL(t)

	_, err := runCmd(t, "status", "--database-url", url)
	require.ErrorContains(t, err, "projector migrate", "an unmigrated database is refused")

	out, err := runCmd(t, "migrate", "--database-url", url)
	require.NoError(t, err)
	require.Contains(t, out, "applied 001_event_store")
	out, err = runCmd(t, "migrate", "--database-url", url)
	require.NoError(t, err, "migrate is idempotent")
	require.NotContains(t, out, "applied 001")

	// Register the shipped projections the way a worker does at start.
	pool := pgtest.Pool(t, url)
	_, err = pool.Exec(context.Background(), `INSERT INTO readside.projections (name, segments) VALUES ('order_summary', 2);
		INSERT INTO readside.checkpoints (projection, segment) VALUES ('order_summary', 0), ('order_summary', 1)`)
	require.NoError(t, err)

	out, err = runCmd(t, "status", "--database-url", url)
	require.NoError(t, err)
	require.Contains(t, out, "PROJECTION")
	require.Contains(t, out, "order_summary")

	out, err = runCmd(t, "pause", "order_summary", "--database-url", url)
	require.NoError(t, err)
	require.Contains(t, out, "2 segments now paused")
	_, err = runCmd(t, "pause", "--database-url", url, "nope")
	require.ErrorContains(t, err, "unknown projection")

	out, err = runCmd(t, "status", "--json", "--database-url", url)
	require.NoError(t, err)
	var st statusJSON
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	require.Len(t, st.Segments, 6, "2 segments of order_summary and the 4 projections never run")
	require.Equal(t, "paused", st.Segments[0].Status)
	require.Equal(t, NeverRun, st.Segments[2].Status)

	out, err = runCmd(t, "resume", "--database-url", url, "order_summary")
	require.NoError(t, err)
	require.True(t, strings.Contains(out, "2 segments now running"), out)
}

func TestMigrateRefusesNewerSchema(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)
	_, err := pool.Exec(context.Background(), `INSERT INTO readside.readside_migrations (version, name) VALUES (999, 'from_the_future')`)
	require.NoError(t, err)
	_, err = runCmd(t, "migrate", "--database-url", url)
	require.ErrorContains(t, err, "newer than this binary")
	_, err = runCmd(t, "status", "--database-url", url)
	require.ErrorContains(t, err, "upgrade the binary")
}

func TestOperatorCommandErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)

	_, err := runCmd(t, "reset", "--database-url", url, "nope")
	require.ErrorContains(t, err, `unknown projection "nope"`)
	_, err = runCmd(t, "reset", "--database-url", url, "order_summary")
	require.ErrorContains(t, err, "has a projector run it yet?")
	_, err = runCmd(t, "reset", "--database-url", url, "--to", "garbage", "order_summary")
	require.ErrorContains(t, err, "want TXID/POSITION")
	_, err = runCmd(t, "reset", "--database-url", url, "--to", "1/1", "--to-time", "2026-01-01T00:00:00Z", "order_summary")
	require.ErrorContains(t, err, "give one of")

	require.NoError(t, projectors.Register(ctx, pool, shipped.All()...))
	_, err = runCmd(t, "reset", "--database-url", url, "--to", "9000000000000/1", "order_summary")
	require.ErrorContains(t, err, "cursor beyond the head of the log: 9000000000000/1 is past the last event")
	_, err = runCmd(t, "reset", "--database-url", url, "--to-time", "2100-01-01T00:00:00Z", "order_summary")
	require.ErrorContains(t, err, "no event occurred at or after 2100-01-01T00:00:00Z")
	out, err := runCmd(t, "reset", "--database-url", url, "order_summary")
	require.NoError(t, err)
	require.Contains(t, out, "readside_reset: queued as job")
	out, err = runCmd(t, "reset", "--database-url", url, "order_summary")
	require.NoError(t, err)
	require.Contains(t, out, "already queued", "one reset per projection at a time")

	p, _ := shipped.ByName("order_details")
	require.NoError(t, control.StartRebuild(ctx, pool, p))
	_, err = runCmd(t, "reset", "--database-url", url, "order_details")
	require.ErrorContains(t, err, "rebuild of this projection is in progress")
	_, err = runCmd(t, "rebuild", "--database-url", url, "order_notifications")
	require.ErrorContains(t, err, "no tables to rebuild")

	_, err = runCmd(t, "dead-letters", "retry", "--database-url", url, "--projection", "order_summary", "--all")
	require.ErrorContains(t, err, "no parked dead letters")
	_, err = runCmd(t, "dead-letters", "retry", "--database-url", url, "--all")
	require.ErrorContains(t, err, "--projection is required")
	_, err = runCmd(t, "dead-letters", "frob")
	require.ErrorContains(t, err, "unknown subcommand")
	out, err = runCmd(t, "dead-letters", "list", "--database-url", url)
	require.NoError(t, err)
	require.Contains(t, out, "0 dead letters")
}

// The database password never reaches an error message or a log line.
func TestPasswordNeverPrinted(t *testing.T) {
	t.Parallel()
	for _, url := range []string{
		"postgres://reader:S3cretPassw0rd@127.0.0.1:1/x?connect_timeout=1",
		"postgres://reader:S3cretPassw0rd@127.0.0.1:1/x?sslmode=bogus",
	} {
		for _, cmd := range []string{"status", "migrate", "run"} {
			out, err := runCmd(t, cmd, "--database-url", url, "--startup-timeout", "0s")
			if cmd != "run" {
				out, err = runCmd(t, cmd, "--database-url", url)
			}
			require.Error(t, err)
			require.NotContains(t, err.Error()+out, "S3cretPassw0rd", "%s %s", cmd, url)
		}
	}
}
