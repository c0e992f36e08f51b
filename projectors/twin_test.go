package projectors_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

// Two live processes that share a --worker-id (PROJECTOR_WORKER_ID
// copied into a Deployment, or a replacement started before the old one
// has left; the id must be unique, but it happens) split the segments first
// come, first served: neither claims the other's live lease as its own,
// which would hand the leases back and forth at every renewal (an own-lease
// claim did, found in review).
func TestTwinWorkerIDsDoNotTakeEachOthersLeases(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	// Long enough that a renewal late under load does not let a lease
	// expire (a twin could then claim it, rightly).
	ttl := 2 * time.Second
	regs := []*prometheus.Registry{prometheus.NewRegistry(), prometheus.NewRegistry()}
	for i := range 2 {
		startWorker(t, projectors.Config{Pool: pool, WorkerID: "twin", LeaseTTL: ttl, PollInterval: 50 * time.Millisecond,
			Projections: []projectors.Projection{&recorder{name: "rec", segments: 2}}, Registerer: regs[i]})
	}
	stop := time.Now().Add(4 * time.Second)
	n := 0
	for time.Now().Before(stop) {
		appendEvents(t, pool, fmt.Sprintf("a%d", n), 0, `{}`)
		n++
		time.Sleep(20 * time.Millisecond)
	}
	eventually(t, 30*time.Second, "all applied", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`) == n
	})
	require.Equal(t, n, count(t, pool, `SELECT n FROM applied_count`), "exactly once")
	epochs := count(t, pool, `SELECT max(lease_epoch) FROM readside.checkpoints WHERE projection = 'rec'`)
	losses := counterValue(t, regs[0], "readside_projector_lease_losses_total") + counterValue(t, regs[1], "readside_projector_lease_losses_total")
	fenced := counterValue(t, regs[0], "readside_projector_fenced_commits_total") + counterValue(t, regs[1], "readside_projector_fenced_commits_total")
	t.Logf("events %d, max epoch %d, lease losses %v, fenced commits %v", n, epochs, losses, fenced)
	require.Less(t, epochs, 4, "leases change hands at every renewal between the twins")
}
