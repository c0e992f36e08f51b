package projectors_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/deadletter"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

// A discard that commits while a retry of the same dead letter is applying
// it: one of the two wins. Either the discard reports the dead letter
// discarded and the event stays unapplied, or the retry applies it and the
// discard finds nothing parked; never "discarded" and applied.
func TestRetryRacingDiscardOfSameDeadLetter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	discardErr := make(chan error, 1)
	var discarded int
	var once sync.Once
	var retrying bool
	r := &recorder{name: "rec", segments: 1, failPoison: true}
	r.hook = func(ctx context.Context, b *projectors.Batch) error {
		if !retrying {
			return nil
		}
		// The retry is applying the dead letter: the operator's discard of
		// it runs now, from another connection.
		once.Do(func() {
			go func() {
				n, err := control.DiscardDeadLetters(context.Background(), pool, "rec", nil)
				discarded = n
				discardErr <- err
			}()
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				select {
				case err := <-discardErr:
					discardErr <- err // done first (no lock kept it out)
					return
				default:
				}
				var waiting int
				if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
					AND query LIKE '%FROM readside.checkpoints%FOR UPDATE%'`).Scan(&waiting); err == nil && waiting > 0 {
					return // the discard waits for the retry
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
		return nil
	}
	appendEvents(t, pool, "A", 0, `{"poison": true}`)
	w := startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{r}, MaxAttempts: 1,
		PollInterval: 20 * time.Millisecond, LeaseTTL: 2 * time.Second})
	eventually(t, 60*time.Second, "A1 parked", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE status = 'parked'`) == 1
	})
	stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, w.Stop(stopCtx))

	_, err := pool.Exec(ctx, `INSERT INTO cured VALUES ('A')`)
	require.NoError(t, err)
	retrying = true
	res, retryErr := control.RetryDeadLetters(ctx, pool, r, nil)
	err = <-discardErr
	applied := count(t, pool, `SELECT count(*) FROM applied`)
	var status string
	require.NoError(t, pool.QueryRow(ctx, `SELECT status FROM readside.dead_letters`).Scan(&status))
	if err == nil {
		require.Equal(t, 1, discarded)
		require.Zero(t, applied, "the discard reported success, yet the retry applied the event (status %s)", status)
		require.Equal(t, "discarded", status)
		require.Zero(t, res.Applied)
		return
	}
	require.ErrorIs(t, err, deadletter.ErrNothingToDiscard)
	require.NoError(t, retryErr)
	require.Equal(t, 1, applied)
	require.Equal(t, "retried", status)
}

// An event an operator discarded stays discarded through a rebuild: the
// copy does not apply it (even if the projection's code now accepts it),
// and the switch keeps its dead letter.
func TestRebuildKeepsDiscardedEventsDiscarded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	p := &recorder{name: "rec", segments: 1, failPoison: true}
	appendEvents(t, pool, "A", 0, `{"poison": true}`)
	appendEvents(t, pool, "B", 0, `{}`)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{p}, MaxAttempts: 1,
		PollInterval: 20 * time.Millisecond, LeaseTTL: 2 * time.Second})
	eventually(t, 60*time.Second, "B1 applied, A1 parked", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`) == 1 &&
			count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE status = 'parked'`) == 1
	})
	n, err := control.DiscardDeadLetters(ctx, pool, "rec", nil)
	require.NoError(t, err)
	require.Equal(t, 1, n)

	// The code now accepts A1; the projection is rebuilt.
	_, err = pool.Exec(ctx, `INSERT INTO cured VALUES ('A')`)
	require.NoError(t, err)
	require.NoError(t, control.StartRebuild(ctx, pool, p))
	startControl(t, control.Config{Pool: pool, Projections: []projectors.Projection{p}})
	res, err := jobs(t, pool).Enqueue(ctx, control.RebuildArgs{Projection: "rec"})
	require.NoError(t, err)
	waitJob(t, pool, res.Job.ID)
	require.Zero(t, count(t, pool, `SELECT count(*) FROM applied WHERE aggregate_id = 'A'`), "the rebuild applied a discarded event")
	require.Equal(t, 1, count(t, pool, `SELECT count(*) FROM applied WHERE aggregate_id = 'B'`))
	require.Equal(t, 1, count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE projection = 'rec' AND aggregate_id = 'A' AND status = 'discarded'`),
		"the discard survives the switch")
}

// An event applied once (side effect fired), then parked while the
// projection replays it after a reset (the code now refuses it), is a
// replay when an operator retries its dead letter: its side effect must not
// fire a second time.
func TestRetryOfEventParkedDuringReplayFiresOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	_, err := pool.Exec(ctx, `CREATE TABLE effects (event_id bigint NOT NULL)`)
	require.NoError(t, err)
	p := effectful{&recorder{name: "rec", segments: 1, failPoison: true}}
	_, err = pool.Exec(ctx, `INSERT INTO cured VALUES ('A')`)
	require.NoError(t, err)
	appendEvents(t, pool, "A", 0, `{"poison": true}`, `{}`)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{p}, MaxAttempts: 1,
		PollInterval: 20 * time.Millisecond, LeaseTTL: 2 * time.Second})
	eventually(t, 60*time.Second, "A1 and A2 applied", func() bool {
		return count(t, pool, `SELECT count(*) FROM effects`) == 2
	})

	// The projection's code changes (A1 is refused now) and it is replayed
	// from the start: A1 is parked, A2 blocked behind it.
	_, err = pool.Exec(ctx, `DELETE FROM cured`)
	require.NoError(t, err)
	require.NoError(t, control.MoveCheckpoints(ctx, pool, p, "start"))
	eventually(t, 60*time.Second, "A1 and A2 parked", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE status = 'parked'`) == 2
	})

	// Fixed again; the operator retries.
	_, err = pool.Exec(ctx, `INSERT INTO cured VALUES ('A')`)
	require.NoError(t, err)
	res, err := control.RetryDeadLetters(ctx, pool, p, nil)
	require.NoError(t, err)
	require.Equal(t, 2, res.Applied)
	require.Equal(t, 2, count(t, pool, `SELECT count(*) FROM applied`))
	require.Zero(t, count(t, pool, `SELECT count(*) FROM (SELECT event_id FROM effects GROUP BY 1 HAVING count(*) > 1) d`),
		"a side effect fired twice")
	require.Equal(t, 2, count(t, pool, `SELECT count(DISTINCT event_id) FROM effects`))
}

