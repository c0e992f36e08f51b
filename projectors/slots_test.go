package projectors_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

// inFlight counts a worker's fetches (seen by a tracer on its pool) and
// applies (seen by the projection) running at once, and the most there
// ever were.
type inFlight struct {
	mu       sync.Mutex
	now, max int
}

func (f *inFlight) add(d int) {
	f.mu.Lock()
	f.now += d
	f.max = max(f.max, f.now)
	f.mu.Unlock()
}

func (f *inFlight) peak() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.max
}

// isFetch: the outbox read's statement (outbox.Fetch).
func isFetch(sql string) bool { return strings.Contains(sql, "window_rows AS") }

type fetchTracer struct{ f *inFlight }

type traced struct{}

func (t fetchTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if isFetch(d.SQL) {
		t.f.add(1)
		return context.WithValue(ctx, traced{}, true)
	}
	return ctx
}

func (t fetchTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	if ctx.Value(traced{}) != nil {
		t.f.add(-1)
	}
}

func (t fetchTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	for _, q := range d.Batch.QueuedQueries {
		if isFetch(q.SQL) {
			t.f.add(1)
			return context.WithValue(ctx, traced{}, true)
		}
	}
	return ctx
}

func (t fetchTracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

func (t fetchTracer) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchEndData) {
	if ctx.Value(traced{}) != nil {
		t.f.add(-1)
	}
}

// slowRecorder is the recorder with applies that take a while, counted.
type slowRecorder struct {
	*recorder
	f *inFlight
}

func (r slowRecorder) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	r.f.add(1)
	defer r.f.add(-1)
	time.Sleep(15 * time.Millisecond)
	return r.recorder.Apply(ctx, tx, b)
}

// A worker runs at most Concurrency fetches and applies on the server at
// once: a segment prefetches its next batch while it applies one only
// into a free slot. Statements beyond the server's cores cost it CPU per
// event (README, "Throughput at the defaults"). With 8 segments busy and
// slow applies, prefetches would otherwise double it.
func TestFetchesAndAppliesBoundedByConcurrency(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	admin := pgtest.Pool(t, url)
	setupRecorder(t, admin)
	for a := range 64 {
		payloads := make([]string, 20)
		for i := range payloads {
			payloads[i] = `{}`
		}
		appendEvents(t, admin, fmt.Sprintf("agg-%d", a), 0, payloads...)
	}
	f := &inFlight{}
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.MaxConns = 20
	cfg.ConnConfig.Tracer = fetchTracer{f}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	const concurrency = 2
	p := slowRecorder{&recorder{name: "slots", segments: 8}, f}
	startWorker(t, projectors.Config{Pool: pool, Projections: []projectors.Projection{p},
		Concurrency: concurrency, BatchSize: 5})
	eventually(t, 60*time.Second, "every event applied", func() bool {
		return count(t, admin, `SELECT count(*) FROM applied WHERE projection = 'slots'`) == 64*20
	})
	require.Equal(t, concurrency, f.peak(), "fetches and applies on the server at once")
}
