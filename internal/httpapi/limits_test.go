package httpapi_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/httpapi"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

// serveAsync answers the request in another goroutine.
func serveAsync(srv http.Handler, method, path, body string) <-chan *httptest.ResponseRecorder {
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		done <- rec
	}()
	return done
}

func awaitAnswer(t *testing.T, c <-chan *httptest.ResponseRecorder, within time.Duration, what string) *httptest.ResponseRecorder {
	t.Helper()
	select {
	case rec := <-c:
		return rec
	case <-time.After(within):
		t.Fatalf("%s: no answer within %v", what, within)
		return nil
	}
}

// awaitLockWaiter waits until a backend of pool's database waits for a
// lock.
func awaitLockWaiter(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	require.Eventually(t, func() bool {
		var n int
		err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		return err == nil && n > 0
	}, 10*time.Second, 5*time.Millisecond, "a request waiting for the lock")
}

// holdTx begins a transaction that the test rolls back at its end, or
// earlier with the returned function.
func holdTx(t *testing.T, pool *pgxpool.Pool) (pgx.Tx, func()) {
	t.Helper()
	tx, err := pool.Begin(context.Background())
	require.NoError(t, err)
	release := func() { _ = tx.Rollback(context.Background()) }
	t.Cleanup(release)
	return tx, release
}

// A command stuck behind another transaction's lock holds the only
// command place: the next command is answered 503 with Retry-After after
// the acquire timeout, while queries, which have places of their own, are
// answered as usual.
func TestCommandsWaitBoundedForAPlace(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	repo, err := aggregate.New(pool, aggregate.Config{LockTimeout: 30 * time.Second})
	require.NoError(t, err)
	srv, err := httpapi.New(httpapi.Config{Repository: repo, DB: pool, MaxCommands: 1, AcquireTimeout: 100 * time.Millisecond,
		CommandTimeout: time.Minute})
	require.NoError(t, err)
	require.NoError(t, srv.HandleQueries(httpapi.QueryConfig{DB: pool}))
	e := &env{t: t, pool: pool, srv: srv}
	placed := e.do("POST", "/orders", `{"order_id":"o-held","customer_name":"Ann","items":[{"product_name":"W","quantity":1,"unit_price":1}]}`)
	require.Equal(t, http.StatusCreated, placed.code, placed.raw)

	tx, release := holdTx(t, pool)
	l, err := aggregate.Load[domain.Order](context.Background(), tx, "o-held")
	require.NoError(t, err)
	events, err := l.State.Confirm(domain.ConfirmOrder{OrderID: "o-held"}, time.Now())
	require.NoError(t, err)
	_, err = repo.Save(context.Background(), tx, "o-held", l.Version, l.State, outbox.Metadata{}, events)
	require.NoError(t, err)

	stuck := serveAsync(srv, "POST", "/orders/o-held/confirm", "")
	awaitLockWaiter(t, pool)

	start := time.Now()
	busy := e.do("POST", "/orders", validOrder)
	require.Equal(t, http.StatusServiceUnavailable, busy.code, busy.raw)
	require.Equal(t, "1", busy.header.Get("Retry-After"))
	require.Contains(t, busy.body["error"], "server busy: 1 commands in progress")
	require.Less(t, time.Since(start), 5*time.Second)

	stats := e.get("/statistics")
	require.Equal(t, http.StatusOK, stats.code, stats.raw)

	release()
	rec := awaitAnswer(t, stuck, 30*time.Second, "the stuck confirmation")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, http.StatusCreated, e.do("POST", "/orders", validOrder).code, "the place is free again")
}

// A read behind a lock (a reset emptying the read model holds one) holds
// the only query place: the next read gets 503 after the acquire timeout,
// commands are answered as usual, and the stuck read itself gets 503 with
// Retry-After when its lock_timeout fires.
func TestReadsWaitBoundedForLocksAndPlaces(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	repo, err := aggregate.New(pool, aggregate.Config{})
	require.NoError(t, err)
	srv, err := httpapi.New(httpapi.Config{Repository: repo, DB: pool, AcquireTimeout: 100 * time.Millisecond})
	require.NoError(t, err)
	const lockTimeout = 2 * time.Second
	require.NoError(t, srv.HandleQueries(httpapi.QueryConfig{DB: pool, MaxQueries: 1, LockTimeout: lockTimeout}))
	e := &env{t: t, pool: pool, srv: srv}

	// The statistics table, wherever the migrations put it.
	tx, _ := holdTx(t, pool)
	var table string
	require.NoError(t, tx.QueryRow(context.Background(), `SELECT c.oid::regclass::text FROM pg_class c
		WHERE c.relname = 'order_statistics' AND c.relkind IN ('r', 'p')`).Scan(&table))
	_, err = tx.Exec(context.Background(), `LOCK TABLE `+table+` IN ACCESS EXCLUSIVE MODE`)
	require.NoError(t, err)

	start := time.Now()
	stuck := serveAsync(srv, "GET", "/statistics", "")
	awaitLockWaiter(t, pool)

	busy := e.get("/orders")
	require.Equal(t, http.StatusServiceUnavailable, busy.code, busy.raw)
	require.Equal(t, "1", busy.header.Get("Retry-After"))
	require.Contains(t, busy.body["error"], "server busy: 1 queries in progress")

	placed := e.do("POST", "/orders", validOrder)
	require.Equal(t, http.StatusCreated, placed.code, placed.raw)

	rec := awaitAnswer(t, stuck, 10*time.Second, "the stuck read")
	require.Equal(t, http.StatusServiceUnavailable, rec.Code, rec.Body.String())
	require.Equal(t, "1", rec.Header().Get("Retry-After"))
	require.Contains(t, rec.Body.String(), "lock_timeout")
	require.GreaterOrEqual(t, time.Since(start), lockTimeout)
}
