package projectors_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

// TestFetchErrorAfterANotificationRetries: a notification runs the
// segment of its bucket, whose fetch fails once (a transient error: a
// connection lost, a statement cancelled). runSegment returns nil after
// the retry's backoff (transient), finished reruns the segment only when
// a notification came meanwhile (again), and the segment is not held (its
// fetch never completed): the event waits for the poll (one hour here).
func TestFetchErrorAfterANotificationRetries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	// The first segmented fetch that passes over aggregate 'fail-once'
	// fails; the bucket column (n = 64) is computed as before.
	_, err := pool.Exec(ctx, `CREATE SEQUENCE public.fail_once;
CREATE OR REPLACE FUNCTION readside.readside_segment(aggregate_id text, n integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF n <> 64 AND aggregate_id = 'fail-once' AND nextval('public.fail_once') = 1 THEN
        RAISE EXCEPTION 'injected fetch failure' USING ERRCODE = '57014';
    END IF;
    RETURN CASE WHEN n <= 1 THEN 0 ELSE (hashtext(aggregate_id) & 2147483647) % n END;
END
$$`)
	require.NoError(t, err)
	const n = 8
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{&recorder{name: "rec", segments: n}},
		PollInterval: time.Hour, LeaseTTL: 4 * time.Second, RetryBackoff: 10 * time.Millisecond})
	eventually(t, 60*time.Second, "leases claimed", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints WHERE lease_owner IS NOT NULL`) == n
	})
	eventually(t, 60*time.Second, "listening", func() bool {
		return count(t, pool, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'listen%'`) == 1
	})
	time.Sleep(100 * time.Millisecond)
	appendEvents(t, pool, "fail-once", 0, `{}`)
	eventually(t, 10*time.Second, "the fetch failed once", func() bool {
		return count(t, pool, `SELECT count(*) FROM public.fail_once WHERE is_called`) == 1
	})
	eventually(t, 10*time.Second, "the event applied after the failed fetch's retry, with a one-hour poll", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`) == 1
	})
}
