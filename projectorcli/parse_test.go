package projectorcli

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/migrations"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/projectortest"
	"github.com/readside/readside/projectors/shipped"
)

const unreachable = "postgres://nobody@127.0.0.1:1/none?connect_timeout=1"

// run3 runs args and returns stdout, stderr and the error separately.
func run3(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := Config{Projections: shipped.All()}.Run(context.Background(), args, &out, &errOut)
	return out.String(), errOut.String(), err
}

// Flags go before or after the arguments: an unreachable database proves
// that parsing got past the flags and the name.
func TestParseFlagsAnywhere(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"reset", "order_summary", "--to-start", "--wait", "--database-url", unreachable},
		{"reset", "--to-start", "--wait", "order_summary", "--database-url", unreachable},
		{"reset", "--database-url", unreachable, "order_summary", "--to", "1/1"},
		{"reset", "order_summary", "--wait", "--timeout", "1m", "--database-url=" + unreachable},
		{"rebuild", "order_summary", "--wait", "--database-url", unreachable},
		{"rebuild", "--wait", "order_summary", "--database-url", unreachable},
		{"pause", "order_summary", "--database-url", unreachable},
		{"resume", "--database-url", unreachable, "order_summary"},
		{"dead-letters", "show", "42", "--json", "--database-url", unreachable},
		{"dead-letters", "list", "--status", "all", "--json", "--database-url", unreachable},
		{"dead-letters", "retry", "--projection", "order_summary", "--all", "--database-url", unreachable},
		{"dead-letters", "discard", "--ids", "1,2", "--database-url", unreachable},
		{"migrate", "--dry-run", "--database-url", unreachable},
		{"migrate", "status", "--json", "--database-url", unreachable},
		{"status", "--json", "--database-url", unreachable},
	} {
		_, _, err := run3(t, args...)
		require.ErrorContains(t, err, "unreachable", "args %q", args)
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no command given"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"reset"}, "projector reset: missing argument NAME"},
		{[]string{"reset", "a", "b"}, `projector reset: unexpected argument "b"`},
		{[]string{"reset", "nope", "--database-url", unreachable}, `unknown projection "nope" (this binary carries: order_details, order_notifications`},
		{[]string{"reset", "order_summary", "--to", "garbage"}, "want TXID/POSITION"},
		{[]string{"reset", "order_summary", "--to", "1/1", "--to-start"}, "give one of --to-start, --to, --to-time"},
		{[]string{"reset", "order_summary", "--wait", "--timeout", "soon"}, `invalid argument "soon" for "--timeout"`},
		{[]string{"rebuild", "order_notifications"}, "no tables to rebuild"},
		{[]string{"rebuild"}, "missing argument NAME"},
		{[]string{"dead-letters"}, "projector dead-letters: missing subcommand (want list, show, retry or discard"},
		{[]string{"dead-letters", "frob"}, `projector dead-letters: unknown subcommand "frob"`},
		{[]string{"dead-letters", "list", "--status", "bogus"}, `invalid argument "bogus" for "--status" flag: want one of parked, retried, discarded, all`},
		{[]string{"dead-letters", "list", "--ids", "1"}, "unknown flag: --ids"},
		{[]string{"dead-letters", "show"}, "missing argument ID"},
		{[]string{"dead-letters", "show", "x"}, `bad id "x"`},
		{[]string{"dead-letters", "show", "1", "--projection", "a"}, "unknown flag: --projection"},
		{[]string{"dead-letters", "retry", "--all"}, "--projection is required"},
		{[]string{"dead-letters", "retry", "--projection", "order_summary"}, "give --ids or --all"},
		{[]string{"dead-letters", "discard", "--all", "--ids", "1"}, "give --ids or --all"},
		{[]string{"run", "--log-level", "loud"}, `invalid argument "loud" for "--log-level"`},
		{[]string{"run", "--log-format", "xml"}, `invalid argument "xml" for "--log-format"`},
		{[]string{"run", "extra"}, `unexpected argument "extra"`},
		{[]string{"run", "--max-conns", "3", "--database-url", unreachable}, "--max-conns 3 is too small for --concurrency 2: it needs at least 4"},
		{[]string{"run", "--pgbouncer=maybe"}, `invalid argument "maybe" for "--pgbouncer"`},
		{[]string{"migrate", "extra"}, `unexpected argument "extra"`},
		{[]string{"version", "extra"}, `unexpected argument "extra"`},
	} {
		_, _, err := run3(t, tc.args...)
		require.ErrorContains(t, err, tc.want, "args %q", tc.args)
		require.NotContains(t, err.Error(), "\n", "one line: args %q", tc.args)
	}
}

