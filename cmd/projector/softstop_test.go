package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/internal/syncbuf"
	"github.com/readside/readside/projectors/projectortest"
)

// Issue 10 item 7. SIGTERM is a soft stop for the real binary: a batch in
// flight (here held up by a lock on its read model table) commits once it
// can, and the worker releases its leases as it exits instead of leaving
// them to expire.
func TestSIGTERMLetsTheBatchInFlightCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)

	bin := filepath.Join(t.TempDir(), "projector")
	build := exec.Command("go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)

	var logs syncbuf.Buffer
	cmd := exec.Command(bin, "run", "--database-url", url, "--projections", "order_summary", "--metrics-addr=",
		"--lease-ttl", "5s", "--soft-stop-timeout", "2m", "--poll-interval", "50ms", "--prune-interval", "-1s")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // dies with the test binary
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute) // a long transaction anywhere in the cluster holds the window
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for: %s\n%s", what, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	count := func(sql string) int {
		t.Helper()
		var n int
		require.NoError(t, pool.QueryRow(ctx, sql).Scan(&n))
		return n
	}
	waitFor("every order_summary segment owned", func() bool {
		return count(`SELECT count(*) FROM readside.checkpoints WHERE projection = 'order_summary' AND lease_owner IS NULL`) == 0 &&
			count(`SELECT count(*) FROM readside.checkpoints WHERE projection = 'order_summary'`) > 0
	})

	// Hold the read model's table so that the next batch blocks in flight.
	lock, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = lock.Rollback(ctx) }()
	_, err = lock.Exec(ctx, `LOCK TABLE readside.order_summary IN SHARE MODE`)
	require.NoError(t, err)
	_, err = projectortest.Lifecycles{Orders: 4, Writers: 1}.Generate(ctx, pool)
	require.NoError(t, err)
	waitFor("a batch waits for the lock", func() bool {
		return count(`SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'readside.order_summary'::regclass
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`) > 0
	})

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	waitFor("the signal is handled", func() bool { return strings.Contains(logs.String(), "stopping") })
	require.NoError(t, lock.Rollback(ctx)) // the batch may go on now

	select {
	case err := <-exited:
		exited <- err // for Cleanup
		require.NoError(t, err, logs.String())
	case <-time.After(90 * time.Second):
		t.Fatalf("projector did not exit\n%s", logs.String())
	}
	require.Positive(t, count(`SELECT count(*) FROM readside.order_summary`), "the batch in flight committed\n%s", logs.String())
	require.Positive(t, count(`SELECT coalesce(sum(events_applied), 0) FROM readside.checkpoints WHERE projection = 'order_summary'`))
	require.Zero(t, count(`SELECT count(*) FROM readside.checkpoints WHERE lease_owner IS NOT NULL`), "leases released at exit")
}
