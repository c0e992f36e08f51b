package projectors_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// counter is a projection that counts how often each event was applied,
// with no guard against a second apply: any duplicate shows as n = 2.
// Events whose payload has "poison": true fail unless their aggregate is in
// the cured table.
type counter struct {
	name string
	// hook, if set, runs first in each Apply.
	hook func(ctx context.Context, b *projectors.Batch)
}

const counterDDL = `
CREATE TABLE IF NOT EXISTS counted (
    projection   text   NOT NULL,
    aggregate_id text   NOT NULL,
    version      int    NOT NULL,
    event_id     bigint NOT NULL,
    n            int    NOT NULL,
    PRIMARY KEY (projection, aggregate_id, version)
);
CREATE TABLE IF NOT EXISTS cured (aggregate_id text PRIMARY KEY)`

func (c *counter) Spec() projectors.Spec {
	return projectors.Spec{Name: c.name, Tables: []string{"counted"}}
}

func (c *counter) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	if c.hook != nil {
		c.hook(ctx, b)
	}
	for _, e := range b.Events {
		var p struct {
			Poison bool `json:"poison"`
		}
		if err := json.Unmarshal(e.Data, &p); err != nil {
			return err
		}
		if p.Poison {
			var cured bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM cured WHERE aggregate_id = $1)`, e.AggregateID).Scan(&cured); err != nil {
				return err
			}
			if !cured {
				return fmt.Errorf("event %d: poison", e.ID())
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO counted (projection, aggregate_id, version, event_id, n) VALUES ($1, $2, $3, $4, 1)
			ON CONFLICT (projection, aggregate_id, version) DO UPDATE SET n = counted.n + 1`,
			c.name, e.AggregateID, e.Version, e.ID()); err != nil {
			return err
		}
	}
	return nil
}

func (c *counter) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `DELETE FROM counted WHERE projection = $1`, c.name)
	return err
}

// appendTx appends one event to each listed aggregate, in one transaction
// and in that order. Each entry is aggregate id, expected version, payload.
func appendTx(t *testing.T, pool *pgxpool.Pool, events ...[3]string) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for _, e := range events {
			var from int
			fmt.Sscan(e[1], &from)
			if _, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: "Thing", ID: e[0]}, from,
				[]outbox.NewEvent{{Type: "Touched", Data: json.RawMessage(e[2])}}); err != nil {
				return err
			}
		}
		return nil
	}))
}

// Issue 10 item 3. While isolating a failing event the runner commits only
// up to the event before it, and must not park anything beyond that cursor:
// it reads those events again, and a dead letter an operator retried or
// discarded in between would be applied (again).
//
// B1 is poison and parked. One transaction then appends X1, C1 (poison),
// B2. Attempt 1 at C1 commits X1 and stops before C1. The operator pauses
// the projection right then (queued behind the runner's row lock, so the
// runner reads nothing more), retries or discards the dead letters, and
// resumes.
func TestDeadLetterResolvedBeforeReread(t *testing.T) {
	t.Parallel()
	for _, op := range []string{"retry", "discard"} {
		t.Run(op, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := pgtest.NewDB(t)
			_, err := pool.Exec(ctx, counterDDL)
			require.NoError(t, err)

			inIsolation := make(chan struct{})
			proceed := make(chan struct{})
			var once sync.Once
			c := &counter{name: "cnt", hook: func(ctx context.Context, b *projectors.Batch) {
				// C1 alone is the isolation's attempt 1 at C1: hold it
				// until the operator's pause waits for the row lock.
				if len(b.Events) == 1 && b.Events[0].AggregateID == "C" {
					once.Do(func() {
						close(inIsolation)
						<-proceed
					})
				}
			}}
			appendEvents(t, pool, "B", 0, `{"poison": true}`)
			// The backoff before attempt 2 gives the pause, which waits for
			// attempt 1's row lock, time to take the row: a row lock's
			// waiter is not first in line for the row's next version, and
			// on a loaded machine attempt 2 (after a millisecond) took it
			// first, parked C1, and the discard then discarded it too.
			startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{c}, MaxAttempts: 2,
				RetryBackoff: time.Second, PollInterval: 20 * time.Millisecond, LeaseTTL: 2 * time.Second})
			eventually(t, 20*time.Second, "B1 parked", func() bool {
				return count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE aggregate_id = 'B' AND reason = 'failed'`) == 1
			})

			appendTx(t, pool, [3]string{"X", "0", `{}`}, [3]string{"C", "0", `{"poison": true}`}, [3]string{"B", "1", `{}`})
			<-inIsolation
			paused := make(chan error, 1)
			go func() {
				_, err := checkpoint.SetStatus(ctx, pool, "cnt", checkpoint.Paused)
				paused <- err
			}()
			eventually(t, 10*time.Second, "the pause waits for the runner's row lock", func() bool {
				return count(t, pool, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
					AND query LIKE '%UPDATE readside.checkpoints c SET status%'`) == 1
			})
			close(proceed)
			require.NoError(t, <-paused)
			require.Equal(t, 1, count(t, pool, `SELECT count(*) FROM counted WHERE aggregate_id = 'X'`), "attempt 1 committed X1")
			require.Zero(t, count(t, pool, `SELECT count(*) FROM counted WHERE aggregate_id = 'C'`))

			switch op {
			case "retry":
				_, err = pool.Exec(ctx, `INSERT INTO cured VALUES ('B')`)
				require.NoError(t, err)
				res, err := control.RetryDeadLetters(ctx, pool, c, nil)
				require.NoError(t, err)
				require.Zero(t, res.StillParked)
			case "discard":
				_, err := control.DiscardDeadLetters(ctx, pool, "cnt", nil)
				require.NoError(t, err)
			}
			_, err = checkpoint.SetStatus(ctx, pool, "cnt", checkpoint.Running)
			require.NoError(t, err)
			eventually(t, 20*time.Second, "C1 parked after its attempts", func() bool {
				return count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE aggregate_id = 'C' AND status = 'parked'`) == 1
			})
			eventually(t, 20*time.Second, "caught up", func() bool {
				return count(t, pool, `SELECT count(*) FROM readside.checkpoints c WHERE (c.cursor_txid, c.cursor_position) =
					(SELECT txid, id FROM readside.events ORDER BY txid DESC, id DESC LIMIT 1)`) == 1
			})

			require.Zero(t, count(t, pool, `SELECT count(*) FROM counted WHERE n > 1`), "an event was applied twice")
			require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.dead_letters d JOIN counted c ON c.event_id = d.event_id
				WHERE d.status = 'discarded'`), "a discarded event was applied")
			require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.dead_letters d JOIN counted c ON c.event_id = d.event_id
				WHERE d.status = 'parked'`), "a parked event was applied")
			require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.events e WHERE NOT EXISTS (SELECT 1 FROM counted c WHERE c.event_id = e.id)
				AND NOT EXISTS (SELECT 1 FROM readside.dead_letters d WHERE d.event_id = e.id)`), "an event was neither applied nor parked")
			require.Equal(t, 1, count(t, pool, `SELECT n FROM counted WHERE aggregate_id = 'B' AND version = 2`), "B2 applied once")
			var attempts int
			var reason string
			require.NoError(t, pool.QueryRow(ctx, `SELECT attempts, reason FROM readside.dead_letters WHERE aggregate_id = 'C'`).Scan(&attempts, &reason))
			require.Equal(t, "failed", reason)
			require.Equal(t, 2, attempts)
		})
	}
}

