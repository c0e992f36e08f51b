package projectors_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/notifications"
)

func startControl(t *testing.T, cfg control.Config) *control.Control {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	cfg.PruneInterval = -1
	cfg.RebuildCheck = 100 * time.Millisecond
	c, err := control.New(cfg)
	require.NoError(t, err)
	require.NoError(t, c.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, c.Stop(ctx))
	})
	return c
}

// load appends events to n aggregates from 4 goroutines until stop is
// closed, and returns how many it appended.
func load(t *testing.T, pool *pgxpool.Pool, aggregates int, stop <-chan struct{}) func() int {
	var n atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("agg-%d", (w*1000+i)%aggregates)
				err := pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
					var v int
					if err := tx.QueryRow(context.Background(), `SELECT coalesce(max(version), 0) FROM readside.events WHERE aggregate_id = $1`, id).Scan(&v); err != nil {
						return err
					}
					_, err := outbox.Append(context.Background(), tx, outbox.Aggregate{Type: "Thing", ID: id}, v, []outbox.NewEvent{{Type: "Touched", Data: []byte(`{}`)}})
					return err
				})
				if err == nil {
					n.Add(1)
				}
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	return func() int { wg.Wait(); return int(n.Load()) }
}

func waitJob(t *testing.T, pool *pgxpool.Pool, id int64) {
	t.Helper()
	eventually(t, 60*time.Second, fmt.Sprintf("job %d completed", id), func() bool {
		state, lastErr, err := jobs(t, pool).State(context.Background(), id)
		require.NoError(t, err)
		require.NotContains(t, []string{"cancelled", "discarded"}, string(state), lastErr)
		return state == "completed"
	})
}

func caughtUp(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	want := count(t, pool, `SELECT count(*) FROM readside.events`)
	eventually(t, 60*time.Second, "caught up", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`)+count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE status = 'parked'`) >= want
	})
}

// Reset while 3 workers run under load: after catch-up the read model equals
// a fresh build, and no fenced worker applied a batch across the reset (it
// would have collided with the replay: the recorder parks a double apply,
// and its counter would not match).
func TestResetUnderLoad(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	for i := range 3 {
		startWorker(t, projectors.Config{Pool: pool, WorkerID: fmt.Sprintf("w%d", i), Projections: []projectors.Projection{&recorder{name: "rec", segments: 4}},
			BatchSize: 10, PollInterval: 50 * time.Millisecond, LeaseTTL: time.Second})
	}
	startControl(t, control.Config{Pool: pool, Projections: []projectors.Projection{&recorder{name: "rec", segments: 4}}})

	stop := make(chan struct{})
	done := load(t, pool, 30, stop)
	eventually(t, 20*time.Second, "some progress", func() bool { return count(t, pool, `SELECT count(*) FROM applied`) > 100 })
	res, err := jobs(t, pool).Enqueue(ctx, control.ResetArgs{Projection: "rec", To: "start"})
	require.NoError(t, err)
	waitJob(t, pool, res.Job.ID)
	time.Sleep(300 * time.Millisecond) // let load continue across the reset
	close(stop)
	appended := done()
	caughtUp(t, pool)

	total := count(t, pool, `SELECT count(*) FROM readside.events`)
	require.Equal(t, appended, total)
	require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.dead_letters`), "a double or out-of-order apply was parked")
	require.Equal(t, total, count(t, pool, `SELECT count(*) FROM applied`))
	require.Equal(t, total, count(t, pool, `SELECT n FROM applied_count`), "exactly once across the reset")
	require.Positive(t, count(t, pool, `SELECT count(*) FROM applied WHERE replay`), "history before the reset was flagged as replay")
	require.Positive(t, count(t, pool, `SELECT count(*) FROM applied WHERE NOT replay`))
}

// Blue/green rebuild under concurrent reads: readers never see fewer rows
// than before the switch, and the switched-in tables equal a fresh build.
func TestRebuildNeverShrinksForReaders(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	for i := range 40 {
		appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 0, `{}`, `{}`, `{}`, `{}`, `{}`)
	}
	for i := range 2 {
		startWorker(t, projectors.Config{Pool: pool, WorkerID: fmt.Sprintf("w%d", i), Projections: []projectors.Projection{&recorder{name: "rec", segments: 2}},
			BatchSize: 20, PollInterval: 50 * time.Millisecond, LeaseTTL: time.Second})
	}
	startControl(t, control.Config{Pool: pool, Projections: []projectors.Projection{&recorder{name: "rec", segments: 2}}})
	caughtUp(t, pool)

	stopReads := make(chan struct{})
	var reads atomic.Int64
	var readErr atomic.Value
	var readers sync.WaitGroup
	for range 3 {
		readers.Go(func() {
			last := 0
			for {
				select {
				case <-stopReads:
					return
				default:
				}
				var n int
				if err := pool.QueryRow(ctx, `SELECT count(*) FROM applied`).Scan(&n); err != nil {
					readErr.Store(err.Error())
					return
				}
				if n < last {
					readErr.Store(fmt.Sprintf("a reader saw %d rows after %d", n, last))
					return
				}
				last = n
				reads.Add(1)
			}
		})
	}
	stop := make(chan struct{})
	done := load(t, pool, 40, stop)
	res, err := jobs(t, pool).Enqueue(ctx, control.RebuildArgs{Projection: "rec"})
	require.NoError(t, err)
	eventually(t, 10*time.Second, "rebuild started", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.projections WHERE rebuild_of = 'rec'`) == 1
	})
	waitJob(t, pool, res.Job.ID)
	close(stop)
	done()
	caughtUp(t, pool)
	close(stopReads)
	readers.Wait()
	require.Nil(t, readErr.Load())
	require.Positive(t, reads.Load())

	total := count(t, pool, `SELECT count(*) FROM readside.events`)
	require.Equal(t, total, count(t, pool, `SELECT count(*) FROM applied`))
	require.Equal(t, total, count(t, pool, `SELECT n FROM applied_count`))
	require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.projections WHERE rebuild_of IS NOT NULL`))
	require.Zero(t, count(t, pool, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'readside_%'`), "shadow and retired schemas dropped")
	require.Positive(t, count(t, pool, `SELECT count(*) FROM applied WHERE replay`), "the copy flagged history as replay")
}

