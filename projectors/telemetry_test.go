package projectors_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/internal/syncbuf"
	"github.com/readside/readside/projectors"
)

// series returns, per projection label, the sample count of
// readside_projector_end_to_end_latency_seconds, and whether any series
// of any readside_projector_* family carries the projection.
func series(t *testing.T, reg *prometheus.Registry) (latency map[string]uint64, projections map[string]bool) {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	latency, projections = map[string]uint64{}, map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() != "projection" {
					continue
				}
				projections[l.GetValue()] = true
				if mf.GetName() == "readside_projector_end_to_end_latency_seconds" {
					latency[l.GetValue()] += m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return latency, projections
}

// Replayed events are not end-to-end latency (after a reset the age of
// history would dominate p99 for as long as the replay lasts), and the
// series of a rebuild's copy leave /metrics once it is switched in.
func TestTelemetryAcrossResetAndRebuild(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	for i := range 20 {
		appendEvents(t, pool, fmt.Sprintf("agg-%d", i), 0, `{}`, `{}`)
	}
	reg := prometheus.NewRegistry()
	rec := &recorder{name: "rec"}
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{rec}, Registerer: reg,
		BatchSize: 10, PollInterval: 50 * time.Millisecond, LeaseTTL: time.Second})
	startControl(t, control.Config{Pool: pool, Projections: []projectors.Projection{rec}})
	caughtUp(t, pool)
	eventually(t, 10*time.Second, "40 latencies observed", func() bool {
		lat, _ := series(t, reg)
		return lat["rec"] == 40
	})

	require.NoError(t, control.MoveCheckpoints(ctx, pool, rec, "start"))
	eventually(t, 30*time.Second, "replayed", func() bool {
		return count(t, pool, `SELECT count(*) FROM readside.checkpoints WHERE projection = 'rec' AND events_applied >= 80
			AND (cursor_txid, cursor_position) = (high_txid, high_position)`) == 1
	})
	appendEvents(t, pool, "after-reset", 0, `{}`)
	eventually(t, 10*time.Second, "the new event observed", func() bool {
		lat, _ := series(t, reg)
		return lat["rec"] >= 41
	})
	lat, _ := series(t, reg)
	require.Equal(t, uint64(41), lat["rec"], "the 40 replayed events are not latency; the new one is")

	res, err := jobs(t, pool).Enqueue(ctx, control.RebuildArgs{Projection: "rec"})
	require.NoError(t, err)
	eventually(t, 30*time.Second, "the copy applied something", func() bool {
		_, ps := series(t, reg)
		return ps["rec__rebuild"]
	})
	waitJob(t, pool, res.Job.ID)
	eventually(t, 30*time.Second, "rec__rebuild series gone after the switch", func() bool {
		_, ps := series(t, reg)
		return !ps["rec__rebuild"] && ps["rec"]
	})
	lat, _ = series(t, reg)
	require.Equal(t, uint64(41), lat["rec"], "the copy's replay is not latency either")
}

// River's own records below WARN (a producer line every few seconds) stay
// out of the log; the control plane's own INFO records do not.
func TestRiverLogsAtWarn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	setupRecorder(t, pool)
	rec := &recorder{name: "rec"}
	require.NoError(t, projectors.Register(ctx, pool, rec))
	var logs syncbuf.Buffer
	startControl(t, control.Config{Pool: pool, Projections: []projectors.Projection{rec},
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	res, err := jobs(t, pool).Enqueue(ctx, control.ResetArgs{Projection: "rec", To: "start"})
	require.NoError(t, err)
	waitJob(t, pool, res.Job.ID)
	eventually(t, 10*time.Second, "the reset logged", func() bool { return strings.Contains(logs.String(), "control: projection reset") })
	require.NotContains(t, logs.String(), "River client started")
	require.NotContains(t, logs.String(), "level=INFO msg=producer")
	require.NotContains(t, logs.String(), "level=DEBUG msg=producer")
}
