package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/projectors/projectortest"
)

func TestMain(m *testing.M) { projectortest.Main(m) }

// The projection passes the conformance suite, on a database from the
// exported helper (Run creates its table from its Schema).
func TestConformance(t *testing.T) {
	t.Parallel()
	projectortest.Run(t, projectortest.NewDB, ShippedPerDay{}, projectortest.Lifecycles{Orders: 40}.Generator(),
		projectortest.Features{NotIdempotent: true})
}

// The example binary, built as a user would, migrates, runs, resets and
// reports its own projection.
func TestBinary(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bin := filepath.Join(t.TempDir(), "shippedperday")
	build, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", build)
	url := projectortest.NewEmptyDatabaseURL(t)
	cli := func(args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command(bin, append(args, "--database-url", url)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if err != nil {
			return stdout.String(), fmt.Errorf("%s %v: %w: %s", filepath.Base(bin), args, err, stderr.String())
		}
		return stdout.String(), nil
	}

	out, err := cli("migrate")
	require.NoError(t, err)
	require.Contains(t, out, "applied schema of projection shipped_per_day")
	help, err := exec.Command(bin, "-h").Output()
	require.NoError(t, err)
	out = string(help)
	require.Contains(t, out, "Projections in this binary: order_summary, shipped_per_day.")
	_, err = cli("reset", "order_details")
	require.ErrorContains(t, err, `unknown projection "order_details" (this binary carries: order_summary, shipped_per_day)`)

	pool := projectortest.Pool(t, url)
	_, err = projectortest.Lifecycles{Orders: 60}.Generate(ctx, pool)
	require.NoError(t, err)
	var shipped int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.events WHERE event_type = 'OrderShipped'`).Scan(&shipped))
	require.Positive(t, shipped)

	run := exec.Command(bin, "run", "--database-url", url, "--metrics-addr", "", "--poll-interval", "100ms", "--log-level", "warn")
	var runLog bytes.Buffer
	run.Stdout, run.Stderr = &runLog, &runLog
	require.NoError(t, run.Start())
	defer func() {
		_ = run.Process.Signal(syscall.SIGTERM)
		_ = run.Wait()
		if t.Failed() {
			t.Logf("run output:\n%s", runLog.String())
		}
	}()

	counted := func() int64 {
		var n int64
		require.NoError(t, pool.QueryRow(ctx, `SELECT coalesce(sum(orders), 0) FROM readside.shipped_per_day`).Scan(&n))
		return n
	}
	caughtUp := func() bool {
		out, err := cli("status", "--json")
		if err != nil {
			return false
		}
		var st struct {
			Segments []struct {
				Projection string `json:"projection"`
				LagEvents  int64  `json:"lag_events"`
			} `json:"segments"`
		}
		if json.Unmarshal([]byte(out), &st) != nil || len(st.Segments) == 0 {
			return false
		}
		for _, s := range st.Segments {
			if s.LagEvents > 0 {
				return false
			}
		}
		return counted() == shipped
	}
	require.Eventually(t, caughtUp, 60*time.Second, 200*time.Millisecond, "shipped_per_day catches up")

	out, err = cli("reset", "shipped_per_day", "--to-start", "--wait", "--timeout", "60s")
	require.NoError(t, err)
	require.Contains(t, out, "readside_reset: queued as job")
	require.Equal(t, shipped, counted(), "after the reset and replay, every shipment counted once")

	out, err = cli("status")
	require.NoError(t, err)
	require.Contains(t, out, "shipped_per_day")
	require.Contains(t, out, "order_summary")

	version, err := exec.Command(bin, "version").Output()
	require.NoError(t, err)
	require.Contains(t, string(version), "shippedperday")
}