// -h and --help work on every command and subcommand, print to stdout,
// and show the arguments in the usage line.
func TestHelpEverywhere(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want []string
		not  []string
	}{
		{[]string{"-h"}, []string{"Usage:", "projector [command]", "reset", "rebuild", "dead-letters", "migrate", "version", "completion", "order_summary"}, nil},
		{[]string{"help"}, []string{"Usage:"}, nil},
		{[]string{"reset", "-h"}, []string{"projector reset NAME [flags]", "--to-start", "--wait", "--timeout", "--database-url"}, nil},
		{[]string{"reset", "order_summary", "--help"}, []string{"projector reset NAME [flags]"}, nil},
		{[]string{"rebuild", "--help"}, []string{"projector rebuild NAME [flags]", "--wait"}, nil},
		{[]string{"pause", "-h"}, []string{"projector pause NAME [flags]"}, nil},
		{[]string{"resume", "-h"}, []string{"projector resume NAME [flags]"}, nil},
		{[]string{"dead-letters", "-h"}, []string{"list", "show", "retry", "discard"}, nil},
		{[]string{"dead-letters", "list", "-h"}, []string{"--status", "--json", "--projection", "parked, retried, discarded, all"}, []string{"--ids"}},
		{[]string{"dead-letters", "show", "-h"}, []string{"projector dead-letters show ID [flags]", "--json"}, []string{"--projection", "--ids"}},
		{[]string{"dead-letters", "retry", "-h"}, []string{"--projection", "--ids", "--all"}, nil},
		{[]string{"dead-letters", "discard", "-h"}, []string{"--ids", "--all"}, nil},
		{[]string{"migrate", "-h"}, []string{"--dry-run", "status"}, nil},
		{[]string{"migrate", "status", "-h"}, []string{"--json"}, nil},
		{[]string{"status", "-h"}, []string{"--json"}, nil},
		{[]string{"run", "-h"}, []string{"--projections", "PROJECTOR_CONCURRENCY", "--riverui-token"}, nil},
		{[]string{"version", "-h"}, []string{"projector version"}, nil},
		{[]string{"completion", "-h"}, []string{"bash", "zsh", "fish"}, nil},
	} {
		out, _, err := run3(t, tc.args...)
		require.NoError(t, err, "args %q", tc.args)
		for _, w := range tc.want {
			require.Contains(t, out, w, "args %q", tc.args)
		}
		for _, w := range tc.not {
			require.NotContains(t, out, w, "args %q", tc.args)
		}
	}
}

func TestVersionAndCompletion(t *testing.T) {
	t.Parallel()
	out, _, err := run3(t, "version")
	require.NoError(t, err)
	require.Regexp(t, `^projector \S+ \S+.*, revision \S+, go1\.`, out)
	out2, _, err := run3(t, "--version")
	require.NoError(t, err)
	require.Equal(t, out, out2)

	out, _, err = run3(t, "completion", "bash")
	require.NoError(t, err)
	require.Contains(t, out, "__start_projector")
	out, _, err = run3(t, "__complete", "reset", "")
	require.NoError(t, err)
	require.Contains(t, out, "order_summary\n")
	out, _, err = run3(t, "__complete", "dead-letters", "list", "--status", "")
	require.NoError(t, err)
	require.Contains(t, out, "retried\n")
}

// Defaults taken from the environment are shown redacted. Not parallel:
// it sets the environment.
func TestHelpRedactsSecrets(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://root:hunter2@db.example:5432/app?sslmode=require")
	t.Setenv("PROJECTOR_RIVERUI_TOKEN", "tok-0123456789abcdef-secret")
	for _, args := range [][]string{{"run", "-h"}, {"status", "-h"}, {"reset", "-h"}, {"dead-letters", "list", "-h"}, {"migrate", "-h"}} {
		out, _, err := run3(t, args...)
		require.NoError(t, err)
		require.NotContains(t, out, "hunter2", "args %q", args)
		require.NotContains(t, out, "0123456789abcdef", "args %q", args)
		require.Contains(t, out, "root:REDACTED@db.example", "args %q", args)
	}
	out, _, _ := run3(t, "run", "-h")
	require.Regexp(t, `--riverui-token string +token guarding /riverui/`, out)
	require.Contains(t, out, `(default "REDACTED")`)
}

