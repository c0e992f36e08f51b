package cli_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/cli"
)

// noPasswordFromEnvironment keeps PGPASSWORD and a ~/.pgpass out of what
// pgx parses. Tests that call it are not parallel.
func noPasswordFromEnvironment(t *testing.T) {
	t.Setenv("PGPASSWORD", "")
	t.Setenv("PGPASSFILE", t.TempDir()+"/none")
}

// Every form pgx accepts is redacted as pgx reads it, and what it does not
// accept is not shown at all. secrets are substrings that must not appear.
func TestRedactURL(t *testing.T) {
	noPasswordFromEnvironment(t)
	for _, tc := range []struct {
		name, in, want string
		secrets        []string
	}{
		{"empty", "", "", nil},
		{"no password", cli.DatabaseURLDefault, cli.DatabaseURLDefault, nil},
		{"url", "postgres://root:hunter2@db.example:5432/app?sslmode=require",
			"postgres://root:REDACTED@db.example:5432/app?sslmode=require", []string{"hunter2"}},
		{"postgresql scheme", "postgresql://root:hunter2@db.example/app",
			"postgresql://root:REDACTED@db.example/app", []string{"hunter2"}},
		{"url #", "postgres://postgres:s3cret#G@127.0.0.1:5432/db",
			"postgres://postgres:REDACTED@127.0.0.1:5432/db", []string{"s3cret", "#G"}},
		{"url ?", "postgres://postgres:s3c?ret@127.0.0.1:5432/db",
			"postgres://postgres:REDACTED@127.0.0.1:5432/db", []string{"s3c", "?ret"}},
		{"url [", "postgres://postgres:s3c[ret@127.0.0.1:5432/db",
			"postgres://postgres:REDACTED@127.0.0.1:5432/db", []string{"s3c", "[ret"}},
		{"url ^", "postgres://postgres:s3c^ret@127.0.0.1:5432/db",
			"postgres://postgres:REDACTED@127.0.0.1:5432/db", []string{"s3c"}},
		{"url |", "postgres://postgres:s3c|ret@127.0.0.1:5432/db",
			"postgres://postgres:REDACTED@127.0.0.1:5432/db", []string{"s3c"}},
		{`url "`, `postgres://postgres:s3c"ret@127.0.0.1:5432/db`,
			"postgres://postgres:REDACTED@127.0.0.1:5432/db", []string{"s3c"}},
		{"url second colon", "postgres://postgres:s3c:ret@127.0.0.1:5432/db",
			"postgres://postgres:REDACTED@127.0.0.1:5432/db", []string{"s3c", "ret@"}},
		{"url percent-encoded", "postgres://postgres:s3c%40ret@127.0.0.1/db",
			"postgres://postgres:REDACTED@127.0.0.1/db", []string{"s3c", "ret@"}},
		{"url %zz (pgx refuses it)", "postgres://postgres:s3c%zzret@127.0.0.1:5432/db",
			cli.Unparseable, []string{"s3c", "zzret"}},
		{"url unescaped @", "postgres://postgres:s3c@r3t@127.0.0.1:5432/db",
			cli.Unparseable, []string{"s3c", "r3t"}},
		{"url query password", "postgres://u@h/db?sslmode=disable&password=s3c%23ret&application_name=x",
			"postgres://u@h/db?sslmode=disable&password=REDACTED&application_name=x", []string{"s3c"}},
		{"url query key encoded", "postgres://u@h/db?pass%77ord=s3cret",
			"postgres://u@h/db?pass%77ord=REDACTED", []string{"s3cret"}},
		{"url query without path", "postgres://u@h:5432?password=s3cret",
			"postgres://u@h:5432?password=REDACTED", []string{"s3cret"}},
		{"url sslpassword", "postgres://u@h/db?sslpassword=s3cret",
			"postgres://u@h/db?sslpassword=REDACTED", []string{"s3cret"}},
		{"url userinfo and query", "postgres://u:first@h/db?password=second",
			"postgres://u:REDACTED@h/db?password=REDACTED", []string{"first", "second"}},
		{"url [ in dbname", "postgres://u@h/d[b?password=s3cret",
			"postgres://u@h/d[b?password=REDACTED", []string{"s3cret"}},
		{"url multi-host", "postgres://u:s3cret@h1:5432,h2:5433,[::1]:5434/db?target_session_attrs=any",
			"postgres://u:REDACTED@h1:5432,h2:5433,[::1]:5434/db?target_session_attrs=any", []string{"s3cret"}},
		{"url ipv6", "postgres://u:s3c?ret@[fe80::1]:5432/db",
			"postgres://u:REDACTED@[fe80::1]:5432/db", []string{"s3c"}},
		{"keyword/value", "host=h user=u password=s3cret dbname=d",
			"host=h user=u password=REDACTED dbname=d", []string{"s3cret"}},
		{"keyword/value quoted", `host=h password='a\' D' user=u`,
			"host=h password=REDACTED user=u", []string{"a\\", "' D", " D"}},
		{"keyword/value quoted with spaces", `password = 'two words'  host=h`,
			"password = REDACTED  host=h", []string{"two", "words"}},
		{"keyword/value escaped space", `password=two\ words host=h`,
			"password=REDACTED host=h", []string{"two", "words"}},
		{"keyword/value repeated", "password=first host=h password=second",
			"password=REDACTED host=h password=REDACTED", []string{"first", "second"}},
		{"keyword/value multi-host", "host=h1,h2 port=5432,5433 password=s3c#ret",
			"host=h1,h2 port=5432,5433 password=REDACTED", []string{"s3c"}},
		{"keyword/value sslpassword", "host=h sslpassword='s3 cret'",
			"host=h sslpassword=REDACTED", []string{"s3", "cret"}},
		{"keyword/value empty password", "host=h password=''", "host=h password=''", nil},
		{"keyword/value unterminated", "host=h password='s3cret", cli.Unparseable, []string{"s3cret"}},
		{"keyword/value space in password", "host=h password=hunter 2secret x=y", cli.Unparseable, []string{"hunter", "2secret"}},
		{"not a connection string", "::nope s3cret", cli.Unparseable, []string{"s3cret", "nope"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := cli.RedactURL(tc.in)
			require.Equal(t, tc.want, got)
			for _, s := range tc.secrets {
				require.NotContains(t, got, s)
			}
		})
	}
}

