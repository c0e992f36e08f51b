package projectors_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgerr"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// Adversarial ordering (DESIGN.md guarantees 1-3): 16 writers with random
// transaction lengths, sleeps inside, 10% rollbacks and transactions that
// touch two aggregates, while 3 workers project. Every committed event is
// applied exactly once, per aggregate in version order (the recorder's
// unique key and predecessor check fail the batch otherwise, which parks the
// event), and nothing from a rolled-back transaction is applied.
func TestAdversarialOrdering(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)

	for i := range 3 {
		startWorker(t, projectors.Config{Pool: pool, WorkerID: fmt.Sprintf("w%d", i),
			Projections: []projectors.Projection{&recorder{name: "rec", segments: 4}},
			Concurrency: 2, BatchSize: 13, PollInterval: 50 * time.Millisecond, LeaseTTL: 2 * time.Second})
	}

	const writers, txPerWriter, aggregates = 16, 30, 24
	var committed, rolledBack, conflicts atomic.Int64
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for range txPerWriter {
				aggs := []string{fmt.Sprintf("agg-%d", rng.IntN(aggregates))}
				if rng.IntN(4) == 0 { // a quarter of the transactions touch two aggregates
					if other := fmt.Sprintf("agg-%d", rng.IntN(aggregates)); other != aggs[0] {
						aggs = append(aggs, other)
					}
				}
				rollback := rng.IntN(10) == 0
				n := 0
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					for _, id := range aggs {
						var v int
						if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM readside.events WHERE aggregate_type = 'Thing' AND aggregate_id = $1`, id).Scan(&v); err != nil {
							return err
						}
						time.Sleep(time.Duration(rng.IntN(8)) * time.Millisecond)
						k := 1 + rng.IntN(3)
						events := make([]outbox.NewEvent, k)
						for i := range events {
							events[i] = outbox.NewEvent{Type: "Touched", Data: []byte(`{}`)}
						}
						if _, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: "Thing", ID: id}, v, events); err != nil {
							return err
						}
						n += k
					}
					time.Sleep(time.Duration(rng.IntN(15)) * time.Millisecond)
					if rollback {
						return errRollback
					}
					return nil
				})
				switch {
				case err == nil:
					committed.Add(int64(n))
				case errors.Is(err, errRollback):
					rolledBack.Add(1)
				case errors.Is(err, outbox.ErrConcurrencyConflict), pgerr.Transient(err) == "deadlock":
					// Two writers taking the same two aggregates in opposite
					// orders deadlock; PostgreSQL rolls one back, as a real
					// writer would retry.
					conflicts.Add(1)
				default:
					t.Errorf("writer: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	want := int(committed.Load())
	require.Positive(t, want)
	require.Positive(t, rolledBack.Load())
	require.Equal(t, want, count(t, pool, `SELECT count(*) FROM readside.events`))

	eventually(t, 60*time.Second, "all committed events applied", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`)+count(t, pool, `SELECT count(*) FROM readside.dead_letters`) >= want
	})
	require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.dead_letters`), "an out-of-order or double apply was parked")
	require.Equal(t, want, count(t, pool, `SELECT count(*) FROM applied`))
	require.Equal(t, want, count(t, pool, `SELECT n FROM applied_count WHERE projection = 'rec'`), "exactly-once counter")
	require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.events e LEFT JOIN applied a
		ON a.aggregate_id = e.aggregate_id AND a.version = e.version AND a.event_id = e.id WHERE a.event_id IS NULL`))
	require.Zero(t, count(t, pool, `SELECT count(*) FROM applied a LEFT JOIN readside.events e ON e.id = a.event_id WHERE e.id IS NULL`),
		"nothing from rolled-back transactions")
	t.Logf("%d events committed, %d transactions rolled back, %d conflicts", want, rolledBack.Load(), conflicts.Load())
}

var errRollback = errors.New("rollback on purpose")
