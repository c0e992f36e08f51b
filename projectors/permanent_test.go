package projectors_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

// permanentErr is an error that says retrying cannot help (as
// domain.InvalidEventError does).
type permanentErr struct{ id int64 }

func (e permanentErr) Error() string   { return fmt.Sprintf("event %d: can never apply", e.id) }
func (e permanentErr) Permanent() bool { return true }

// TestPermanentErrorParksAtOnce: an event whose error is permanent is parked
// at its first failure, not after MaxAttempts retries with backoff.
func TestPermanentErrorParksAtOnce(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	appendEvents(t, pool, "agg-1", 0, `{}`, `{"poison": true}`, `{}`)
	appendEvents(t, pool, "agg-2", 0, `{}`, `{}`)
	rec := &recorder{name: "rec", hook: func(_ context.Context, b *projectors.Batch) error {
		for _, e := range b.Events {
			var p struct{ Poison bool }
			_ = json.Unmarshal(e.Data, &p)
			if p.Poison {
				return fmt.Errorf("rec: %w", permanentErr{e.ID()})
			}
		}
		return nil
	}}
	// With these settings a retried event would wait minutes before it is
	// parked.
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{rec},
		MaxAttempts: 50, RetryBackoff: 5 * time.Second, MaxRetryBackoff: time.Minute, PollInterval: 20 * time.Millisecond})
	eventually(t, 20*time.Second, "the permanent failure parked", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.dead_letters WHERE reason = 'failed'`) == 1
	})
	eventually(t, 20*time.Second, "everything else applied or parked", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`) == 3 && count(t, pool, `SELECT count(*) FROM readside.dead_letters`) == 2
	})
	require.Equal(t, 1, count(t, pool, `SELECT attempts FROM readside.dead_letters WHERE reason = 'failed'`))
}
