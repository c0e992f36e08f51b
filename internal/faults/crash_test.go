package faults

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/migrations"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// counting is a projection that counts its events in a plain counter (right
// only if every batch commits exactly once) beside a row per event.
type counting struct{}

func (counting) Spec() projectors.Spec {
	return projectors.Spec{Name: "counting", Segments: 2, Tables: []string{"crash_seen", "crash_count"}}
}

func (counting) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	ids := make([]int64, len(b.Events))
	for i, e := range b.Events {
		ids[i] = e.ID()
	}
	if _, err := tx.Exec(ctx, `INSERT INTO crash_seen (event_id) SELECT unnest($1::bigint[])`, ids); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO crash_count (id, n) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET n = crash_count.n + excluded.n`, len(ids))
	return err
}

func (counting) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `TRUNCATE crash_seen, crash_count`)
	return err
}

// A crash of the server undoes the apply transactions it had not written to
// disk yet (they commit asynchronously), read model and checkpoint
// together: the worker applies those events again and every one counts
// once. The WAL writer, background writer and checkpointer are stopped
// (SIGSTOP) while the worker applies, so that nothing writes the WAL of
// those commits before the crash (the writer's own commits are synchronous
// and come first); the test checks that the crash did undo applied batches,
// else it would prove nothing.
func TestCrashUndoesAsynchronousApplies(t *testing.T) {
	ctx := context.Background()
	cl, url := startCluster(ctx, t)
	pool := func() *pgxpool.Pool {
		cfg, err := pgxpool.ParseConfig(url)
		require.NoError(t, err)
		p, err := pgxpool.NewWithConfig(ctx, cfg)
		require.NoError(t, err)
		t.Cleanup(p.Close)
		return p
	}
	admin := pool()
	_, err := migrations.Migrate(ctx, admin, migrations.Config{})
	require.NoError(t, err)
	_, err = admin.Exec(ctx, `CREATE TABLE readside.crash_seen (event_id bigint PRIMARY KEY);
		CREATE TABLE readside.crash_count (id int PRIMARY KEY, n bigint NOT NULL)`)
	require.NoError(t, err)

	const first, second = 40, 40
	appendAll := func(from, n int) {
		for i := from; i < from+n; i++ {
			err := pgx.BeginFunc(ctx, admin, func(tx pgx.Tx) error {
				_, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: "Thing", ID: fmt.Sprintf("t-%d", i)}, 0,
					[]outbox.NewEvent{{Type: "Touched", Data: []byte(`{}`)}})
				return err
			})
			require.NoError(t, err)
		}
	}
	applied := func(p *pgxpool.Pool) (seen, counted, checkpoints int) {
		require.NoError(t, p.QueryRow(ctx, `SELECT (SELECT count(*) FROM readside.crash_seen),
			(SELECT coalesce(sum(n), 0) FROM readside.crash_count),
			(SELECT coalesce(sum(events_applied), 0) FROM readside.checkpoints WHERE projection = 'counting')`).Scan(&seen, &counted, &checkpoints))
		return seen, counted, checkpoints
	}
	start := func(p *pgxpool.Pool) *projectors.Worker {
		// Lease renewals (with the heartbeat) commit synchronously,
		// flushing the WAL: the first at start, the next 15 s later, well
		// after the crash (a few seconds in), so none falls between the
		// last apply and the crash. That next one finds the undone
		// batches.
		w, err := projectors.NewWorker(projectors.Config{Pool: p, Projections: []projectors.Projection{counting{}},
			LeaseTTL: time.Minute, PollInterval: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		require.NoError(t, err)
		require.NoError(t, w.Start(ctx))
		return w
	}
	stop := func(w *projectors.Worker) {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_ = w.Stop(sctx)
	}

	wp := pool()
	w := start(wp)
	appendAll(0, first)
	waitUntil(t, time.Minute, "first events applied", func() bool { s, _, _ := applied(admin); return s == first })

	// Nothing writes the WAL from here until the crash but the writer's
	// synchronous commits, which come before the applies.
	pids := auxiliaryPIDs(ctx, t, admin, "walwriter", "background writer", "checkpointer")
	signal(t, "STOP", pids)
	stopped := true
	defer func() {
		if stopped {
			signal(t, "CONT", pids)
		}
	}()
	appendAll(first, second)
	waitUntil(t, time.Minute, "second events applied", func() bool { s, _, _ := applied(admin); return s == first+second })
	_, _, beforeCrash := applied(admin)

	require.NoError(t, restartPostgres(ctx, cl))
	stopped = false // the crash took them
	admin.Reset()
	var seen, counted, cps int
	waitUntil(t, time.Minute, "the server back", func() bool {
		return admin.QueryRow(ctx, `SELECT (SELECT count(*) FROM readside.crash_seen), (SELECT coalesce(sum(n), 0) FROM readside.crash_count),
			(SELECT coalesce(sum(events_applied), 0) FROM readside.checkpoints WHERE projection = 'counting')`).Scan(&seen, &counted, &cps) == nil
	})
	t.Logf("before the crash: %d applied (checkpoints %d); after: %d rows, counter %d, checkpoints %d",
		first+second, beforeCrash, seen, counted, cps)
	require.Less(t, cps, beforeCrash, "the crash undid applied batches (else this test proves nothing)")
	require.Equal(t, seen, counted, "read model and counter went back together")
	require.Equal(t, seen, cps, "read model and checkpoints went back together")

	// The same worker, which lived through the crash, finds its segments'
	// checkpoints behind what it had applied and applies those events
	// again, with no new event to wake it.
	defer stop(w)
	waitUntil(t, 90*time.Second, "applied again", func() bool { s, _, _ := applied(admin); return s == first+second })
	seen, counted, cps = applied(admin)
	require.Equal(t, []int{first + second, first + second, first + second}, []int{seen, counted, cps},
		"every event applied exactly once after the crash")
}

// auxiliaryPIDs are the server processes of the given backend types.
func auxiliaryPIDs(ctx context.Context, t *testing.T, pool *pgxpool.Pool, types ...string) []int {
	t.Helper()
	rows, err := pool.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE backend_type = ANY ($1)`, types)
	require.NoError(t, err)
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	require.NoError(t, err)
	require.Len(t, pids, len(types), "one process of each of %v", types)
	return pids
}

func signal(t *testing.T, sig string, pids []int) {
	t.Helper()
	args := []string{"-" + sig}
	for _, p := range pids {
		args = append(args, strconv.Itoa(p))
	}
	out, err := exec.Command("kill", args...).CombinedOutput()
	require.NoError(t, err, "kill %s: %s", strings.Join(args, " "), out)
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
