package projectors_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/deadletter"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/internal/syncbuf"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// Guarantee 6, policy park: one event of aggregate X always fails. X's later
// events are parked behind it (its order survives), every other aggregate's
// events are applied.
func TestPoisonEventIsParkedWithItsAggregate(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)

	// 10 aggregates x 5 events; X's third event is poison.
	for i := range 10 {
		payloads := []string{`{}`, `{}`, `{}`, `{}`, `{}`}
		if i == 3 {
			payloads[2] = `{"poison": true}`
		}
		appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 0, payloads[:3]...)
	}
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{&recorder{name: "rec", failPoison: true}},
		BatchSize: 8, MaxAttempts: 3, RetryBackoff: time.Millisecond, PollInterval: 20 * time.Millisecond})
	// Later events of X arrive after it was parked: they are parked too.
	for i := range 10 {
		appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 3, `{}`, `{}`)
	}

	eventually(t, 30*time.Second, "all events applied or parked", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`)+count(t, pool, `SELECT count(*) FROM readside.dead_letters`) == 50
	})
	require.Equal(t, 47, count(t, pool, `SELECT count(*) FROM applied`))
	require.Equal(t, 2, count(t, pool, `SELECT count(*) FROM applied WHERE aggregate_id = 'agg-3'`), "X's events before the poison")
	var failed, blocked int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE reason = 'failed'),
		count(*) FILTER (WHERE reason = 'blocked') FROM readside.dead_letters WHERE aggregate_id = 'agg-3' AND status = 'parked'`).Scan(&failed, &blocked))
	require.Equal(t, 1, failed)
	require.Equal(t, 2, blocked)
	var attempts int
	var msg string
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT attempts, error FROM readside.dead_letters WHERE reason = 'failed'`).Scan(&attempts, &msg))
	require.Equal(t, 3, attempts)
	require.Contains(t, msg, "poison")
	require.Equal(t, 47, count(t, pool, `SELECT n FROM applied_count`), "exactly once despite retries and splits")
}

// Policy halt: the segment stops before the failing event, reports why, and
// applies nothing after it until resumed.
func TestPoisonEventHaltsSegment(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	appendEvents(t, pool, "a", 0, `{}`, `{}`)
	appendEvents(t, pool, "b", 0, `{"poison": true}`)
	appendEvents(t, pool, "c", 0, `{}`)

	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{&recorder{name: "rec", failPoison: true, onError: projectors.Halt}},
		MaxAttempts: 2, RetryBackoff: time.Millisecond, PollInterval: 20 * time.Millisecond})
	eventually(t, 30*time.Second, "segment halted", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints WHERE status = 'failed'`) == 1
	})
	cps, err := checkpoint.List(ctx, pool, "rec")
	require.NoError(t, err)
	require.Contains(t, cps[0].LastError, "poison")
	require.Contains(t, cps[0].LastError, "failed 2 times")
	require.Equal(t, 2, count(t, pool, `SELECT count(*) FROM applied`), "a's events, before the poison")
	require.Zero(t, count(t, pool, `SELECT count(*) FROM applied WHERE aggregate_id = 'c'`), "nothing after the poison")
	require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.dead_letters`))
	eventually(t, 10*time.Second, "a halted segment is given up", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints WHERE lease_owner IS NULL`) == 1
	})
}

// What a failing event carries is logged capped: a writer that put 5 MB
// into metadata.correlation_id and an aggregate id of 2 KB through the SQL
// contract does not put them whole into every retry's log line.
func TestFailingEventLogIsCapped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	huge := strings.Repeat("c", 5<<20)
	// Over the contract's 1 MiB limit: raised, as an owner may.
	_, err := pool.Exec(ctx, `SELECT readside.readside_set_max_event_bytes(8 << 20)`)
	require.NoError(t, err)
	aggID := "agg-" + strings.Repeat("i", 2000) // about the most a btree index entry holds
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: "Thing", ID: aggID}, 0,
			[]outbox.NewEvent{{Type: "Touched", Data: json.RawMessage(`{"poison": true}`), Metadata: outbox.Metadata{CorrelationID: huge}}})
		return err
	}))
	var logs syncbuf.Buffer
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{&recorder{name: "rec", failPoison: true}},
		MaxAttempts: 2, RetryBackoff: time.Millisecond, PollInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	eventually(t, 60*time.Second, "the poison event parked", func() bool {
		dls, err := deadletter.List(ctx, pool, deadletter.Filter{Projection: "rec"})
		return err == nil && len(dls) == 1
	})
	out := logs.String()
	require.Contains(t, out, "correlation_id=ccc", "the start of it is logged")
	require.Less(t, len(out), 64<<10, "log lines of a failing event with 5 MB of ids")
}
