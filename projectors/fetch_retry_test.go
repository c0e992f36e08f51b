package projectors_test

import (
	"testing"
	"time"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

// TestFetchErrorAfterANotificationRetries: a notification runs the
// segment of its bucket, whose fetch fails once (a transient error: a
// connection lost, a statement cancelled). The task ends after the
// retry's backoff with segment.retry, and finished queues the segment
// again: no notification comes, the segment is not held (its fetch never
// completed), and the poll is an hour away.
func TestFetchErrorAfterANotificationRetries(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	// The first segmented fetch that passes over aggregate 'fail-once'
	// fails.
	failFetches(t, pool, "fail-once", "= 1")
	startSegmented(t, pool, pool, 8, projectors.Config{LeaseTTL: 4 * time.Second, RetryBackoff: 10 * time.Millisecond})
	appendEvents(t, pool, "fail-once", 0, `{}`)
	eventually(t, 10*time.Second, "the fetch failed once", func() bool {
		return count(t, pool, `SELECT count(*) FROM public.fetch_failures WHERE is_called`) == 1
	})
	eventually(t, 10*time.Second, "the event applied after the failed fetch's retry, with a one-hour poll", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`) == 1
	})
}
