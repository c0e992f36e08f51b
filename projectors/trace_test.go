package projectors_test

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

type tev struct {
	at   time.Time
	pid  uint32
	what string
}

type tracer struct {
	commitClock
	mu  sync.Mutex
	evs []tev
}

func (t *tracer) add(c *pgx.Conn, what string) {
	t.mu.Lock()
	t.evs = append(t.evs, tev{time.Now(), c.PgConn().PID(), what})
	t.mu.Unlock()
}

// firstLine is a statement's first line, trimmed.
func firstLine(sql string) string {
	s := strings.TrimSpace(sql)
	if i := strings.IndexByte(s, '\n'); i > 0 {
		s = s[:i]
	}
	return s
}

// first is a statement's first line, cut to 70 bytes for a timeline.
func first(s string) string {
	s = firstLine(s)
	if len(s) > 70 {
		s = s[:70]
	}
	return s
}
func (t *tracer) TraceQueryStart(ctx context.Context, c *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	t.add(c, "Q> "+first(d.SQL))
	return t.commitClock.TraceQueryStart(ctx, c, d)
}
func (t *tracer) TraceQueryEnd(ctx context.Context, c *pgx.Conn, d pgx.TraceQueryEndData) {
	t.add(c, "Q< "+d.CommandTag.String())
	t.commitClock.TraceQueryEnd(ctx, c, d)
}
func (t *tracer) TraceBatchStart(ctx context.Context, c *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	t.add(c, fmt.Sprintf("B> %d", d.Batch.Len()))
	return ctx
}
func (t *tracer) TraceBatchQuery(ctx context.Context, c *pgx.Conn, d pgx.TraceBatchQueryData) {
	t.add(c, "B. "+first(d.SQL))
}
func (t *tracer) TraceBatchEnd(ctx context.Context, c *pgx.Conn, d pgx.TraceBatchEndData) {
	t.add(c, "B<")
}