// Pruning then reset-to-start rebuilds the same tables: pruned history is
// replayed from the events table.
func TestPruneThenReplayFromStart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	for i := range 30 {
		appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 0, `{}`, `{}`, `{}`)
	}
	rec := &recorder{name: "rec", segments: 2}
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{rec}, BatchSize: 7, PollInterval: 50 * time.Millisecond})
	caughtUp(t, pool)
	eventually(t, 10*time.Second, "every segment's cursor at the head", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints c, (SELECT txid, position FROM readside.outbox
			ORDER BY txid DESC, position DESC LIMIT 1) h WHERE (c.cursor_txid, c.cursor_position) < (h.txid, h.position)`) == 0
	})
	before := dumpApplied(t, pool)

	n, horizon, err := control.PruneOutbox(ctx, pool, -1)
	require.NoError(t, err)
	require.Equal(t, int64(90), n)
	require.NotEqual(t, outbox.Start, horizon)
	require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.outbox`))

	require.NoError(t, control.MoveCheckpoints(ctx, pool, rec, "start"))
	caughtUp(t, pool)
	require.Equal(t, before, dumpApplied(t, pool))
	require.Equal(t, 90, count(t, pool, `SELECT n FROM applied_count`))

	// New events after the horizon flow as usual.
	appendEvents(t, pool, "agg-0", 3, `{}`)
	eventually(t, 10*time.Second, "new event applied", func() bool { return count(t, pool, `SELECT count(*) FROM applied`) == 91 })

	// Pruning keeps rows a projection has not passed, and young rows.
	n, _, err = control.PruneOutbox(ctx, pool, time.Hour)
	require.NoError(t, err)
	require.Zero(t, n, "retention keeps young rows")
}