// Passwords that Go's net/url rejects but pgx accepts, or that pgx reads
// differently, are redacted as pgx reads them; what pgx cannot parse is not
// shown. Not parallel: it sets the environment.
func TestHelpRedactsPasswordsAsPgxReadsThem(t *testing.T) {
	for _, tc := range []struct {
		url, shown string
		secrets    []string
	}{
		{"postgres://postgres:s3cret#G@127.0.0.1:5432/db", "postgres://postgres:REDACTED@127.0.0.1:5432/db", []string{"s3cret", "#G"}},
		{"postgres://postgres:s3c?r[e^t|\"@127.0.0.1:5432/db", "postgres://postgres:REDACTED@127.0.0.1:5432/db", []string{"s3c", "r[e"}},
		{"postgres://postgres:s3c%zzr3t@127.0.0.1:5432/db", "REDACTED (unparseable)", []string{"s3c", "r3t"}},
		{"postgres://postgres:s3c@r3t@127.0.0.1:5432/db", "REDACTED (unparseable)", []string{"s3c", "r3t"}},
		{`host=127.0.0.1 password='a\' D' dbname=db`, "host=127.0.0.1 password=REDACTED dbname=db", []string{"a\\", "' D"}},
		{"postgres://u@h1,h2:5433/db?password=s3cret", "postgres://u@h1,h2:5433/db?password=REDACTED", []string{"s3cret"}},
	} {
		t.Setenv("DATABASE_URL", tc.url)
		out, _, err := run3(t, "status", "-h")
		require.NoError(t, err)
		require.Contains(t, out, `(default "`+tc.shown+`")`, tc.url)
		for _, s := range tc.secrets {
			require.NotContains(t, out, s, tc.url)
		}
	}
}

func TestEnvDefaultsMalformed(t *testing.T) {
	t.Setenv("PROJECTOR_CONCURRENCY", "lots")
	_, _, err := run3(t, "run")
	require.ErrorContains(t, err, `PROJECTOR_CONCURRENCY="lots": not an integer`)
	out, _, err := run3(t, "run", "-h")
	require.NoError(t, err, "help still works")
	require.Contains(t, out, "--concurrency")
}

