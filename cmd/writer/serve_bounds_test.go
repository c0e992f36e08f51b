package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/internal/syncbuf"
	"github.com/readside/readside/outbox"
)

// startServe runs `writer serve` on url with extra args until the test
// ends, and returns its address.
func startServe(t *testing.T, url string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout syncbuf.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"serve", "--database-url", url, "--addr", "127.0.0.1:0"}, args...), &stdout, io.Discard)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err, "graceful shutdown")
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	})
	addrRE := regexp.MustCompile(`listening on (\S+)`)
	var addr string
	require.Eventually(t, func() bool {
		if m := addrRE.FindStringSubmatch(stdout.String()); m != nil {
			addr = m[1]
		}
		return addr != ""
	}, 10*time.Second, 10*time.Millisecond)
	return "http://" + addr
}

type timedAnswer struct {
	code       int
	retryAfter string
	body       string
	took       time.Duration
}

func call(client *http.Client, method, url, body string) (timedAnswer, error) {
	start := time.Now()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return timedAnswer{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := client.Do(req)
	if err != nil {
		return timedAnswer{took: time.Since(start)}, err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return timedAnswer{code: res.StatusCode, retryAfter: res.Header.Get("Retry-After"), body: string(b), took: time.Since(start)}, nil
}

// lockOrders opens a transaction that appends the next version of each
// order, as a concurrent writer would, and leaves it open (idle) until the
// test ends.
func lockOrders(t *testing.T, url string, ids []string) {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.Pool(t, url)
	repo, err := aggregate.New(pool, aggregate.Config{})
	require.NoError(t, err)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	for _, id := range ids {
		l, err := aggregate.Load[domain.Order](ctx, tx, id)
		require.NoError(t, err)
		events, err := l.State.Confirm(domain.ConfirmOrder{OrderID: id}, time.Now())
		require.NoError(t, err)
		_, err = repo.Save(ctx, tx, id, l.Version, l.State, outbox.Metadata{}, events)
		require.NoError(t, err)
	}
}

// lockWaiters counts the backends of the database at url that wait for a
// lock.
func lockWaiters(t *testing.T, conn *pgx.Conn) int {
	var n int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n))
	return n
}

// The reproduction: a transaction that appended the next version
// of five orders sits idle. Confirming those orders answers 503 with
// Retry-After within the command bound instead of hanging, and, while
// they keep trying, an unrelated order is placed and the statistics are
// read at once: the stuck commands neither exhaust the connections nor
// starve the queries.
func TestServeBoundsCommandsBehindALockedOrder(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabaseURL(t)
	base := startServe(t, url)
	client := &http.Client{Timeout: 12 * time.Second}

	var ids []string
	for i := range 5 {
		id := fmt.Sprintf("o-locked-%d", i)
		a, err := call(client, "POST", base+"/orders", `{"order_id":"`+id+`","customer_name":"Ann","items":[{"product_name":"W","quantity":1,"unit_price":"5.00"}]}`)
		require.NoError(t, err)
		require.Equal(t, http.StatusCreated, a.code, a.body)
		ids = append(ids, id)
	}
	lockOrders(t, url, ids)

	const commandBound = 5 * time.Second // the documented default (--command-timeout)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	first := make([]timedAnswer, len(ids))
	firstErr := make([]error, len(ids))
	for i, id := range ids {
		wg.Go(func() {
			for n := 0; ; n++ {
				a, err := call(client, "POST", base+"/orders/"+id+"/confirm", "")
				if n == 0 {
					first[i], firstErr[i] = a, err
				}
				select {
				case <-stop:
					return
				default:
				}
				if err != nil {
					return
				}
			}
		})
	}
	stopped := false
	stopConfirms := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer stopConfirms()

	// The confirmations are stuck behind the open transaction: wait until
	// at least four of them wait for its locks.
	watch, err := pgx.Connect(context.Background(), url)
	require.NoError(t, err)
	defer watch.Close(context.Background())
	require.Eventually(t, func() bool { return lockWaiters(t, watch) >= 4 }, 10*time.Second, 5*time.Millisecond,
		"confirmations waiting for the open transaction's locks")

	placed, err := call(client, "POST", base+"/orders", `{"customer_name":"Bob","items":[{"product_name":"W","quantity":1,"unit_price":"5.00"}]}`)
	require.NoError(t, err, "an unrelated order while confirmations are stuck")
	require.Equal(t, http.StatusCreated, placed.code, placed.body)
	require.Less(t, placed.took, 2*time.Second, "an unrelated order while confirmations are stuck")

	stats, err := call(client, "GET", base+"/statistics", "")
	require.NoError(t, err, "statistics while confirmations are stuck")
	require.Equal(t, http.StatusOK, stats.code, stats.body)
	require.Less(t, stats.took, 2*time.Second, "statistics while confirmations are stuck")

	stopConfirms()
	t.Logf("unrelated order %v, statistics %v", placed.took, stats.took)
	for i, a := range first {
		t.Logf("confirm %s: %d in %v: %s", ids[i], a.code, a.took, a.body)
		require.NoError(t, firstErr[i], "confirm %s", ids[i])
		require.Equal(t, http.StatusServiceUnavailable, a.code, "confirm %s: %s", ids[i], a.body)
		require.NotEmpty(t, a.retryAfter, "confirm %s", ids[i])
		require.Less(t, a.took, commandBound+time.Second, "confirm %s", ids[i])
	}
}