// A rebuild's copy only replays. Its dead letters carried over at the
// switch are replays for events the live projection had applied (retrying
// them must not fire their side effects again) and not for those the live
// projection had parked too (retrying them fires their side effects, once).
func TestRetryAfterRebuildFiresEachSideEffectOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	_, err := pool.Exec(ctx, `CREATE TABLE effects (event_id bigint NOT NULL)`)
	require.NoError(t, err)
	p := effectful{&recorder{name: "rec", segments: 1, failPoison: true}}
	// A applies (cured for now), B1 is parked by the live projection.
	_, err = pool.Exec(ctx, `INSERT INTO cured VALUES ('A')`)
	require.NoError(t, err)
	appendEvents(t, pool, "A", 0, `{"poison": true}`, `{}`)
	appendEvents(t, pool, "B", 0, `{"poison": true}`)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{p}, MaxAttempts: 1,
		PollInterval: 20 * time.Millisecond, LeaseTTL: 2 * time.Second})
	eventually(t, 60*time.Second, "A applied, B1 parked", func() bool {
		return count(t, pool, `SELECT count(*) FROM effects`) == 2 &&
			count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE projection = 'rec' AND status = 'parked'`) == 1
	})

	// The code changes (A1 is refused now) and the projection is rebuilt:
	// the copy parks A1, A2 and B1, and is switched in.
	_, err = pool.Exec(ctx, `DELETE FROM cured`)
	require.NoError(t, err)
	require.NoError(t, control.StartRebuild(ctx, pool, p))
	eventually(t, 60*time.Second, "the copy parked A1, A2, B1", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE projection = $1 AND status = 'parked'`, control.ShadowName("rec")) == 3
	})
	startControl(t, control.Config{Pool: pool, Projections: []projectors.Projection{p}})
	res, err := jobs(t, pool).Enqueue(ctx, control.RebuildArgs{Projection: "rec"})
	require.NoError(t, err)
	waitJob(t, pool, res.Job.ID)
	require.Equal(t, 3, count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE projection = 'rec' AND status = 'parked'`))

	// Fixed again; the operator retries.
	_, err = pool.Exec(ctx, `INSERT INTO cured VALUES ('A'), ('B')`)
	require.NoError(t, err)
	rr, err := control.RetryDeadLetters(ctx, pool, p, nil)
	require.NoError(t, err)
	require.Equal(t, 3, rr.Applied)
	require.Zero(t, count(t, pool, `SELECT count(*) FROM (SELECT event_id FROM effects GROUP BY 1 HAVING count(*) > 1) d`),
		"a side effect fired twice")
	require.Equal(t, 3, count(t, pool, `SELECT count(DISTINCT event_id) FROM effects`), "every side effect fired")
}