func dumpApplied(t *testing.T, pool *pgxpool.Pool) string {
	var s string
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT coalesce(string_agg(aggregate_id || ':' || version || ':' || event_id, ',' ORDER BY aggregate_id, version), '') FROM applied`).Scan(&s))
	return s
}

// Side effects: a River job per shipped order, enqueued inside the apply
// transaction: exactly once per event, also across a reset to the start
// (the replay enqueues nothing), and new events after the replay enqueue
// again.
func TestSideEffectsExactlyOnceAcrossReset(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	shipOrders := func(from, to int) {
		for i := from; i < to; i++ {
			data, _ := json.Marshal(domain.OrderShipped{OrderID: fmt.Sprintf("o-%d", i), ShippedAt: time.Now(), TrackingNumber: fmt.Sprintf("T%d", i)})
			require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				_, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: domain.OrderAggregate, ID: fmt.Sprintf("o-%d", i)}, 0,
					[]outbox.NewEvent{{Type: domain.OrderShippedType, Data: data}})
				return err
			}))
		}
	}
	jobs := func() int {
		return count(t, pool, `SELECT count(*) FROM readside.river_job WHERE kind = 'order_shipped_notification'`)
	}
	dupes := func() int {
		return count(t, pool, `SELECT count(*) FROM (SELECT args->>'event_id' FROM readside.river_job WHERE kind = 'order_shipped_notification'
			GROUP BY 1 HAVING count(*) > 1) d`)
	}
	p := notifications.New()
	shipOrders(0, 20)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{p}, PollInterval: 50 * time.Millisecond})
	startControl(t, control.Config{Pool: pool, Projections: []projectors.Projection{p}})
	eventually(t, 20*time.Second, "20 notifications sent", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.order_notifications`) == 20
	})
	require.Equal(t, 20, jobs())

	require.NoError(t, control.MoveCheckpoints(ctx, pool, p, "start"))
	eventually(t, 20*time.Second, "replayed to the head", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints WHERE projection = $1 AND events_applied >= 20
			AND (cursor_txid, cursor_position) = (high_txid, high_position)`, notifications.Name) == 1
	})
	require.Equal(t, 20, jobs(), "the replay enqueued nothing")

	shipOrders(20, 25)
	eventually(t, 20*time.Second, "25 notifications sent", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.order_notifications`) == 25
	})
	require.Equal(t, 25, jobs())
	require.Zero(t, dupes())
}