// A redacted string is one pgx reads with the password REDACTED and
// nothing else changed: checked on whatever the fuzzer finds that pgx
// accepts.
func FuzzRedactURL(f *testing.F) {
	for _, s := range []string{
		"postgres://u:s3cret#G@h:5432/db", "postgres://u@h/db?password=x&sslmode=disable",
		"postgresql://u:p@[::1]:1,h2/d?sslpassword=y", `host=h password='a\' D'`, `password=a\ b port=1`,
		"postgres://u:a@b@h/db", "user=u password=p password=q",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		t.Setenv("PGPASSWORD", "")
		t.Setenv("PGPASSFILE", "/nonexistent/readside-fuzz")
		cfg, err := pgconn.ParseConfig(s)
		got := cli.RedactURL(s)
		if err != nil {
			require.Equal(t, cli.Unparseable, got)
			return
		}
		if got == cli.Unparseable {
			return // refused: shows nothing
		}
		red, err := pgconn.ParseConfig(got)
		require.NoError(t, err, "redacted %q as %q", s, got)
		if cfg.Password != "" {
			require.Equal(t, cli.Redacted, red.Password, "redacted %q as %q", s, got)
		}
		require.Equal(t, cfg.Host, red.Host)
		require.Equal(t, cfg.User, red.User)
	})
}

// Connecting fails with a reason that shows neither the password nor what
// might be part of it.
func TestConnectErrorsHidePasswords(t *testing.T) {
	noPasswordFromEnvironment(t)
	for _, tc := range []struct {
		name, url, want string
		secrets         []string
	}{
		{"unescaped @ lands in the host", "postgres://postgres:s3c@r3t@127.0.0.1:1/db?connect_timeout=1",
			`a host name holds "@"`, []string{"s3c", "r3t"}},
		{"unparseable keyword/value", "host=127.0.0.1 port=1 password=hunt3r 2s3cret x=y",
			"pgx does not accept it", []string{"hunt3r", "2s3cret"}},
		{"unparseable url", "postgres://postgres:s3c%zzret@127.0.0.1:1/db",
			"pgx does not accept it", []string{"s3c", "zzret"}},
		{"missing root certificate", "host=127.0.0.1 password=s3cret sslmode=verify-full sslrootcert=/nonexistent/root.crt",
			"open /nonexistent/root.crt: no such file", []string{"s3cret"}},
		{"pool setting", "postgres://u:s3cret@127.0.0.1/db?pool_max_conns=many",
			`parsing "many": invalid syntax`, []string{"s3cret"}},
		{"unreachable", "postgres://postgres:s3c#ret@127.0.0.1:1/db?connect_timeout=1",
			"database at 127.0.0.1:1 unreachable", []string{"s3c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool, err := cli.Connect(context.Background(), tc.url, 1)
			if pool != nil {
				pool.Close()
			}
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
			for _, s := range tc.secrets {
				require.NotContains(t, err.Error(), s)
			}
		})
	}
}
