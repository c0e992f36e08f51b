package adopt_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/adopt"
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

// foldSQL is what order_summary must hold, folded straight from the
// application's table: the last event's status and the placed total.
const foldSQL = `
SELECT aggregate_id || ' ' ||
       CASE split_part((array_agg(event_type ORDER BY version DESC))[1], '::', 4)
            WHEN 'OrderPlaced' THEN 'pending' WHEN 'OrderConfirmed' THEN 'confirmed'
            WHEN 'OrderShipped' THEN 'shipped' WHEN 'OrderCancelled' THEN 'cancelled' END || ' ' ||
       max((event_data->>'total_amount')::numeric(12,2))
  FROM public.events GROUP BY aggregate_id ORDER BY aggregate_id`

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
	waitBuilt := buildProjectorAsync(t) // builds while the history is written

	// History, then adoption.
	hist, err := runRuby(ctx, appURL, 30, 10, 1)
	require.NoError(t, err)
	renames, err := adopt.ParseRenames("Domain::Orders::Events::*=*,Domain::Orders::Order=Order")
	require.NoError(t, err)
	res, err := adopt.Adopt(ctx, rs, adopt.Config{Table: "public.events", Renames: renames}, false)
	require.NoError(t, err)
	require.EqualValues(t, hist["events"], res.History)
	bin := waitBuilt()
	t.Logf("history written and projector built at %s", time.Since(start).Round(time.Millisecond))

	proj := runProjector(t, bin, rsURL)

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
	require.NoError(t, proj.killWhenApplying(ctx, rs, func() bool { return false }))
	wg.Wait()
	require.Empty(t, errs)
	t.Logf("writers done at %s", time.Since(start).Round(time.Millisecond))

	var appRows, copied int
	require.NoError(t, app.QueryRow(ctx, `SELECT (SELECT count(*) FROM public.events), (SELECT count(*) FROM readside.events)`).Scan(&appRows, &copied))
	require.Equal(t, hist["events"]+totals["events"], appRows, "every event ActiveRecord committed is in the table")
	require.Equal(t, appRows, copied, "and in readside's log")

	want := requireCaughtUp(t, ctx, app, rs, foldSQL)
	t.Logf("caught up at %s", time.Since(start).Round(time.Millisecond))
	var applied int
	require.NoError(t, rs.QueryRow(ctx, `SELECT coalesce(sum(events_applied), 0) FROM readside.checkpoints WHERE projection = 'order_summary'`).Scan(&applied))
	t.Logf("ActiveRecord wrote %d events (%d before adoption) in %d saves; conflicts: %d version mismatch, %d not unique, %d serialization failures; %d orders; order_summary applied %d (with replays after the kill); mismatches 0",
		appRows, hist["events"], hist["saves"]+totals["saves"], totals["version_mismatch"], totals["record_not_unique"], totals["serialization_failure"], len(want), applied)
}
