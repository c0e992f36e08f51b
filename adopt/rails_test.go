package adopt_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/adopt"
	"github.com/readside/readside/projectors/orderstatistics"
)

// rubyWriter is examples/rails/ar_event_store.rb: the Rails seed's
// ArEventStore.save_events on ActiveRecord (Debian's ruby-activerecord and
// ruby-pg; .ci/run installs them).
const rubyWriter = "../examples/rails/ar_event_store.rb"

func requireActiveRecord(t *testing.T) {
	t.Helper()
	out, err := exec.Command("ruby", "-e", `require "active_record"; require "pg"; print ActiveRecord::VERSION::STRING`).CombinedOutput()
	if err != nil {
		t.Skipf("ActiveRecord not installed (apt-get install ruby-activerecord ruby-pg; .ci/run does): %v %s", err, out)
	}
	t.Logf("ActiveRecord %s", out)
}

// runRuby runs one writer process and returns its counts.
func runRuby(ctx context.Context, appURL string, steps, orders, seed int) (map[string]int, error) {
	cmd := exec.CommandContext(ctx, "ruby", rubyWriter, fmt.Sprint(steps), fmt.Sprint(orders), fmt.Sprint(seed))
	cmd.Env = append(os.Environ(), "DATABASE_URL="+appURL)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("ruby writer %d: %w: %s", seed, err, errOut.String())
	}
	counts := map[string]int{}
	if err := json.Unmarshal(out.Bytes(), &counts); err != nil {
		return nil, fmt.Errorf("ruby writer %d: %w: %q", seed, err, out.String())
	}
	return counts, nil
}

func buildProjector(dir string) (string, error) {
	bin := filepath.Join(dir, "projector")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/projector").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build projector: %w: %s", err, out)
	}
	return bin, nil
}

// startProjector starts `projector run`, its output appended to logPath.
func startProjector(t *testing.T, bin, url, logPath string) *exec.Cmd {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(t, err)
	cmd := exec.Command(bin, "run", "--database-url", url, "--metrics-addr", "", "--lease-ttl", "2s", "--poll-interval", "200ms")
	cmd.Stdout, cmd.Stderr = f, f
	require.NoError(t, cmd.Start())
	f.Close()
	return cmd
}

// foldSQL is what order_summary must hold, folded straight from the
// application's table: the last event's status and the placed total.
const foldSQL = `
SELECT aggregate_id || ' ' ||
       CASE split_part((array_agg(event_type ORDER BY version DESC))[1], '::', 4)
            WHEN 'OrderPlaced' THEN 'pending' WHEN 'OrderConfirmed' THEN 'confirmed'
            WHEN 'OrderShipped' THEN 'shipped' WHEN 'OrderCancelled' THEN 'cancelled' END || ' ' ||
       max((event_data->>'total_amount')::numeric(12,2))
  FROM public.events GROUP BY aggregate_id ORDER BY aggregate_id`

const summarySQL = `SELECT order_id || ' ' || status || ' ' || total_amount FROM readside.order_summary ORDER BY order_id`

func column(t *testing.T, pool *pgxpool.Pool, sql string) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), sql)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}

// The Rails seed's writer, real ActiveRecord in several processes at once,
// behind `projector adopt`; `projector run` is SIGKILLed while they write
// and restarted. Once caught up, order_summary equals a fold of the
// application's table and order_statistics matches readside's log
// (exactly once).
func TestAdoptRailsActiveRecordWriters(t *testing.T) {
	t.Parallel()
	requireActiveRecord(t)
	ctx := context.Background()
	app, rs, appURL, rsURL := setupURLs(t, "rails_schema.sql")
	start := time.Now()
	// The binary builds while the history is written.
	var bin string
	var buildErr error
	built := make(chan struct{})
	go func() {
		defer close(built)
		bin, buildErr = buildProjector(t.TempDir())
	}()

	// History, then adoption.
	hist, err := runRuby(ctx, appURL, 30, 10, 1)
	require.NoError(t, err)
	renames, err := adopt.ParseRenames("Domain::Orders::Events::*=*,Domain::Orders::Order=Order")
	require.NoError(t, err)
	res, err := adopt.Adopt(ctx, rs, adopt.Config{Table: "public.events", Renames: renames}, false)
	require.NoError(t, err)
	require.EqualValues(t, hist["events"], res.History)
	<-built
	require.NoError(t, buildErr)
	t.Logf("history written and projector built at %s", time.Since(start).Round(time.Millisecond))

	logPath := filepath.Join(t.TempDir(), "projector.log")
	proj := startProjector(t, bin, rsURL, logPath)
	t.Cleanup(func() {
		_ = proj.Process.Kill()
		_ = proj.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("projector log:\n%s", b[max(0, len(b)-4000):])
		}
	})

	// Three writers share 40 orders, so they conflict as real ones do.
	const writers, steps, orders = 3, 60, 40
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		totals = map[string]int{}
		errs   []error
	)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := runRuby(ctx, appURL, steps, orders, 10+w)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			}
			for k, v := range c {
				totals[k] += v
			}
		}()
	}
	// SIGKILL the projector once it has applied something, while the
	// writers go on, and start another.
	deadline := time.Now().Add(90 * time.Second) // another test's transaction can hold the cluster's read window
	for {
		var n int
		require.NoError(t, rs.QueryRow(ctx, `SELECT count(*) FROM order_summary`).Scan(&n))
		if n > 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "projector applied nothing in 90s")
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, proj.Process.Signal(syscall.SIGKILL))
	_ = proj.Wait()
	proj = startProjector(t, bin, rsURL, logPath)
	wg.Wait()
	require.Empty(t, errs)
	t.Logf("writers done at %s", time.Since(start).Round(time.Millisecond))

	var appRows, copied int
	require.NoError(t, app.QueryRow(ctx, `SELECT (SELECT count(*) FROM public.events), (SELECT count(*) FROM readside.events)`).Scan(&appRows, &copied))
	require.Equal(t, hist["events"]+totals["events"], appRows, "every event ActiveRecord committed is in the table")
	require.Equal(t, appRows, copied, "and in readside's log")

	want := column(t, app, foldSQL)
	deadline = time.Now().Add(90 * time.Second)
	for {
		got := column(t, rs, summarySQL)
		mismatches, err := orderstatistics.Mismatches(ctx, rs)
		require.NoError(t, err)
		if slices.Equal(want, got) && len(mismatches) == 0 {
			break
		}
		if time.Now().After(deadline) {
			require.Equal(t, want, got, "order_summary vs a fold of the application's table")
			require.Empty(t, mismatches, "order_statistics")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("caught up at %s", time.Since(start).Round(time.Millisecond))
	var applied int
	require.NoError(t, rs.QueryRow(ctx, `SELECT coalesce(sum(events_applied), 0) FROM checkpoints WHERE projection = 'order_summary'`).Scan(&applied))
	t.Logf("ActiveRecord wrote %d events (%d before adoption) in %d saves; conflicts: %d version mismatch, %d not unique, %d serialization failures; %d orders; order_summary applied %d (with replays after the kill); mismatches 0",
		appRows, hist["events"], hist["saves"]+totals["saves"], totals["version_mismatch"], totals["record_not_unique"], totals["serialization_failure"], len(want), applied)
}
