package dbschema_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// statements records the SQL a pool sends.
type statements struct {
	mu  sync.Mutex
	sql []string
}

func (s *statements) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	s.mu.Lock()
	s.sql = append(s.sql, d.SQL)
	s.mu.Unlock()
	return ctx
}

func (s *statements) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (s *statements) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	s.mu.Lock()
	for _, q := range d.Batch.QueuedQueries {
		s.sql = append(s.sql, q.SQL)
	}
	s.mu.Unlock()
	return ctx
}

func (s *statements) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (s *statements) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// settingsReads counts the statements that read pg_settings since the last
// call.
func (s *statements) settingsReads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, q := range s.sql {
		if strings.Contains(q, "pg_settings") {
			n++
		}
	}
	s.sql = nil
	return n
}

// A projection's search_path ends with the session's default (the
// database's setting), never a SET another client left on the pooled
// connection; the connection reads that default once (pg_settings costs
// 0.7 ms a call) and every later setting, batched or not, is the same.
func TestProjectionPathIsTheSessionDefault(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	admin := pgtest.Pool(t, url)
	_, err := admin.Exec(ctx, `CREATE SCHEMA app; DO $$ BEGIN
		EXECUTE format('ALTER DATABASE %I SET search_path = app, public', current_database()); END $$`)
	require.NoError(t, err)
	admin.Close()

	open := func(params map[string]string) (*pgxpool.Pool, *statements) {
		cfg, err := pgxpool.ParseConfig(url)
		require.NoError(t, err)
		cfg.MaxConns = 1
		for k, v := range params {
			cfg.ConnConfig.RuntimeParams[k] = v
		}
		rec := &statements{}
		cfg.ConnConfig.Tracer = rec
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		require.NoError(t, err)
		t.Cleanup(pool.Close)
		return pool, rec
	}
	pool, rec := open(nil)
	// Another client's session-level SET on the one connection.
	_, err = pool.Exec(ctx, `SET search_path = hostile`)
	require.NoError(t, err)

	path := func(batched bool, first string) string {
		t.Helper()
		var tx pgx.Tx
		if batched {
			c, err := pool.Acquire(ctx)
			require.NoError(t, err)
			b := &pgx.Batch{}
			b.Queue(`SELECT 1`)
			var res pgx.BatchResults
			tx, res = dbschema.Default.BeginBatch(ctx, c, b, true, first)
			_, err = res.Exec()
			require.NoError(t, err)
			require.NoError(t, dbschema.ReadProjection(res, tx))
			require.NoError(t, res.Close())
		} else {
			var err error
			tx, err = dbschema.Default.Pool(pool).Begin(ctx)
			require.NoError(t, err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		ptx, err := dbschema.Projection(ctx, tx, first)
		require.NoError(t, err)
		var got string
		require.NoError(t, ptx.QueryRow(ctx, `SELECT current_setting('search_path')`).Scan(&got))
		return got
	}
	const want = `pg_catalog, "readside", app, public, pg_temp`
	require.Equal(t, want, path(false, ""))
	require.Equal(t, 1, rec.settingsReads(), "the first setting on a connection reads its default")
	for _, batched := range []bool{false, true, false, true} {
		require.Equal(t, want, path(batched, ""), "batched %v", batched)
		require.Equal(t, `pg_catalog, "readside_rebuild_x", "readside", app, public, pg_temp`, path(batched, "readside_rebuild_x"))
	}
	require.Zero(t, rec.settingsReads(), "a connection reads its default once")

	// A batch is the first to set it on a new connection; an empty
	// default (here the client's startup setting) adds nothing.
	pool, rec = open(map[string]string{"search_path": ""})
	require.Equal(t, `pg_catalog, "readside", pg_temp`, path(true, ""))
	require.Equal(t, 1, rec.settingsReads())
	require.Equal(t, `pg_catalog, "readside", pg_temp`, path(false, ""))
	require.Equal(t, `pg_catalog, "readside", pg_temp`, path(true, ""))
	require.Zero(t, rec.settingsReads())
}

// BeginBatch sends BEGIN, readside's search_path, the caller's statements
// and a projection's search_path in one round trip: handing the
// transaction to the projection then sends nothing more, and readside's
// next statement on it pins readside's own search_path again rather than
// run under the projection's (which ends with the database's default
// path, where an application's function could beat pg_catalog's). The
// transaction gives its connection back when it ends, whether it commits,
// rolls back or failed in its first batch.
func TestBeginBatch(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.MaxConns = 1
	rec := &statements{}
	cfg.ConnConfig.Tracer = rec
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	taken := func() {
		rec.mu.Lock()
		rec.sql = nil
		rec.mu.Unlock()
	}
	begin := func(sql string) (pgx.Tx, pgx.BatchResults) {
		c, err := pool.Acquire(ctx)
		require.NoError(t, err)
		b := &pgx.Batch{}
		b.Queue(sql)
		return dbschema.Default.BeginBatch(ctx, c, b, true, "")
	}

	for _, commit := range []bool{true, false} {
		tx, res := begin(`SELECT pg_catalog.txid_current_if_assigned()`)
		// (A failed check must not leave the pool's one connection held.)
		t.Cleanup(func() { _ = tx.Rollback(ctx) })
		_, err = res.Exec()
		require.NoError(t, err)
		require.NoError(t, dbschema.ReadProjection(res, tx))
		require.NoError(t, res.Close())
		taken()

		ptx, err := dbschema.Projection(ctx, tx, "")
		require.NoError(t, err)
		rec.mu.Lock()
		sent := rec.sql
		rec.mu.Unlock()
		require.Empty(t, sent, "the setting is in place: nothing is sent to hand the projection its transaction")
		var got string
		require.NoError(t, ptx.QueryRow(ctx, `SELECT current_setting('search_path')`).Scan(&got))
		require.Equal(t, `pg_catalog, "readside", "$user", public, pg_temp`, got)
		var inTx bool
		require.NoError(t, ptx.QueryRow(ctx, `SELECT pg_catalog.now() = pg_catalog.statement_timestamp()`).Scan(&inTx))
		require.False(t, inTx, "the batch began a transaction that is still open")

		require.NoError(t, tx.QueryRow(ctx, `SELECT current_setting('search_path')`).Scan(&got))
		require.Equal(t, `pg_catalog, "readside", pg_temp`, got, "readside's next statement pins its own path")
		if commit {
			require.NoError(t, tx.Commit(ctx))
		} else {
			require.NoError(t, tx.Rollback(ctx))
		}
		require.ErrorIs(t, tx.Rollback(ctx), pgx.ErrTxClosed)
		require.EqualValues(t, 0, pool.Stat().AcquiredConns(), "the connection went back to the pool")
	}

	// Settings go with readside's search_path, for the transaction alone.
	const both = `SELECT current_setting('lock_timeout') || '/' || current_setting('application_name')`
	var before string
	require.NoError(t, pool.QueryRow(ctx, both).Scan(&before))
	c, err := pool.Acquire(ctx)
	require.NoError(t, err)
	b := &pgx.Batch{}
	b.Queue(both)
	tx, res := dbschema.Default.BeginBatch(ctx, c, b, false, "",
		dbschema.Setting{Name: "lock_timeout", Value: "1234ms"}, dbschema.Setting{Name: "application_name", Value: "it's set"})
	t.Cleanup(func() { _ = tx.Rollback(ctx) }) // (before the pool's Close, which would wait for it)
	var set string
	require.NoError(t, res.QueryRow().Scan(&set))
	require.NoError(t, res.Close())
	require.Equal(t, "1234ms/it's set", set)
	require.NoError(t, tx.QueryRow(ctx, `SELECT current_setting('search_path')`).Scan(&set))
	require.Equal(t, `pg_catalog, "readside", pg_temp`, set)
	require.NoError(t, tx.Commit(ctx))
	require.NoError(t, pool.QueryRow(ctx, both).Scan(&set))
	require.Equal(t, before, set, "the settings were the transaction's")

	// A setting the server refuses: ReadBegin gives its error as it is,
	// before the batch's first result, and the connection goes back.
	c, err = pool.Acquire(ctx)
	require.NoError(t, err)
	b = &pgx.Batch{}
	b.Queue(`SELECT 1`)
	tx, res = dbschema.Default.BeginBatch(ctx, c, b, false, "", dbschema.Setting{Name: "idle_in_transaction_session_timeout", Value: "99999999999"})
	var pgErr *pgconn.PgError
	require.ErrorAs(t, dbschema.ReadBegin(res), &pgErr)
	require.Equal(t, "22023", pgErr.Code)
	require.Error(t, res.Close())
	_ = tx.Rollback(ctx)
	require.Eventually(t, func() bool { return pool.Stat().AcquiredConns() == 0 }, 5*time.Second, 10*time.Millisecond)

	// A statement of the first batch fails: the transaction is aborted,
	// and rolling it back gives the connection back.
	tx, res = begin(`SELECT 1/0`)
	_, err = res.Exec()
	require.Error(t, err)
	require.Error(t, res.Close())
	require.NoError(t, tx.Rollback(ctx))
	require.EqualValues(t, 0, pool.Stat().AcquiredConns())
	var one int
	require.NoError(t, pool.QueryRow(ctx, `SELECT 1`).Scan(&one), "the connection is usable again")
}

// BeginBatch's settings hold for the whole transaction and no longer, in
// every pgx exec mode and in a schema of readside's other than the
// default: the pin statement that carries them is prepared, described or
// sent as text by pgx depending on the mode.
func TestBeginBatchSettingsInEveryExecMode(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	_, err := pgtest.Pool(t, url).Exec(ctx, `CREATE SCHEMA app_rs`)
	require.NoError(t, err)
	const probe = `SELECT current_setting('idle_in_transaction_session_timeout') || '/' ||
		current_setting('synchronous_commit') || '/' || current_setting('search_path')`
	settings := []dbschema.Setting{{Name: "idle_in_transaction_session_timeout", Value: "7000"}, {Name: "synchronous_commit", Value: "off"}}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		for _, n := range []dbschema.Name{dbschema.Default, "app_rs"} {
			t.Run(mode.String()+"/"+string(n), func(t *testing.T) {
				cfg, err := pgxpool.ParseConfig(url)
				require.NoError(t, err)
				cfg.ConnConfig.DefaultQueryExecMode = mode
				cfg.MaxConns = 1
				pool, err := pgxpool.NewWithConfig(ctx, cfg)
				require.NoError(t, err)
				t.Cleanup(pool.Close)
				var before string
				require.NoError(t, pool.QueryRow(ctx, probe).Scan(&before))
				want := "7s/off/pg_catalog, " + n.Ident() + ", pg_temp"
				for _, commit := range []bool{true, false, true} {
					c, err := pool.Acquire(ctx)
					require.NoError(t, err)
					b := &pgx.Batch{}
					b.Queue(probe)
					tx, res := n.BeginBatch(ctx, c, b, false, "", settings...)
					t.Cleanup(func() { _ = tx.Rollback(ctx) })
					var got string
					require.NoError(t, res.QueryRow().Scan(&got))
					require.NoError(t, res.Close())
					require.Equal(t, want, got)
					require.NoError(t, tx.QueryRow(ctx, probe).Scan(&got))
					require.Equal(t, want, got, "a later statement of the transaction")
					if commit {
						require.NoError(t, tx.Commit(ctx))
					} else {
						require.NoError(t, tx.Rollback(ctx))
					}
					var after string
					require.NoError(t, pool.QueryRow(ctx, probe).Scan(&after))
					require.Equal(t, before, after, "the settings were the transaction's")
				}
			})
		}
	}
}
