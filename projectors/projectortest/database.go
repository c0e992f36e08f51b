package projectortest

import (
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/internal/pgtest"
)

// NewDB returns a pool on a fresh database migrated to readside's schema
// (a clone of a template migrated once), closed and dropped in t.Cleanup.
// The server is the one named by TEST_DATABASE_URL or DATABASE_URL, else
// 127.0.0.1:5432, else a disposable cluster (initdb/pg_ctl) started for the
// test binary. Pass it to Run; create your projection's tables on it.
func NewDB(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	return pgtest.NewDB(tb)
}

// NewDatabaseURL is NewDB for a test that starts processes (your projector
// binary): it returns the fresh database's URL.
func NewDatabaseURL(tb testing.TB) string {
	tb.Helper()
	return pgtest.NewDatabaseURL(tb)
}

// NewEmptyDatabaseURL returns the URL of a fresh database that is not
// migrated (to test `migrate` itself), dropped in t.Cleanup.
func NewEmptyDatabaseURL(tb testing.TB) string {
	tb.Helper()
	return pgtest.NewEmptyDatabaseURL(tb)
}

// Main runs a package's tests: call it from TestMain. It stops a disposable
// cluster if one was started and fails the run if a goroutine leaked.
func Main(m *testing.M) { pgtest.Main(m) }

// Pool opens a pool on url (from NewDatabaseURL), closed in t.Cleanup.
func Pool(tb testing.TB, url string) *pgxpool.Pool {
	tb.Helper()
	return pgtest.Pool(tb, url)
}
