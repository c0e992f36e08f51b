package projectors_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

// commitProbe records the synchronous_commit and the idle timeout its
// apply transactions run with, as "synchronous_commit/timeout".
type commitProbe struct {
	mu   sync.Mutex
	seen []string
}

func (p *commitProbe) Spec() projectors.Spec { return projectors.Spec{Name: "commit_probe"} }

func (p *commitProbe) Apply(ctx context.Context, tx pgx.Tx, _ *projectors.Batch) error {
	var v string
	if err := tx.QueryRow(ctx, `SELECT current_setting('synchronous_commit') || '/' ||
		current_setting('idle_in_transaction_session_timeout')`).Scan(&v); err != nil {
		return err
	}
	p.mu.Lock()
	p.seen = append(p.seen, v)
	p.mu.Unlock()
	return nil
}

func (p *commitProbe) Reset(context.Context, pgx.Tx) error { return nil }

func (p *commitProbe) settings() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seen...)
}

// Apply transactions commit asynchronously unless SynchronousApply is set,
// and then with the session's own setting (here the database's), never a
// value readside picks; they time out when idle for the lease's TTL (a
// stopped worker must not hold its checkpoint's row lock past its lease);
// the settings do not outlive the transaction.
func TestApplyCommitSetting(t *testing.T) {
	t.Parallel()
	for _, sync := range []bool{false, true} {
		ctx := context.Background()
		url := pgtest.NewDatabaseURL(t)
		pool := pgtest.Pool(t, url)
		_, err := pool.Exec(ctx, `DO $$ BEGIN
			EXECUTE format('ALTER DATABASE %I SET synchronous_commit = local', current_database()); END $$`)
		require.NoError(t, err)
		pool.Close()
		pool = pgtest.Pool(t, url)
		var idle string
		require.NoError(t, pool.QueryRow(ctx, `SELECT current_setting('idle_in_transaction_session_timeout')`).Scan(&idle))
		probe := &commitProbe{}
		startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{probe}, SynchronousApply: sync,
			PollInterval: 50 * time.Millisecond, LeaseTTL: 7 * time.Second})
		appendEvents(t, pool, "a", 0, `{}`, `{}`)
		eventually(t, 30*time.Second, "applied", func() bool { return len(probe.settings()) > 0 })
		want := "off/7s"
		if sync {
			want = "local/7s"
		}
		for _, got := range probe.settings() {
			require.Equal(t, want, got, "SynchronousApply %v", sync)
		}
		var after string
		require.NoError(t, pool.QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&after))
		require.Equal(t, "local", after, "the session keeps its own setting")
		require.NoError(t, pool.QueryRow(ctx, `SELECT current_setting('idle_in_transaction_session_timeout')`).Scan(&after))
		require.Equal(t, idle, after, "the session keeps its own idle timeout")
	}
}

// With polling out of the picture (an hour), events that commit while a
// segment applies the batch before them are applied promptly: the batch
// that reached the end of the window ends its task without fetching
// again, so the notifications that came meanwhile must run it again. A
// writer commits one event every few milliseconds while each batch takes
// 20 ms to apply, so nearly every event is announced during an apply.
func TestEventsAnnouncedDuringAnApplyAreApplied(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	slow := func(context.Context, *projectors.Batch) error {
		time.Sleep(20 * time.Millisecond)
		return nil
	}
	for _, conc := range []int{1, 2} {
		name := fmt.Sprintf("rec%d", conc)
		startWorker(t, projectors.Config{Pool: pool, Concurrency: conc, PollInterval: time.Hour,
			Projections: []projectors.Projection{&recorder{name: name, hook: slow}}})
	}
	// The workers' first head check (at start) has passed.
	time.Sleep(200 * time.Millisecond)
	const n = 60
	for i := range n {
		appendEvents(t, pool, fmt.Sprintf("agg-%d", i%7), i/7, `{}`)
		time.Sleep(3 * time.Millisecond)
	}
	eventually(t, 20*time.Second, "every event applied without a poll", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`) == 2*n
	})
}
