package projectors_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

// Fencing (guarantee 5): a worker stalls inside its apply transaction past
// its lease TTL (a long GC pause, a SIGSTOP). Another worker takes the
// segment over and applies the batch; when the stalled worker wakes it
// commits nothing, and the batch was applied exactly once.
func TestStalledWorkerIsFenced(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	appendEvents(t, pool, "a", 0, `{}`, `{}`, `{}`)

	stalled := make(chan struct{})
	wake := make(chan struct{})
	var once sync.Once
	stall := &recorder{name: "rec", hook: func(ctx context.Context, b *projectors.Batch) error {
		once.Do(func() {
			close(stalled)
			<-wake // holds the transaction (and the row lock) open
		})
		return nil
	}}
	reg1 := prometheus.NewRegistry()
	ttl := time.Second
	startWorker(t, projectors.Config{Pool: pool, WorkerID: "stalled", Projections: []projectors.Projection{stall},
		LeaseTTL: ttl, PollInterval: 50 * time.Millisecond, RetryBackoff: 10 * time.Millisecond, Registerer: reg1})
	<-stalled

	startWorker(t, projectors.Config{Pool: pool, WorkerID: "rescuer", Projections: []projectors.Projection{&recorder{name: "rec"}},
		LeaseTTL: ttl, PollInterval: 50 * time.Millisecond})
	eventually(t, 20*time.Second, "rescuer applies the batch", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`) == 3
	})
	require.Equal(t, 1, count(t, pool, `SELECT count(*) FROM readside.checkpoints WHERE lease_owner = 'rescuer'`))

	close(wake) // the stalled worker carries on with its transaction
	eventually(t, 20*time.Second, "stalled worker notices it lost the lease", func() bool {
		return counterValue(t, reg1, "readside_projector_lease_losses_total")+counterValue(t, reg1, "readside_projector_fenced_commits_total") > 0
	})
	appendEvents(t, pool, "a", 3, `{}`)
	eventually(t, 10*time.Second, "new events applied by the rescuer", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`) == 4
	})
	require.Equal(t, 4, count(t, pool, `SELECT n FROM applied_count`), "the batch was applied once")
	require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.dead_letters`))
	_ = ctx
}

func counterValue(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// A segment busy all the time holds its row lock so often that the renewal
// (which skips locked rows rather than wait) rarely reaches it; its batches
// renew the lease themselves, so a busy owner never loses it.
func TestBusySegmentKeepsItsLease(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	reg := prometheus.NewRegistry()
	busy := &recorder{name: "rec", hook: func(ctx context.Context, _ *projectors.Batch) error {
		select { // every batch holds the checkpoint row for a while
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(150 * time.Millisecond):
			return nil
		}
	}}
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{busy}, BatchSize: 5,
		LeaseTTL: 600 * time.Millisecond, PollInterval: 20 * time.Millisecond, Registerer: reg})
	for i := range 60 {
		appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 0, `{}`, `{}`)
	}
	eventually(t, 60*time.Second, "backlog applied", func() bool { return count(t, pool, `SELECT count(*) FROM applied`) == 120 })
	require.Zero(t, counterValue(t, reg, "readside_projector_lease_losses_total"), "the busy owner lost its lease")
	require.Zero(t, counterValue(t, reg, "readside_projector_fenced_commits_total"))
	require.Equal(t, 1.0, counterValue(t, reg, "readside_projector_lease_claims_total"))
}

// outliver wraps counter: applying aggregate A's event on its own (which
// only the isolation's bisection does) takes until the segment's lease has
// expired. The wait runs in SQL, so the transaction is never idle.
type outliver struct{ *counter }

func (o outliver) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	if len(b.Events) == 1 && b.Events[0].AggregateID == "A" {
		if _, err := tx.Exec(ctx, `DO $$ BEGIN
			WHILE (SELECT lease_expires_at FROM readside.checkpoints WHERE projection = 'slow') > clock_timestamp() LOOP
				PERFORM pg_sleep(0.01);
			END LOOP;
		END $$`); err != nil {
			return err
		}
	}
	return o.counter.Apply(ctx, tx, b)
}

// Issue 10 item 6. An isolation (bisection) that outlives the lease TTL
// still holds the checkpoint row lock taken by its first fenced UPDATE, so
// nobody can have claimed the segment: it commits what came before the
// failing event, and the failing event reaches MaxAttempts and is parked
// instead of looping, fenced each time, with its attempts forgotten.
func TestSlowIsolationIsNotFenced(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	_, err := pool.Exec(context.Background(), counterDDL)
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	appendTx(t, pool, [3]string{"A", "0", `{}`}, [3]string{"B", "0", `{"poison": true}`})
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{outliver{&counter{name: "slow"}}},
		MaxAttempts: 2, RetryBackoff: time.Millisecond, LeaseTTL: 500 * time.Millisecond, PollInterval: 20 * time.Millisecond,
		Registerer: reg})
	eventually(t, 20*time.Second, "B1 parked after 2 attempts", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE aggregate_id = 'B' AND reason = 'failed' AND attempts = 2`) == 1
	})
	require.Equal(t, 1, count(t, pool, `SELECT n FROM counted WHERE aggregate_id = 'A'`))
	require.Zero(t, counterValue(t, reg, "readside_projector_fenced_commits_total"))
	require.Zero(t, counterValue(t, reg, "readside_projector_lease_losses_total"))
}
