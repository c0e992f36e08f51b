package projectors_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

func TestWorkerAppliesWithoutWaitingForPoll(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{&recorder{name: "rec"}},
		PollInterval: time.Hour, LeaseTTL: 2 * time.Second})
	// The worker claims its segment at start.
	eventually(t, 5*time.Second, "lease claimed", func() bool {
		return count(t, pool, `SELECT count(*) FROM checkpoints WHERE lease_owner IS NOT NULL`) == 1
	})
	for i := range 5 {
		appendEvents(t, pool, fmt.Sprintf("a%d", i), 0, `{}`, `{}`)
		// With a one-hour poll, only the notification can wake the worker.
		eventually(t, 3*time.Second, "applied via LISTEN/NOTIFY", func() bool {
			return count(t, pool, `SELECT count(*) FROM applied`) == 2*(i+1)
		})
	}
}

func TestWorkerConfigErrors(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	for name, cfg := range map[string]projectors.Config{
		"no pool":        {Projections: []projectors.Projection{&recorder{name: "a"}}},
		"no projections": {Pool: pool},
		"bad name":       {Pool: pool, Projections: []projectors.Projection{&recorder{name: "Bad-Name"}}},
		"duplicate":      {Pool: pool, Projections: []projectors.Projection{&recorder{name: "a"}, &recorder{name: "a"}}},
		"bad segments":   {Pool: pool, Projections: []projectors.Projection{&recorder{name: "a", segments: 5000}}},
		"short ttl":      {Pool: pool, Projections: []projectors.Projection{&recorder{name: "a"}}, LeaseTTL: time.Millisecond},
	} {
		_, err := projectors.NewWorker(cfg)
		require.Error(t, err, name)
	}
}

func TestWorkerRefusesUnmigratedDatabase(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t, pgtest.NewEmptyDatabaseURL(t))
	w, err := projectors.NewWorker(projectors.Config{Pool: pool, Projections: []projectors.Projection{&recorder{name: "a"}}})
	require.NoError(t, err)
	err = w.Start(context.Background())
	require.ErrorContains(t, err, "projector migrate")
	require.NoError(t, w.Stop(context.Background()))
}

// A fleet whose workers run different projections: no segment is left
// unowned, and load is balanced as far as eligibility allows.
func TestMixedFleetOwnsEverySegment(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	startWorker(t, projectors.Config{Pool: pool, WorkerID: "both", LeaseTTL: time.Second,
		Projections: []projectors.Projection{&recorder{name: "a", segments: 4}, &recorder{name: "b", segments: 4}}})
	startWorker(t, projectors.Config{Pool: pool, WorkerID: "only-b", LeaseTTL: time.Second,
		Projections: []projectors.Projection{&recorder{name: "b", segments: 4}}})
	owned := func(owner, projection string) int {
		return count(t, pool, `SELECT count(*) FROM checkpoints WHERE lease_owner = $1 AND projection = $2 AND lease_expires_at > now()`, owner, projection)
	}
	eventually(t, 20*time.Second, "a: 4 on both; b: 4 on only-b", func() bool {
		return owned("both", "a") == 4 && owned("both", "b") == 0 && owned("only-b", "b") == 4
	})
}
