package outbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

// BenchmarkFetch measures one Fetch of a 1000-row batch from the start of
// the backlog with 1k rows waiting and with 1M rows waiting, in the same run,
// alternating between the two so that both see the same machine. The claim
// (issue 3): an index range scan with LIMIT costs the same either way. It
// reports the mean time of a fetch for each and their ratio; ns/op is not
// the unit (one op is a round of fetches).
func BenchmarkFetch(b *testing.B) {
	const limit = 1000
	ctx := context.Background()
	small := pgtest.NewDB(b)
	large := pgtest.NewDB(b)
	fill(b, small, 1_000, 100_000)
	took := fill(b, large, 1_000_000, 100_000)
	for _, pool := range []*pgxpool.Pool{small, large} {
		_, err := pool.Exec(ctx, `VACUUM ANALYZE`)
		require.NoError(b, err)
	}
	b.Logf("1M-row backlog written in %s", took.Round(time.Millisecond))

	fetch := func(pool *pgxpool.Pool) time.Duration {
		t0 := time.Now()
		batch, err := outbox.Fetch(ctx, pool, outbox.Start, limit, outbox.Filter{})
		d := time.Since(t0)
		require.NoError(b, err)
		require.Equal(b, limit, batch.Scanned)
		return d
	}
	// Warm both: connections, prepared statements, the plan cache (a
	// generic plan after five executions), the buffer cache.
	for range 8 {
		fetch(small)
		fetch(large)
	}
	var n int
	var tSmall, tLarge time.Duration
	for b.Loop() {
		// Rounds of alternating fetches, bounded in time so that a slow
		// reader does not make the benchmark run for minutes.
		deadline := time.Now().Add(5 * time.Second)
		for i := 0; i < 200 && time.Now().Before(deadline); i++ {
			tSmall += fetch(small)
			tLarge += fetch(large)
			n++
		}
	}
	s := float64(tSmall.Nanoseconds()) / float64(n)
	l := float64(tLarge.Nanoseconds()) / float64(n)
	b.ReportMetric(s, "ns/fetch-1k")
	b.ReportMetric(l, "ns/fetch-1M")
	b.ReportMetric(l/s, "ratio-1M/1k")
	b.ReportMetric(float64(n), "fetches")
	b.ReportMetric(0, "ns/op")
}
