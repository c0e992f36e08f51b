package projectorcli

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/projectortest"
)

// `projector scale order_summary --segments 4 --wait` and back to 1, as an
// operator types them, while a writer appends and a fleet member applies:
// each waits for its job, the fleet runs the new split, and the read model
// equals a fresh rebuild afterwards. A count that does not divide 64 is
// refused before anything is queued.
func TestScaleWait(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url, pool := fleet(t)
	wctx, stopWriter := context.WithCancel(ctx)
	defer stopWriter()
	written := make(chan error, 1)
	go func() {
		_, err := projectortest.Lifecycles{Orders: 1_000_000, Writers: 2, FirstWriter: 10, Interval: 5 * time.Millisecond}.Generate(wctx, pool)
		written <- err
	}()

	_, _, err := run3(t, "scale", "order_summary", "--segments", "3", "--database-url", url)
	require.ErrorContains(t, err, "divide 64")
	for _, n := range []string{"4", "1"} {
		out, _, err := run3(t, "scale", "order_summary", "--segments", n, "--wait", "--database-url", url)
		require.NoError(t, err, out)
		require.Contains(t, out, "readside_scale: queued as job")
		require.Contains(t, out, "scale of order_summary done in")
		out, _, err = run3(t, "status", "order_summary", "--database-url", url)
		require.NoError(t, err, out)
		segs, err := observe.Status(ctx, pool, ordersummary.Name)
		require.NoError(t, err)
		require.Len(t, segs, map[string]int{"4": 4, "1": 1}[n], out)
		// The new split applies what the writer adds.
		var before int64
		require.NoError(t, pool.QueryRow(ctx, `SELECT sum(events_applied) FROM readside.checkpoints WHERE projection = $1`, ordersummary.Name).Scan(&before))
		require.Eventually(t, func() bool {
			var now int64
			require.NoError(t, pool.QueryRow(ctx, `SELECT sum(events_applied) FROM readside.checkpoints WHERE projection = $1`, ordersummary.Name).Scan(&now))
			return now > before+50
		}, time.Minute, 20*time.Millisecond)
	}
	stopWriter()
	require.ErrorIs(t, <-written, context.Canceled)
	require.Eventually(t, func() bool {
		segs, err := observe.Status(ctx, pool, ordersummary.Name)
		return err == nil && len(segs) == 1 && segs[0].LagEvents == 0
	}, time.Minute, 20*time.Millisecond)

	p := ordersummary.New()
	s := p.Spec()
	live := projectortest.DumpTables(t, pool, s.Tables, []string{"updated_at"})
	require.NoError(t, projectortest.InTx(ctx, pool, func(tx pgx.Tx) error { return p.Reset(ctx, tx) }))
	projectortest.ApplyStream(t, pool, p, outbox.Filter{EventTypes: s.EventTypes, AggregateTypes: s.AggregateTypes, Segments: 1}, 500)
	require.Equal(t, projectortest.DumpTables(t, pool, s.Tables, []string{"updated_at"}), live, "order_summary equals a fresh rebuild")
}