// Reading a parked event again (a reset moved the cursor back over it)
// leaves its dead letter as it was: the failed event keeps reason failed and
// its attempts, the one blocked behind it is not counted as a new attempt.
func TestDeadLetterUnchangedByReread(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := pool.Exec(ctx, counterDDL)
	require.NoError(t, err)
	c := &counter{name: "cnt"}
	appendEvents(t, pool, "B", 0, `{"poison": true}`, `{}`)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{c}, MaxAttempts: 2,
		RetryBackoff: time.Millisecond, PollInterval: 20 * time.Millisecond, LeaseTTL: time.Second})
	atHead := func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints c WHERE (c.cursor_txid, c.cursor_position) =
			(SELECT txid, id FROM readside.events ORDER BY txid DESC, id DESC LIMIT 1)`) == 1
	}
	eventually(t, 20*time.Second, "B parked", func() bool {
		return atHead() && count(t, pool, `SELECT count(*) FROM readside.dead_letters`) == 2
	})
	type row struct {
		Reason, Error string
		Attempts      int
	}
	rows := func() []row {
		r, err := pool.Query(ctx, `SELECT reason, error, attempts FROM readside.dead_letters ORDER BY version`)
		require.NoError(t, err)
		out, err := pgx.CollectRows(r, pgx.RowToStructByPos[row])
		require.NoError(t, err)
		return out
	}
	before := rows()
	require.Equal(t, "failed", before[0].Reason)
	require.Equal(t, 2, before[0].Attempts)

	require.NoError(t, control.MoveCheckpoints(ctx, pool, c, "cursor:"+outbox.Start.String()))
	require.False(t, atHead())
	eventually(t, 20*time.Second, "replayed to the head", atHead)
	require.Equal(t, before, rows())
	require.Zero(t, count(t, pool, `SELECT count(*) FROM counted`))
}

// A discarded event is never applied, also not when a reset to a cursor
// replays it (a reset to the start clears the dead letters instead).
func TestDiscardedEventNotAppliedOnReplay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := pool.Exec(ctx, counterDDL)
	require.NoError(t, err)
	c := &counter{name: "cnt"}
	appendEvents(t, pool, "B", 0, `{"poison": true}`, `{}`)
	appendEvents(t, pool, "X", 0, `{}`)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{c}, MaxAttempts: 2,
		RetryBackoff: time.Millisecond, PollInterval: 20 * time.Millisecond, LeaseTTL: time.Second})
	atHead := func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints c WHERE (c.cursor_txid, c.cursor_position) =
			(SELECT txid, id FROM readside.events ORDER BY txid DESC, id DESC LIMIT 1)`) == 1
	}
	eventually(t, 20*time.Second, "B parked, X applied", func() bool {
		return atHead() && count(t, pool, `SELECT count(*) FROM readside.dead_letters`) == 2
	})
	n, err := control.DiscardDeadLetters(ctx, pool, "cnt", nil)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	_, err = pool.Exec(ctx, `INSERT INTO cured VALUES ('B')`) // B1 would apply now
	require.NoError(t, err)

	require.NoError(t, control.MoveCheckpoints(ctx, pool, c, "cursor:"+outbox.Start.String()))
	require.False(t, atHead())
	eventually(t, 20*time.Second, "replayed to the head", atHead)
	require.Zero(t, count(t, pool, `SELECT count(*) FROM counted WHERE aggregate_id = 'B'`), "a discarded event was applied")
	require.Equal(t, 2, count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE status = 'discarded'`))
	require.Equal(t, 2, count(t, pool, `SELECT n FROM counted WHERE aggregate_id = 'X'`), "X replayed (a counter counts twice)")

	appendEvents(t, pool, "B", 2, `{}`)
	eventually(t, 20*time.Second, "B flows again", func() bool {
		return count(t, pool, `SELECT count(*) FROM counted WHERE aggregate_id = 'B' AND version = 3`) == 1
	})
}