// Side effects fire once also across a repair and a dead-letter retry of
// events re-parked by a replay (issue 23 item 1): an order's shipped event
// notified, a later null event parked, the checkpoint moved back before
// the shipped one (which is parked again, blocked behind the null one),
// the null one discarded; repairing the order, or retrying its dead
// letters, applies the shipped event again: no second notification.
func TestSideEffectsExactlyOnceAcrossRepairAndRetry(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"repair", "retry"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := pgtest.NewDB(t)
			p := notifications.New()
			agg := outbox.Aggregate{Type: domain.OrderAggregate, ID: "o-1"}
			write := func(version int, typ, data string) *outbox.AppendResult {
				var res *outbox.AppendResult
				require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					r, err := outbox.Append(ctx, tx, agg, version-1, []outbox.NewEvent{{Type: typ, Data: json.RawMessage(data)}})
					res = r
					return err
				}))
				return res
			}
			shipped, _ := json.Marshal(domain.OrderShipped{OrderID: "o-1", ShippedAt: time.Now(), TrackingNumber: "T1"})
			write(1, domain.OrderPlacedType, `{"order_id": "o-1"}`)
			write(2, domain.OrderConfirmedType, `{"order_id": "o-1"}`)
			v3 := write(3, domain.OrderShippedType, string(shipped))
			jobs := func() int {
				return count(t, pool, `SELECT count(*) FROM readside.river_job WHERE kind = 'order_shipped_notification' AND (args->>'event_id')::bigint = $1`, v3.Positions[0])
			}
			startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{p}, PollInterval: 20 * time.Millisecond})
			eventually(t, 20*time.Second, "v3 notified", func() bool { return jobs() == 1 })
			// Through the SQL contract: Append refuses a payload that is not
			// an object.
			v4 := &outbox.AppendResult{Positions: []int64{0}}
			require.NoError(t, pool.QueryRow(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
				VALUES ($1, $2, $3, 'null', 4) RETURNING id`, agg.Type, agg.ID, domain.OrderShippedType).Scan(&v4.Positions[0]))
			parked := func(id int64, reason string) func() bool {
				return func() bool {
					return count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE projection = $1 AND event_id = $2
						AND status = 'parked' AND reason = $3`, notifications.Name, id, reason) == 1
				}
			}
			eventually(t, 20*time.Second, "v4 parked", parked(v4.Positions[0], "failed"))

			to := outbox.Cursor{TxID: v3.TxID, Position: v3.Positions[0] - 1}
			require.NoError(t, control.MoveCheckpoints(ctx, pool, p, "cursor:"+to.String()))
			eventually(t, 20*time.Second, "v3 parked again, blocked", parked(v3.Positions[0], "blocked"))
			var dl int64
			require.NoError(t, pool.QueryRow(ctx, `SELECT id FROM readside.dead_letters WHERE projection = $1 AND event_id = $2`,
				notifications.Name, v4.Positions[0]).Scan(&dl))
			_, err := control.DiscardDeadLetters(ctx, pool, notifications.Name, []int64{dl})
			require.NoError(t, err)

			if how == "repair" {
				res, err := control.Repair(ctx, pool, p, control.RepairOptions{AggregateIDs: []string{"o-1"}})
				require.NoError(t, err)
				require.Equal(t, 1, res[0].Unparked)
			} else {
				res, err := control.RetryDeadLetters(ctx, pool, p, nil)
				require.NoError(t, err)
				require.Equal(t, 1, res.Applied)
			}
			require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE status = 'parked'`))
			require.Equal(t, 1, jobs(), "one notification for the shipped order")
		})
	}
}

// Dead-letter retry preserves per-aggregate order: the parked poison event
// and the events parked behind it are applied in version order once the
// cause is fixed (the recorder checks each event's predecessor).
func TestDeadLetterRetryKeepsOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	rec := &recorder{name: "rec", failPoison: true}
	appendEvents(t, pool, "x", 0, `{}`, `{"poison": true}`, `{}`)
	appendEvents(t, pool, "y", 0, `{}`, `{}`)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{rec}, MaxAttempts: 2,
		RetryBackoff: time.Millisecond, PollInterval: 50 * time.Millisecond})
	appendEvents(t, pool, "x", 3, `{}`, `{}`)
	caughtUp(t, pool)
	require.Equal(t, 4, count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE status = 'parked'`))

	// Retrying before the fix: the poison fails again, nothing moves.
	res, err := control.RetryDeadLetters(ctx, pool, rec, nil)
	require.NoError(t, err)
	require.Equal(t, control.RetryResult{Applied: 0, StillParked: 4}, res)

	_, err = pool.Exec(ctx, `INSERT INTO cured VALUES ('x')`)
	require.NoError(t, err)
	startControl(t, control.Config{Pool: pool, Projections: []projectors.Projection{rec}})
	job, err := jobs(t, pool).Enqueue(ctx, control.RetryDeadLettersArgs{Projection: "rec"})
	require.NoError(t, err)
	waitJob(t, pool, job.Job.ID)
	require.Equal(t, 7, count(t, pool, `SELECT count(*) FROM applied`))
	require.Equal(t, 4, count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE status = 'retried'`))
	require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE status = 'parked'`))

	// The aggregate flows again.
	appendEvents(t, pool, "x", 5, `{}`)
	eventually(t, 10*time.Second, "x flows", func() bool { return count(t, pool, `SELECT count(*) FROM applied`) == 8 })
	_, err = control.RetryDeadLetters(ctx, pool, rec, nil)
	require.ErrorIs(t, err, control.ErrNothingToRetry)
}

// A batch that straddles the high-water mark after a reset is split: the
// events applied before the reset go to the projection flagged Replay, the
// new ones not, so side effects fire exactly for the new ones.
func TestReplayFlagSplitsAtHighWater(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	rec := &recorder{name: "rec", segments: 2}
	for i := range 10 {
		appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 0, `{}`)
	}
	w := startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{rec}, PollInterval: 20 * time.Millisecond})
	eventually(t, 20*time.Second, "10 applied", func() bool { return count(t, pool, `SELECT count(*) FROM applied`) == 10 })
	require.NoError(t, w.Stop(ctx))

	require.NoError(t, control.MoveCheckpoints(ctx, pool, rec, "start"))
	for i := range 10 {
		appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 1, `{}`)
	}
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{rec}, PollInterval: 20 * time.Millisecond})
	eventually(t, 20*time.Second, "20 applied", func() bool { return count(t, pool, `SELECT count(*) FROM applied`) == 20 })
	require.Equal(t, 10, count(t, pool, `SELECT count(*) FROM applied WHERE replay AND version = 1`), "history is a replay")
	require.Equal(t, 10, count(t, pool, `SELECT count(*) FROM applied WHERE NOT replay AND version = 2`), "new events are not")
}

func jobs(t *testing.T, pool *pgxpool.Pool) *control.Jobs {
	t.Helper()
	j, err := control.NewJobs(pool, "")
	require.NoError(t, err)
	return j
}
