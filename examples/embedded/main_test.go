package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/syncbuf"
	"github.com/readside/readside/projectors/projectortest"
)

func TestMain(m *testing.M) { projectortest.Main(m) }

func TestConformance(t *testing.T) {
	t.Parallel()
	projectortest.Run(t, projectortest.NewDB, CustomerTotals{}, projectortest.Lifecycles{Orders: 40}.Generator(),
		projectortest.Features{NotIdempotent: true})
}

// The service, built and run as a user would, on an empty database:
// it migrates, applies its projection, serves it, replays it with
// reset-and-wait through the Go API, and stops softly on SIGTERM.
func TestService(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bin := filepath.Join(t.TempDir(), "embedded")
	build, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", build)
	dbURL := projectortest.NewEmptyDatabaseURL(t)
	addr := freeAddr(t)

	svc := exec.Command(bin)
	svc.Env = append(svc.Environ(), "DATABASE_URL="+dbURL, "ADDR="+addr)
	var log syncbuf.Buffer
	svc.Stdout, svc.Stderr = &log, &log
	require.NoError(t, svc.Start())
	exited := make(chan error, 1)
	go func() { exited <- svc.Wait() }()
	defer func() {
		if svc.ProcessState == nil {
			_ = svc.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("service log:\n%s", log.String())
		}
	}()

	base := "http://" + addr
	get := func(path string) (int, map[string]any) {
		res, err := http.Get(base + path)
		if err != nil {
			return 0, nil
		}
		defer res.Body.Close()
		var body map[string]any
		_ = json.NewDecoder(res.Body).Decode(&body)
		return res.StatusCode, body
	}
	require.Eventually(t, func() bool { code, _ := get("/customers/nobody"); return code == http.StatusNotFound },
		60*time.Second, 100*time.Millisecond, "the service is up and migrated")

	pool := projectortest.Pool(t, dbURL)
	rows, err := pool.Query(ctx, `SELECT c.relname::text FROM pg_class c WHERE c.relkind = 'r' AND c.relname ~ '^(order_|products)'`)
	require.NoError(t, err)
	demo, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Empty(t, demo, "a binary with only a user's projection creates none of the demo's tables")
	_, err = projectortest.Lifecycles{Orders: 50}.Generate(ctx, pool)
	require.NoError(t, err)
	want := map[string]string{}
	rows, err = pool.Query(ctx, `SELECT event_data->>'customer_name', count(*)::text || '/' || sum((event_data->>'total_amount')::numeric)::text
		FROM readside.events WHERE event_type = 'OrderPlaced' GROUP BY 1`)
	require.NoError(t, err)
	for rows.Next() {
		var c, v string
		require.NoError(t, rows.Scan(&c, &v))
		want[c] = v
	}
	require.NoError(t, rows.Err())
	require.NotEmpty(t, want)
	got := func() map[string]string {
		out := map[string]string{}
		for c := range want {
			if code, body := get("/customers/" + url.PathEscape(c)); code == http.StatusOK {
				out[c] = fmt.Sprintf("%v/%v", body["orders"], body["total"])
			}
		}
		return out
	}
	require.Eventually(t, func() bool { return equal(want, got()) }, 60*time.Second, 200*time.Millisecond, "the projection caught up")

	res, err := http.Post(base+"/admin/replay", "application/json", nil)
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode, "%s", body)
	require.Contains(t, string(body), `"replayed":"customer_totals"`)
	require.Equal(t, want, got(), "replayed from the start: each order counted once")

	require.NoError(t, svc.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		require.NoError(t, err, "a soft stop exits 0")
	case <-time.After(30 * time.Second):
		t.Fatal("no exit 30s after SIGTERM")
	}
}

func equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}