func TestJSONOutputs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)

	out, _, err := run3(t, "dead-letters", "list", "--json", "--database-url", url)
	require.NoError(t, err)
	require.JSONEq(t, "[]", out)

	require.NoError(t, projectors.Register(ctx, pool, shipped.All()...))
	var eventID int64
	require.NoError(t, pool.QueryRow(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, metadata, schema_version, version)
		VALUES ('Order', 'a1', 'OrderPlaced', '{"x":1}', '{"user_id":"u"}', 1, 1) RETURNING id`).Scan(&eventID))
	var dlID int64
	require.NoError(t, pool.QueryRow(ctx, `INSERT INTO readside.dead_letters (projection, segment, event_id, txid, aggregate_type, aggregate_id, event_type, version, reason, error, attempts)
		SELECT 'order_summary', 0, id, txid, 'Order', 'a1', 'OrderPlaced', 1, 'failed', 'boom', 3 FROM readside.events WHERE id = $1 RETURNING id`, eventID).Scan(&dlID))

	out, _, err = run3(t, "dead-letters", "list", "--json", "--projection", "order_summary", "--database-url", url)
	require.NoError(t, err)
	var list []deadLetterJSON
	require.NoError(t, json.Unmarshal([]byte(out), &list), out)
	require.Len(t, list, 1)
	require.Equal(t, "boom", list[0].Error)

	out, _, err = run3(t, "dead-letters", "show", "--json", jsonID(dlID), "--database-url", url)
	require.NoError(t, err)
	var one deadLetterJSON
	require.NoError(t, json.Unmarshal([]byte(out), &one), out)
	require.Equal(t, dlID, one.ID)
	require.JSONEq(t, `{"x":1}`, string(one.Data))

	_, _, err = run3(t, "dead-letters", "list", "--projection", "nope", "--database-url", url)
	require.ErrorContains(t, err, `unknown projection "nope"`)
	// A projection registered in the database by another binary is accepted.
	_, err = pool.Exec(ctx, `INSERT INTO readside.projections (name, segments) VALUES ('someone_elses', 1)`)
	require.NoError(t, err)
	out, _, err = run3(t, "dead-letters", "list", "--projection", "someone_elses", "--database-url", url)
	require.NoError(t, err)
	require.Contains(t, out, "0 dead letters")

	out, _, err = run3(t, "migrate", "status", "--json", "--database-url", url)
	require.NoError(t, err)
	var st migrations.SchemaStatus
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	require.Equal(t, migrations.Latest(), st.Version)
	require.Len(t, st.Migrations, migrations.Latest())
	require.NotNil(t, st.Migrations[0].AppliedAt)
	require.Zero(t, st.RiverPending)
}

func jsonID(id int64) string { b, _ := json.Marshal(id); return string(b) }

func TestMigrateDryRunAndStatus(t *testing.T) {
	t.Parallel()
	url := pgtest.NewEmptyDatabaseURL(t)
	out, _, err := run3(t, "migrate", "--dry-run", "--database-url", url)
	require.NoError(t, err)
	require.Contains(t, out, "-- readside migration 001_event_store")
	require.Contains(t, out, "CREATE TABLE")
	require.Contains(t, out, "-- River migration 001_")
	require.Contains(t, out, "nothing applied (dry run)")

	out, _, err = run3(t, "migrate", "status", "--database-url", url)
	require.NoError(t, err)
	require.Regexp(t, `001 +event_store +pending`, out)
	require.Contains(t, out, "database at version 0")

	_, _, err = run3(t, "status", "--database-url", url)
	require.ErrorContains(t, err, "projector migrate", "nothing was applied by the dry run")

	_, _, err = run3(t, "migrate", "--database-url", url)
	require.NoError(t, err)
	out, _, err = run3(t, "migrate", "--dry-run", "--database-url", url)
	require.NoError(t, err)
	require.Contains(t, out, "-- 0 River and 0 readside migrations pending")
}

// A projection the binary carries but no worker ever ran is listed, with
// the whole log as its lag.
func TestStatusListsNeverRun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)
	p, _ := shipped.ByName("order_summary")
	require.NoError(t, projectors.Register(ctx, pool, p))
	_, err := projectortest.Lifecycles{Orders: 5}.Generate(ctx, pool)
	require.NoError(t, err)
	var events int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.outbox`).Scan(&events))

	out, _, err := run3(t, "status", "--json", "--database-url", url)
	require.NoError(t, err)
	var st statusJSON
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	byName := map[string]segmentJSON{}
	for _, s := range st.Segments {
		byName[s.Projection] = s
	}
	require.Equal(t, "running", byName["order_summary"].Status)
	for _, name := range []string{"order_details", "products", "order_statistics", "order_notifications"} {
		require.Equal(t, NeverRun, byName[name].Status, name)
		require.Equal(t, events, byName[name].LagEvents, name)
		require.Positive(t, byName[name].LagSeconds, name)
	}
	out, _, err = run3(t, "status", "--database-url", url)
	require.NoError(t, err)
	require.Regexp(t, `order_details +0 +never_run +-`, out)
	out, _, err = run3(t, "status", "order_summary", "--database-url", url)
	require.NoError(t, err)
	require.Contains(t, out, "order_summary")
	require.NotContains(t, out, "order_details", "only the projection named")
}

// The README's connection budget (Behind PgBouncer) is this arithmetic.
func TestConnBudget(t *testing.T) {
	t.Parallel()
	all := newConnBudget(projectors.ConcurrencyDefault, sideEffectWorkers(shipped.All()), false)
	require.Equal(t, connBudget{Worker: 3, Control: 8, Metrics: 2, Listen: 2}, all)
	require.Equal(t, 13, all.Pool())
	require.Equal(t, 12, newConnBudget(1, 4, false).Pool())
	require.Zero(t, newConnBudget(4, 4, true).Listen)
	for _, tc := range []struct{ maxConns, want int }{{0, 13}, {6, 6}, {40, 40}} {
		got, err := poolSize(tc.maxConns, 4, all)
		require.NoError(t, err)
		require.Equal(t, tc.want, got)
	}
	_, err := poolSize(5, 4, all)
	require.ErrorContains(t, err, "needs at least 6")
}
