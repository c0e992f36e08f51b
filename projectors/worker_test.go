package projectors_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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
	// The worker claims its segment at start. (The waits below are long
	// because the read window is cluster-wide: another test's transaction
	// held open holds these events back too. What is tested is that they
	// arrive with a one-hour poll, not how fast.)
	eventually(t, 60*time.Second, "lease claimed", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints WHERE lease_owner IS NOT NULL`) == 1
	})
	for i := range 5 {
		appendEvents(t, pool, fmt.Sprintf("a%d", i), 0, `{}`, `{}`)
		// With a one-hour poll, only the notification can wake the worker.
		eventually(t, 60*time.Second, "applied via LISTEN/NOTIFY", func() bool {
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
		// (An apply transaction's idle timeout is the TTL in milliseconds,
		// which PostgreSQL refuses past 2^31-1: every batch would fail.)
		"long ttl": {Pool: pool, Projections: []projectors.Projection{&recorder{name: "a"}}, LeaseTTL: math.MaxInt32*time.Millisecond + time.Millisecond},
	} {
		_, err := projectors.NewWorker(cfg)
		require.Error(t, err, name)
	}
	_, err := projectors.NewWorker(projectors.Config{Pool: pool, Projections: []projectors.Projection{&recorder{name: "a"}},
		LeaseTTL: math.MaxInt32 * time.Millisecond})
	require.NoError(t, err, "the longest TTL PostgreSQL's idle timeout takes")
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
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints WHERE lease_owner = $1 AND projection = $2 AND lease_expires_at > now()`, owner, projection)
	}
	eventually(t, 20*time.Second, "a: 4 on both; b: 4 on only-b", func() bool {
		return owned("both", "a") == 4 && owned("both", "b") == 0 && owned("only-b", "b") == 4
	})
}

// Issue 10 item 7. Cancelling the context given to Start (a signal) is a
// soft stop: the batch in flight commits, the worker releases its leases
// and stops. A batch that outlasts SoftStopTimeout is cancelled (it rolls
// back) and the leases are released all the same.
func TestCancelledStartContextIsSoftStop(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		finishes  bool // the batch finishes within SoftStopTimeout
		softStop  time.Duration
		wantCount int
	}{
		{name: "batch commits", finishes: true, softStop: time.Minute, wantCount: 2},
		{name: "escalates after the timeout", finishes: false, softStop: 200 * time.Millisecond, wantCount: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool := pgtest.NewDB(t)
			setupRecorder(t, pool)
			inApply := make(chan struct{})
			release := make(chan struct{})
			var once sync.Once
			rec := &recorder{name: "rec", hook: func(ctx context.Context, b *projectors.Batch) error {
				once.Do(func() { close(inApply) })
				if tc.finishes {
					<-release
					return nil
				}
				<-ctx.Done() // only a hard stop ends this batch
				return ctx.Err()
			}}
			w, err := projectors.NewWorker(projectors.Config{Pool: pool, Projections: []projectors.Projection{rec},
				LeaseTTL: 5 * time.Second, PollInterval: 20 * time.Millisecond, SoftStopTimeout: tc.softStop, Logger: testLogger(t)})
			require.NoError(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			require.NoError(t, w.Start(ctx))
			t.Cleanup(func() { _ = w.Stop(context.Background()) })
			appendEvents(t, pool, "a", 0, `{}`, `{}`)
			<-inApply

			cancel() // what a SIGTERM does to a signal.NotifyContext
			close(release)
			select {
			case <-w.Stopped():
			case <-time.After(30 * time.Second):
				t.Fatal("the worker did not stop")
			}
			require.Equal(t, tc.wantCount, count(t, pool, `SELECT count(*) FROM applied`))
			require.Equal(t, 1, count(t, pool, `SELECT count(*) FROM readside.checkpoints WHERE lease_owner IS NULL`), "lease released")
			require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.workers`), "left the fleet")
		})
	}
}

// PollOnly (PgBouncer in transaction mode) never opens the LISTEN
// connection and still applies, woken by the poll.
func TestWorkerPollOnlyNeverListens(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	var listens atomic.Int32
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{&recorder{name: "rec"}},
		PollOnly: true, PollInterval: 20 * time.Millisecond, LeaseTTL: 2 * time.Second,
		ListenConnect: func(context.Context) (*pgx.Conn, error) {
			listens.Add(1)
			return nil, errors.New("no LISTEN through PgBouncer")
		}})
	for i := range 3 {
		appendEvents(t, pool, fmt.Sprintf("a%d", i), 0, `{}`)
		eventually(t, 60*time.Second, "applied by polling", func() bool {
			return count(t, pool, `SELECT count(*) FROM applied`) == i+1
		})
	}
	require.Zero(t, listens.Load(), "a poll-only worker opened a LISTEN connection")
}