// TestLatencyTrace is a diagnosis, not a check (README, "Latency"): with
// READSIDE_LATENCY_TRACE=1 it writes 1000 events/s for 3 s against one
// Worker (READSIDE_LATENCY_TRACE_CONCURRENCY, default the default) and a
// projection of READSIDE_LATENCY_TRACE_SEGMENTS segments (default 1), logs
// the latency percentiles (all events, and after the first 1000), the
// largest latency per 100 events, and for the six slowest events after the
// first 300 the timeline of every statement of every connection (Q>/Q<
// statement sent/answered, B> batch sent, B. batch result read, B< batch
// closed; the pid is the server backend's) from a millisecond before the
// writer's commit to the apply's, gaps over 1 ms marked. With
// READSIDE_LATENCY_TRACE_NO_WORKER=1 only the writer runs (to set its CPU
// apart from the worker's, e.g. under /usr/bin/time).
func TestLatencyTrace(t *testing.T) {
	if os.Getenv("READSIDE_LATENCY_TRACE") == "" {
		t.Skip("a diagnosis: READSIDE_LATENCY_TRACE=1 runs it")
	}
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	tr := &tracer{commitClock: commitClock{pending: map[*pgx.Conn][]int64{}, committed: map[int64]time.Time{}}}
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.MaxConns = 20
	cfg.ConnConfig.Tracer = tr
	workerPool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(workerPool.Close)
	writerPool := pgtest.Pool(t, url)
	p := &upsert{name: "lat", segments: max(traceEnv("READSIDE_LATENCY_TRACE_SEGMENTS"), 1), applied: tr.note}
	createUpsertTable(t, writerPool, p.table())
	w, err := projectors.NewWorker(projectors.Config{Pool: workerPool, Projections: []projectors.Projection{p},
		Concurrency: traceEnv("READSIDE_LATENCY_TRACE_CONCURRENCY"), Logger: quietLogger()})
	require.NoError(t, err)
	if os.Getenv("READSIDE_LATENCY_TRACE_NO_WORKER") == "" {
		require.NoError(t, w.Start(ctx))
		defer w.Stop(ctx)
	}
	time.Sleep(2 * time.Second)
	var mu sync.Mutex
	wrote := map[int64]time.Time{}
	total := paced(1000, 3*time.Second, func(i int) {
		var res *outbox.AppendResult
		require.NoError(t, pgx.BeginFunc(ctx, writerPool, func(tx pgx.Tx) error {
			var err error
			res, err = outbox.Append(ctx, tx, outbox.Aggregate{Type: "Thing", ID: fmt.Sprintf("x-%d", i)}, 0,
				[]outbox.NewEvent{{Type: "Touched", Data: []byte(`{"note":"some payload text"}`)}})
			return err
		}))
		now := time.Now()
		mu.Lock()
		wrote[res.Positions[0]] = now
		tr.mu.Lock()
		tr.evs = append(tr.evs, tev{now, 0, fmt.Sprintf("WRITER COMMIT %d", res.Positions[0])})
		tr.mu.Unlock()
		mu.Unlock()
	})
	time.Sleep(time.Second)
	if os.Getenv("READSIDE_LATENCY_TRACE_NO_WORKER") != "" {
		return
	}
	tr.mu.Lock()
	evs := append([]tev(nil), tr.evs...)
	tr.mu.Unlock()
	sort.Slice(evs, func(i, j int) bool { return evs[i].at.Before(evs[j].at) })
	// Each event's latency, once: every figure below is derived from it.
	type sample struct {
		id int64
		at time.Time
		d  time.Duration
	}
	var all []sample
	tr.commitClock.mu.Lock()
	for id, at := range wrote {
		if c, ok := tr.committed[id]; ok {
			all = append(all, sample{id, at, c.Sub(at)})
		}
	}
	tr.commitClock.mu.Unlock()
	var lats, steady []time.Duration
	worstPer100 := map[int64]time.Duration{}
	var ws []sample
	for _, x := range all {
		lats = append(lats, x.d)
		if x.id > 1000 {
			steady = append(steady, x.d)
		}
		if x.id > 300 {
			ws = append(ws, x)
		}
		worstPer100[x.id/100] = max(worstPer100[x.id/100], x.d)
	}
	s50, s99, smx := percentiles(steady)
	t.Logf("steady p50 %.2f p99 %.2f max %.2f", s50, s99, smx)
	p50, p99, mx := percentiles(lats)
	t.Logf("n=%d/%d p50 %.2f p99 %.2f max %.2f", len(lats), total, p50, p99, mx)
	for k := int64(0); k < 31; k++ {
		fmt.Printf("%d:%.1f ", k, float64(worstPer100[k].Microseconds())/1000)
	}
	fmt.Println()
	sort.Slice(ws, func(i, j int) bool { return ws[i].d > ws[j].d })
	for k := 0; k < 6 && k < len(ws); k++ {
		t0, worst := ws[k].at, ws[k].d
		fmt.Printf("==== worst %d: %.2f ms\n", k, float64(worst.Microseconds())/1000)
		prev := t0.Add(-1 * time.Millisecond)
		for _, e := range evs {
			if e.at.After(t0.Add(-1*time.Millisecond)) && e.at.Before(t0.Add(worst+200*time.Microsecond)) {
				gap := e.at.Sub(prev)
				mark := ""
				if gap > time.Millisecond {
					mark = fmt.Sprintf("  <<< %.2f", float64(gap.Microseconds())/1000)
				}
				if !strings.HasPrefix(e.what, "B.") || mark != "" {
					fmt.Printf("%8.3f %6d %s%s\n", float64(e.at.Sub(t0).Microseconds())/1000, e.pid, e.what, mark)
				}
				prev = e.at
			}
		}
	}
}

// traceEnv is the integer in the environment variable, 0 when unset.
func traceEnv(name string) int {
	n, _ := strconv.Atoi(os.Getenv(name))
	return n
}
