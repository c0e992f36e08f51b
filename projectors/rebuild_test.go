package projectors_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

// effectful is the recorder with a side effect: a row in effects (outside
// its tables, like a River job) for every event it applies outside a replay.
type effectful struct{ *recorder }

func (p effectful) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	if err := p.recorder.Apply(ctx, tx, b); err != nil {
		return err
	}
	if b.Replay {
		return nil
	}
	ids := make([]int64, len(b.Events))
	for i, e := range b.Events {
		ids[i] = e.ID()
	}
	_, err := tx.Exec(ctx, `INSERT INTO public.effects (event_id) SELECT unnest($1::bigint[])`, ids)
	return err
}

// Events the live projection applies while a rebuild is in progress have
// fired their side effects; the copy must not fire them again, before or
// after the switch: every event fires exactly once.
func TestRebuildFiresSideEffectsOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	_, err := pool.Exec(ctx, `CREATE TABLE effects (event_id bigint NOT NULL)`)
	require.NoError(t, err)
	p := effectful{&recorder{name: "rec", segments: 2}}
	for i := range 10 {
		appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 0, `{}`, `{}`)
	}
	for i := range 2 {
		startWorker(t, projectors.Config{Pool: pool, WorkerID: fmt.Sprintf("w%d", i), Projections: []projectors.Projection{p},
			BatchSize: 5, PollInterval: 20 * time.Millisecond, LeaseTTL: time.Second})
	}
	caughtUp(t, pool)
	require.Equal(t, 20, count(t, pool, `SELECT count(*) FROM effects`))

	// The rebuild starts; the live projection keeps applying new events
	// (and firing their side effects) before the copy gets to them.
	require.NoError(t, control.StartRebuild(ctx, pool, p))
	for i := range 10 {
		appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 2, `{}`, `{}`)
	}
	caughtUp(t, pool)
	eventually(t, 20*time.Second, "the copy caught up", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints s JOIN readside.checkpoints l ON l.segment = s.segment AND l.projection = 'rec'
			WHERE s.projection = $1 AND (s.cursor_txid, s.cursor_position) >= (l.cursor_txid, l.cursor_position)`, control.ShadowName("rec")) == 2
	})

	startControl(t, control.Config{Pool: pool, Projections: []projectors.Projection{p}})
	res, err := jobs(t, pool).Enqueue(ctx, control.RebuildArgs{Projection: "rec"})
	require.NoError(t, err)
	waitJob(t, pool, res.Job.ID)
	for i := range 10 {
		appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 4, `{}`)
	}
	caughtUp(t, pool)
	require.Zero(t, count(t, pool, `SELECT count(*) FROM readside.dead_letters`))
	require.Equal(t, 50, count(t, pool, `SELECT count(*) FROM applied`))
	require.Zero(t, count(t, pool, `SELECT count(*) FROM (SELECT event_id FROM effects GROUP BY 1 HAVING count(*) > 1) d`),
		"no side effect fired twice")
	require.Equal(t, 50, count(t, pool, `SELECT count(DISTINCT event_id) FROM effects`), "every side effect fired")
	require.Equal(t, count(t, pool, `SELECT count(*) FROM readside.events`), count(t, pool, `SELECT count(*) FROM effects e JOIN readside.events v ON v.id = e.event_id`))
}

// A crash between a switch's commit and the drop of the retired tables
// leaves their schema behind (issue 23 item 3): the next switch of the
// projection drops it first instead of failing on it until an operator
// does.
func TestSwitchAfterLeftoverRetiredSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	p := &recorder{name: "rec"}
	appendEvents(t, pool, "a", 0, `{}`, `{}`)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{p}, PollInterval: 20 * time.Millisecond})
	caughtUp(t, pool)
	// What a switch that crashed after its commit leaves: the retired
	// tables in their schema.
	_, err := pool.Exec(ctx, `CREATE SCHEMA readside_retired_rec; CREATE TABLE readside_retired_rec.applied (LIKE applied)`)
	require.NoError(t, err)

	require.NoError(t, control.StartRebuild(ctx, pool, p))
	startControl(t, control.Config{Pool: pool, Projections: []projectors.Projection{p}, RebuildCheck: 20 * time.Millisecond})
	res, err := jobs(t, pool).Enqueue(ctx, control.RebuildArgs{Projection: "rec"})
	require.NoError(t, err)
	var lastErr string
	eventually(t, 30*time.Second, "switched in", func() bool {
		state, e, err := jobs(t, pool).State(ctx, res.Job.ID)
		require.NoError(t, err)
		lastErr = e
		require.Empty(t, lastErr, "the switch failed")
		return state == "completed"
	})
	require.Zero(t, count(t, pool, `SELECT count(*) FROM pg_namespace WHERE nspname IN ('readside_retired_rec', $1)`,
		control.ShadowSchema("readside", "rec")))
	appendEvents(t, pool, "a", 2, `{}`)
	caughtUp(t, pool)
	require.Equal(t, 3, count(t, pool, `SELECT count(*) FROM applied`))
}
