package projectors_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// Config.BatchBytes bounds each batch's payloads (at least one event a
// batch), and a batch that reached it is applied without the next one
// fetched alongside: every event is applied once, in order per aggregate.
func TestBatchBytesBoundsBatches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	const aggs, per = 3, 10
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for v := range per {
			for a := range aggs {
				if _, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: "Thing", ID: fmt.Sprint("agg-", a)}, v,
					[]outbox.NewEvent{{Type: "Touched", Data: []byte(`{"pad":"0123456789"}`)}}); err != nil {
					return err
				}
			}
		}
		return nil
	}))
	var largest atomic.Int64
	rec := &recorder{name: "rec", hook: func(_ context.Context, b *projectors.Batch) error {
		if n := int64(len(b.Events)); n > largest.Load() {
			largest.Store(n)
		}
		return nil
	}}
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{rec}, BatchBytes: 1,
		PollInterval: 20 * time.Millisecond})
	eventually(t, 60*time.Second, "every event applied", func() bool {
		return count(t, pool, `SELECT coalesce(sum(n), 0) FROM applied_count WHERE projection = 'rec'`) == aggs*per
	})
	require.Equal(t, aggs*per, count(t, pool, `SELECT count(*) FROM applied WHERE projection = 'rec'`))
	require.EqualValues(t, 1, largest.Load(), "one event a batch")
}
