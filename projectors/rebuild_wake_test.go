package projectors_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

// TestRebuildCopyFollowsTheLiveProjectionWithoutThePoll: a notification
// runs the live segment and its rebuild's copy together; the copy reads
// the live checkpoint before the live batch commits, stops level with the
// old one, and nothing runs it again until the next notification or the
// poll (one hour here): the copy stays one write behind.
func TestRebuildCopyFollowsTheLiveProjectionWithoutThePoll(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	p := &recorder{name: "rec"}
	appendEvents(t, pool, "a", 0, `{}`)
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{p}, PollInterval: time.Hour, LeaseTTL: time.Second})
	caughtUp(t, pool)
	require.NoError(t, control.StartRebuild(ctx, pool, p))
	level := func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints s JOIN readside.checkpoints l ON l.segment = s.segment AND l.projection = 'rec'
			WHERE s.projection = $1 AND (s.cursor_txid, s.cursor_position) >= (l.cursor_txid, l.cursor_position)`, control.ShadowName("rec")) == 1
	}
	eventually(t, 30*time.Second, "the copy caught up", level)
	for i := 1; i <= 3; i++ {
		appendEvents(t, pool, "a", i, `{}`)
		caughtUp(t, pool)
		eventually(t, 5*time.Second, "the copy level with the live projection again, with a one-hour poll", level)
	}
}
