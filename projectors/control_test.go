package projectors_test

import (
	"context"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

type holdArgs struct{}

func (holdArgs) Kind() string { return "test_hold" }

type holdWorker struct {
	river.WorkerDefaults[holdArgs]
	started, release chan struct{}
}

func (w *holdWorker) Work(ctx context.Context, _ *river.Job[holdArgs]) error {
	close(w.started)
	<-w.release
	return ctx.Err() // fails the job if the stop cancelled it
}

// Issue 10 item 7, control plane: cancelling the context given to
// Control.Start (a signal) lets a running job finish instead of cancelling
// it at once.
func TestControlStartContextCancelIsSoftStop(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	hw := &holdWorker{started: make(chan struct{}), release: make(chan struct{})}
	c, err := control.New(control.Config{Pool: pool, PruneInterval: -1, Logger: testLogger(t),
		Projections: []projectors.Projection{holdJobs{recorder: &recorder{name: "holds"}, hw: hw}}})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	require.NoError(t, c.Start(ctx))
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	res, err := c.Client().Insert(context.Background(), holdArgs{}, &river.InsertOpts{Queue: "test_hold"})
	require.NoError(t, err)
	select {
	case <-hw.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the job did not start")
	}

	cancel()
	close(hw.release)
	select {
	case <-c.Stopped():
	case <-time.After(30 * time.Second):
		t.Fatal("the control plane did not stop")
	}
	state, lastErr, err := jobs(t, pool).State(context.Background(), res.Job.ID)
	require.NoError(t, err)
	require.Equal(t, "completed", string(state), lastErr)
}

// Behind PgBouncer in transaction pooling mode a LISTEN session cannot
// exist: with PollOnly, River's client opens none and still works its jobs.
// Without it, the same check sees River's LISTEN (the check can fail).
func TestControlPollOnlyNeverListens(t *testing.T) {
	t.Parallel()
	for _, pollOnly := range []bool{false, true} {
		pool := pgtest.NewDB(t)
		hw := &holdWorker{started: make(chan struct{}), release: make(chan struct{})}
		close(hw.release)
		c, err := control.New(control.Config{Pool: pool, PruneInterval: -1, Logger: testLogger(t), PollOnly: pollOnly,
			Projections: []projectors.Projection{holdJobs{recorder: &recorder{name: "holds"}, hw: hw}}})
		require.NoError(t, err)
		require.NoError(t, c.Start(context.Background()))
		t.Cleanup(func() { _ = c.Stop(context.Background()) })
		listening := func() int {
			return count(t, pool, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'listen%'`)
		}
		if !pollOnly {
			eventually(t, 10*time.Second, "River's LISTEN", func() bool { return listening() > 0 })
			continue
		}
		_, err = c.Client().Insert(context.Background(), holdArgs{}, &river.InsertOpts{Queue: "test_hold"})
		require.NoError(t, err)
		select {
		case <-hw.started:
		case <-time.After(30 * time.Second):
			t.Fatal("a poll-only control plane did not work its job")
		}
		require.Zero(t, listening(), "a poll-only control plane opened a LISTEN session")
	}
}

// holdJobs is a projection whose side-effect jobs are holdWorker's.
type holdJobs struct {
	*recorder
	hw *holdWorker
}

func (h holdJobs) RiverWorkers(_ projectors.DB, w *river.Workers) { river.AddWorker(w, h.hw) }

func (holdJobs) RiverQueues() map[string]river.QueueConfig {
	return map[string]river.QueueConfig{"test_hold": {MaxWorkers: 1}}
}
