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

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
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
		"lock past command": {[]string{"serve", "--lock-timeout", "10s"}, "--lock-timeout 10s must be below --command-timeout 5s"},
		"query past pg":     {[]string{"serve", "--query-timeout", "1000h"}, "--query-timeout must be at most 596h31m23.647s"},
		"lock past pg":      {[]string{"serve", "--lock-timeout", "1000h", "--command-timeout", "2000h"}, "--lock-timeout must be at most 596h31m23.647s"},
		"no commands":       {[]string{"serve", "--max-commands", "0"}, "--max-commands and --max-queries must be at least 1"},
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
	base := startServe(t, pgtest.NewDatabaseURL(t))

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := client.Post(base+"/orders", "application/json",
		strings.NewReader(`{"customer_name":"Alice","items":[{"product_name":"W","quantity":1,"unit_price":9.99}]}`))
	require.NoError(t, err)
	var body map[string]any
	require.NoError(t, json.NewDecoder(res.Body).Decode(&body))
	res.Body.Close()
	require.Equal(t, http.StatusCreated, res.StatusCode, body)
	require.NotEmpty(t, res.Header.Get("Readside-Consistency-Token"))

	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/orders", "/statistics", "/products"} {
		res, err := client.Get(base + path)
		require.NoError(t, err)
		res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode, path)
	}
}
