package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/internal/syncbuf"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestRunRejectsBadInvocations(t *testing.T) {
	t.Parallel()
	unreachable := "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=1"
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"no command":        {nil, "usage"},
		"unknown command":   {[]string{"frobnicate"}, `unknown command "frobnicate"`},
		"unknown flag":      {[]string{"serve", "--bogus"}, "unknown flag: --bogus"},
		"bad int":           {[]string{"load", "--events", "many"}, "invalid argument"},
		"zero concurrency":  {[]string{"load", "--concurrency", "0"}, "--concurrency must be at least 1"},
		"negative rate":     {[]string{"load", "--rate", "-1"}, "--rate must not be negative"},
		"stray argument":    {[]string{"serve", "extra"}, `unexpected argument "extra"`},
		"bad timeout":       {[]string{"serve", "--shutdown-timeout", "0s"}, "--shutdown-timeout must be positive"},
		"unreachable serve": {[]string{"serve", "--database-url", unreachable, "--addr", "127.0.0.1:0"}, "unreachable"},
		"unreachable load":  {[]string{"load", "--database-url", unreachable}, "unreachable"},
		"bad url":           {[]string{"load", "--database-url", "::nope"}, "database URL"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tc.args, &stdout, &stderr)
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
			require.NotContains(t, err.Error(), "\n", "the reason is one line")
		})
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	var stdout bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"load", "-h"}, &stdout, io.Discard))
	require.Contains(t, stdout.String(), "-concurrency")
	require.Contains(t, stdout.String(), "WRITER_LOAD_CONCURRENCY")
}

func TestRefusesUnmigratedDatabase(t *testing.T) {
	t.Parallel()
	url := pgtest.NewEmptyDatabaseURL(t)
	err := run(context.Background(), []string{"load", "--database-url", url}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "not migrated")
}

func TestLoad(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabaseURL(t)
	var stdout bytes.Buffer
	err := run(context.Background(), []string{"load", "--database-url", url, "--events", "120", "--aggregates", "3",
		"--concurrency", "6", "--products", "4", "--progress", "50ms"}, &stdout, io.Discard)
	require.NoError(t, err, stdout.String())
	require.Regexp(t, regexp.MustCompile(`load: 120 events in .* events/s`), stdout.String())

	pool := pgtest.Pool(t, url)
	var events, outboxRows, products, orders, shippedOrCancelled int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT
		(SELECT count(*) FROM readside.events), (SELECT count(*) FROM readside.outbox),
		(SELECT count(*) FROM readside.events WHERE event_type = 'ProductCreated'),
		(SELECT count(*) FROM readside.events WHERE event_type = 'OrderPlaced'),
		(SELECT count(*) FROM readside.events WHERE event_type IN ('OrderShipped', 'OrderCancelled'))`).
		Scan(&events, &outboxRows, &products, &orders, &shippedOrCancelled))
	require.Equal(t, 120, events)
	require.Equal(t, 120, outboxRows)
	require.Equal(t, 4, products)
	require.Greater(t, orders, 3, "finished orders make room for new ones")
	require.Positive(t, shippedOrCancelled)

	var gaps int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM (
		SELECT version, row_number() OVER (PARTITION BY aggregate_type, aggregate_id ORDER BY version) AS n FROM readside.events) v
		WHERE version <> n`).Scan(&gaps))
	require.Zero(t, gaps)
}

func TestServe(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabaseURL(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout syncbuf.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--database-url", url, "--addr", "127.0.0.1:0"}, &stdout, io.Discard)
	}()

	addrRE := regexp.MustCompile(`listening on (\S+)`)
	var addr string
	require.Eventually(t, func() bool {
		m := addrRE.FindStringSubmatch(stdout.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	}, 10*time.Second, 10*time.Millisecond)

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := client.Post("http://"+addr+"/orders", "application/json",
		strings.NewReader(`{"customer_name":"Alice","items":[{"product_name":"W","quantity":1,"unit_price":9.99}]}`))
	require.NoError(t, err)
	var body map[string]any
	require.NoError(t, json.NewDecoder(res.Body).Decode(&body))
	res.Body.Close()
	require.Equal(t, http.StatusCreated, res.StatusCode, body)
	require.NotEmpty(t, res.Header.Get("Readside-Consistency-Token"))

	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/orders", "/statistics", "/products"} {
		res, err := client.Get("http://" + addr + path)
		require.NoError(t, err)
		res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode, path)
	}

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err, "graceful shutdown")
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop")
	}
}
