package projectors_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

// TestHelperProcess is not a test: it is a projector worker that the crash
// and fleet tests run as a subprocess, to kill it with SIGKILL.
func TestHelperProcess(t *testing.T) {
	if os.Getenv("READSIDE_HELPER") != "1" {
		t.Skip("helper process for the crash and fleet tests")
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	pool := pgtest.Pool(t, os.Getenv("READSIDE_HELPER_URL"))
	segments, _ := strconv.Atoi(os.Getenv("READSIDE_HELPER_SEGMENTS"))
	slow, _ := time.ParseDuration(os.Getenv("READSIDE_HELPER_SLOW"))
	rec := &recorder{name: "rec", segments: segments, hook: func(ctx context.Context, _ *projectors.Batch) error {
		if slow > 0 {
			time.Sleep(slow) // a long apply, for the kill to land inside it
		}
		return nil
	}}
	w, err := projectors.NewWorker(projectors.Config{Pool: pool, WorkerID: os.Getenv("READSIDE_HELPER_ID"),
		Projections: []projectors.Projection{rec}, BatchSize: 20, Concurrency: 4,
		PollInterval: 100 * time.Millisecond, LeaseTTL: 2 * time.Second, Logger: testLogger(t)})
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	fmt.Println("ready")
	<-ctx.Done()
	require.NoError(t, w.Stop(context.Background()))
	os.Exit(0)
}

type helper struct {
	cmd *exec.Cmd
}

func startHelper(t *testing.T, url, id string, segments int, slow time.Duration) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "READSIDE_HELPER=1", "READSIDE_HELPER_URL="+url, "READSIDE_HELPER_ID="+id,
		fmt.Sprintf("READSIDE_HELPER_SEGMENTS=%d", segments), "READSIDE_HELPER_SLOW="+slow.String())
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	h := &helper{cmd: cmd}
	t.Cleanup(func() { h.kill() })
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- nil
				break
			}
		}
		ready <- fmt.Errorf("helper %s exited before ready", id)
		for sc.Scan() {
		}
	}()
	select {
	case err := <-ready:
		require.NoError(t, err)
	case <-time.After(60 * time.Second):
		t.Fatalf("helper %s not ready", id)
	}
	return h
}

func (h *helper) kill() {
	if h.cmd.ProcessState == nil {
		_ = h.cmd.Process.Signal(syscall.SIGKILL)
		_ = h.cmd.Wait()
	}
}

func (h *helper) term(t *testing.T) {
	t.Helper()
	require.NoError(t, h.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, h.cmd.Wait())
}

// Crash mid-batch: a worker SIGKILLed while its apply transaction is open
// leaves nothing half-written; after restarts, the exactly-once counter
// equals the number of events.
func TestCrashMidBatch(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)
	setupRecorder(t, pool)
	for i := range 100 {
		appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 0, `{}`, `{}`, `{}`, `{}`, `{}`)
	}
	const total = 500
	kills := 0
	for kills < 4 {
		h := startHelper(t, url, fmt.Sprintf("crashy-%d", kills), 2, 50*time.Millisecond)
		before := count(t, pool, `SELECT coalesce(sum(events_applied), 0) FROM readside.checkpoints`)
		// Let it commit some batches, then wait until it is inside an apply
		// transaction that has written (rows not yet committed) and kill it.
		eventually(t, 30*time.Second, "progress", func() bool {
			return count(t, pool, `SELECT coalesce(sum(events_applied), 0) FROM readside.checkpoints`) > before
		})
		eventually(t, 30*time.Second, "an apply in flight", func() bool {
			return count(t, pool, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
				AND state = 'idle in transaction' AND backend_xid IS NOT NULL`) > 0
		})
		h.kill()
		kills++
		after := count(t, pool, `SELECT coalesce(sum(events_applied), 0) FROM readside.checkpoints`)
		require.Less(t, after, total, "killed before the end of the backlog")
		t.Logf("kill %d: %d -> %d events applied", kills, before, after)
		require.Equal(t, after, count(t, pool, `SELECT coalesce(sum(n), 0) FROM applied_count`), "counter matches checkpoints after a crash")
	}
	// A clean run finishes the backlog once the dead worker's lease expires.
	startHelper(t, url, "survivor", 2, 0)
	eventually(t, 60*time.Second, "backlog applied", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`) == total
	})
	require.Equal(t, total, count(t, pool, `SELECT n FROM applied_count`), "exactly-once counter")
	require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.dead_letters`))
}

// Fleet: 1 -> 3 -> 2 workers. Segments spread evenly as workers
// join, without restarting anyone, and a killed worker's segments move
// within the lease TTL plus a renewal interval.
func TestFleetRebalancesAndFailsOver(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)
	setupRecorder(t, pool)
	owned := func(id string) int {
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints WHERE lease_owner = $1 AND lease_expires_at > now()`, id)
	}
	a := startHelper(t, url, "a", 12, 0)
	eventually(t, 20*time.Second, "a owns all 12", func() bool { return owned("a") == 12 })

	startHelper(t, url, "b", 12, 0)
	c := startHelper(t, url, "c", 12, 0)
	eventually(t, 20*time.Second, "4/4/4", func() bool {
		return owned("a") == 4 && owned("b") == 4 && owned("c") == 4
	})

	// Work keeps flowing while c dies.
	for i := range 30 {
		appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 0, `{}`, `{}`)
	}
	c.kill()
	killed := time.Now()
	eventually(t, 20*time.Second, "c's segments taken over: 6/6", func() bool { return owned("a") == 6 && owned("b") == 6 })
	moved := time.Since(killed)
	// TTL (2s) + one renewal interval (0.5s) + one poll, with slack for a
	// loaded machine.
	require.Less(t, moved, 2*time.Second+500*time.Millisecond+3*time.Second, "failover took %s", moved)
	t.Logf("segments of the killed worker moved after %s", moved)

	eventually(t, 30*time.Second, "all applied", func() bool { return count(t, pool, `SELECT count(*) FROM applied`) == 60 })
	require.Equal(t, 60, count(t, pool, `SELECT n FROM applied_count`))

	// A clean stop releases at once.
	a.term(t)
	eventually(t, 5*time.Second, "b takes all after a's clean stop", func() bool { return owned("b") == 12 })
}
