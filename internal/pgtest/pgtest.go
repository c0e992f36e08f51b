// Package pgtest gives each test its own PostgreSQL database, cloned from a
// template that is migrated once per schema. The server is the one named by
// TEST_DATABASE_URL or DATABASE_URL, else 127.0.0.1:5432, else a disposable
// cluster started with initdb/pg_ctl for the test binary's lifetime.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/readside/readside/internal/pgtemp"
	"github.com/readside/readside/migrations"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/shipped"
)

var (
	serverOnce sync.Once
	serverURL  string
	serverErr  error
	cluster    *pgtemp.Cluster

	templateOnce sync.Once
	templateName string
	templateErr  error
)

// Main runs the package's tests, checks that no goroutine leaked, and stops
// a disposable cluster if one was started. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if cluster != nil {
		_ = cluster.Stop()
	}
	if code == 0 {
		if err := goleak.Find(IgnoreGoroutines()...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// IgnoreGoroutines lists goroutines that are not ours to stop.
func IgnoreGoroutines() []goleak.Option {
	return []goleak.Option{
		// net/http keeps idle client connections alive past a test.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	}
}

// ServerURL returns a URL with rights to create databases.
func ServerURL(tb testing.TB) string {
	tb.Helper()
	serverOnce.Do(func() { serverURL, serverErr = findServer() })
	if serverErr != nil {
		tb.Fatalf("pgtest: no PostgreSQL server: %v", serverErr)
	}
	return serverURL
}

func findServer() (string, error) {
	if os.Getenv("READSIDE_TEST_DISPOSABLE") != "" {
		return startCluster()
	}
	for _, env := range []string{"TEST_DATABASE_URL", "DATABASE_URL"} {
		if u := os.Getenv(env); u != "" {
			if err := ping(u); err != nil {
				return "", fmt.Errorf("%s is set but unreachable: %w", env, err)
			}
			return u, nil
		}
	}
	local := "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable&connect_timeout=2"
	if ping(local) == nil {
		return local, nil
	}
	return startCluster()
}

// startCluster starts a disposable cluster for this test binary.
func startCluster() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgtemp.Start(ctx)
	if err != nil {
		return "", err
	}
	cluster = c
	return c.URL, nil
}

func ping(u string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.Ping(ctx)
}

// WithDatabase returns rawURL (a postgres:// URL) with its database
// replaced by name.
func WithDatabase(rawURL, name string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		panic(fmt.Sprintf("pgtest: database URL must be a postgres:// URL: %v", err))
	}
	u.Path = "/" + name
	return u.String()
}

func adminExec(ctx context.Context, admin, sql string) error {
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// template migrates a template database once per schema content; test
// binaries running at once share it (an advisory lock guards the build).
func template(tb testing.TB) string {
	tb.Helper()
	admin := ServerURL(tb)
	templateOnce.Do(func() {
		h := sha256.New()
		for _, m := range migrations.All() {
			io.WriteString(h, m.SQL)
		}
		for _, d := range ShippedDDL() {
			io.WriteString(h, d.SQL)
		}
		templateName = "readside_tmpl_" + hex.EncodeToString(h.Sum(nil))[:12]
		templateErr = buildTemplate(admin, templateName)
	})
	if templateErr != nil {
		tb.Fatalf("pgtest: template: %v", templateErr)
	}
	return templateName
}

func buildTemplate(admin, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtext($1))`, name); err != nil {
		return err
	}
	defer conn.Exec(context.Background(), `SELECT pg_advisory_unlock(hashtext($1))`, name) //nolint:errcheck
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	build := name + "_build"
	if _, err := conn.Exec(ctx, `DROP DATABASE IF EXISTS `+build+` WITH (FORCE)`); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `CREATE DATABASE `+build); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, WithDatabase(admin, build))
	if err != nil {
		return err
	}
	_, err = migrations.Migrate(ctx, pool, migrations.Config{Projections: ShippedDDL()})
	pool.Close()
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, `ALTER DATABASE `+build+` RENAME TO `+name)
	return err
}

// ShippedDDL is the shipped projections' tables, which every test
// database has besides readside's own, in schema readside.
func ShippedDDL() []migrations.DDL {
	var ddl []migrations.DDL
	for _, p := range shipped.All() {
		if s, ok := p.(projectors.Schema); ok {
			ddl = append(ddl, migrations.DDL{Projection: p.Spec().Name, SQL: s.Schema()})
		}
	}
	return ddl
}

func randomName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// NewDatabaseURL creates a migrated database for this test, dropped in
// t.Cleanup, and returns its URL. Use it for subprocesses; NewDB for pools.
func NewDatabaseURL(tb testing.TB) string {
	tb.Helper()
	return createDB(tb, template(tb))
}

// NewEmptyDatabaseURL creates an empty (unmigrated) database for this test.
func NewEmptyDatabaseURL(tb testing.TB) string {
	tb.Helper()
	return createDB(tb, "template0")
}

func createDB(tb testing.TB, tmpl string) string {
	tb.Helper()
	admin := ServerURL(tb)
	name := randomName("readside_test_")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		// CREATE DATABASE fails while another session briefly holds the
		// template (another test binary creating its own copy): retry.
		err = adminExec(ctx, admin, fmt.Sprintf(`CREATE DATABASE %s TEMPLATE %s`, name, tmpl))
		if err == nil || !strings.Contains(err.Error(), "being accessed by other users") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		tb.Fatalf("pgtest: create database: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := adminExec(ctx, admin, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			tb.Logf("pgtest: drop database %s: %v", name, err)
		}
	})
	return WithDatabase(admin, name)
}

// NewDB returns a pool on a fresh migrated database, closed and dropped in
// t.Cleanup.
func NewDB(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	return Pool(tb, NewDatabaseURL(tb))
}

// Pool opens a pool on url, closed in t.Cleanup.
func Pool(tb testing.TB, url string) *pgxpool.Pool {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	cfg.MaxConns = 20
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// NewRole creates a role for this test (roles are cluster-wide: the name
// is unique) with the given attributes ("LOGIN", "NOLOGIN", ...), and drops
// it in t.Cleanup, after DROP OWNED BY in each of dbs (the databases where
// it may own objects or hold privileges; call it after creating them, so
// that its cleanup runs first).
func NewRole(tb testing.TB, attrs string, dbs ...*pgxpool.Pool) string {
	tb.Helper()
	name := randomName("readside_role_")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := adminExec(ctx, ServerURL(tb), fmt.Sprintf(`CREATE ROLE %s %s`, name, attrs)); err != nil {
		tb.Fatalf("pgtest: create role: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, db := range dbs {
			if _, err := db.Exec(ctx, `DROP OWNED BY `+name+` CASCADE`); err != nil {
				tb.Logf("pgtest: drop owned by %s: %v", name, err)
			}
		}
		if err := adminExec(ctx, ServerURL(tb), `DROP ROLE IF EXISTS `+name); err != nil {
			tb.Logf("pgtest: drop role %s: %v", name, err)
		}
	})
	return name
}

// AsRole returns url with its user replaced by role (trust authentication,
// as on the test server).
func AsRole(rawURL, role string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		panic(fmt.Sprintf("pgtest: database URL must be a postgres:// URL: %v", err))
	}
	u.User = url.User(role)
	return u.String()
}
