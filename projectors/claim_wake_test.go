package projectors_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

// TestSegmentClaimedWhileTheWindowIsHeldRunsWhenItMoves: an event of a
// segment's buckets is announced while no worker holds the segment (paused,
// being handed over, its owner dead) and while an older event writer holds
// the read window. The segment is then claimed: its cursor is level with
// the (held) window head, so the claim does not run it, and it has no held
// mark since it never fetched. The holder rolls back (no notification):
// the head checks that follow run only held segments, so the event waits
// for the poll (here one hour).
func TestSegmentClaimedWhileTheWindowIsHeldRunsWhenItMoves(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	const n = 8
	const ttl = 2 * time.Second
	startSegmented(t, pool, pool, n, projectors.Config{LeaseTTL: ttl})
	ids := aggregatesBySegment(t, pool, n)

	// Segment 6 is paused: the worker forgets it and its lease runs out.
	_, err := pool.Exec(ctx, `UPDATE readside.checkpoints SET status = 'paused' WHERE projection = 'rec' AND segment = 6`)
	require.NoError(t, err)
	eventually(t, 30*time.Second, "segment 6's lease expired", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints WHERE projection = 'rec' AND segment = 6
			AND lease_expires_at < now()`) == 1
	})
	epoch := count(t, pool, `SELECT lease_epoch FROM readside.checkpoints WHERE projection = 'rec' AND segment = 6`)

	// An older event writer holds the window; an event of segment 6 commits
	// behind it and is announced while nobody holds segment 6.
	holder := holdWindow(t, pool, ids[2])
	appendEvents(t, pool, ids[6], 0, `{}`)
	time.Sleep(100 * time.Millisecond)

	// Resumed: the worker claims it again.
	_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET status = 'running' WHERE projection = 'rec' AND segment = 6`)
	require.NoError(t, err)
	eventually(t, 30*time.Second, "segment 6 claimed again", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints WHERE projection = 'rec' AND segment = 6
			AND lease_epoch > $1 AND lease_expires_at > now()`, epoch) == 1
	})
	time.Sleep(300 * time.Millisecond)
	require.Equal(t, 0, count(t, pool, `SELECT count(*) FROM applied`), "held back behind the open writer")

	require.NoError(t, holder.Rollback(ctx))
	eventually(t, 10*time.Second, "the held-back event applied after the holder's rollback, with a one-hour poll", func() bool {
		return count(t, pool, `SELECT count(*) FROM applied`) == 1
	})
}
