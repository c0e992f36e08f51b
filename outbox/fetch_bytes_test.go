package outbox_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

// Issue 22, item 5: fetch was bounded by rows only, so a batch held every
// large event of a transaction at once (6 x 50 MB took the projector from
// 27 MB to 727 MB). A batch now stops once its payloads passed the byte
// budget (Filter.MaxBytes, 8 MiB by default), measured
// uncompressed, and always holds at least one event; the rest comes in the
// next batches, in order.
func TestFetchBoundedByBytes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	const n, size = 20, 900 << 10 // compressible: stored in a few kB each
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for i := range n {
			// Two aggregates, so that a 2-segment read may split them.
			agg := outbox.Aggregate{Type: "Order", ID: fmt.Sprint("o-", i%2)}
			data := fmt.Sprintf(`{"i":%d,"pad":"%s"}`, i, strings.Repeat("a", size))
			if _, err := outbox.Append(ctx, tx, agg, i/2*2, []outbox.NewEvent{
				{Type: "Big", Data: []byte(data)},
				{Type: "Small", Data: []byte(`{}`)}, // passed over by the filter below
			}); err != nil {
				return err
			}
		}
		return nil
	}))
	waitWindow(t, pool)

	filters := []outbox.Filter{
		{EventTypes: []string{"Big"}},
		{EventTypes: []string{"Big"}, Segment: 0, Segments: 2},
		{EventTypes: []string{"Big"}, MaxBytes: 1}, // one event a batch
	}
	for _, f := range filters {
		t.Run(fmt.Sprint("outbox/", f.Segments, "/", f.MaxBytes), func(t *testing.T) { checkFetchBytes(t, pool, f, n) })
	}
	// Once pruned, the history comes from the events table, where TOAST
	// stores each payload compressed in a few kB: the budget still counts
	// it uncompressed.
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		h, err := outbox.ReadHead(ctx, tx)
		if err != nil {
			return err
		}
		_, _, err = outbox.PruneChunk(ctx, tx, h.Latest, 1000, -1)
		return err
	}))
	var left int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.outbox`).Scan(&left))
	require.Zero(t, left)
	for _, f := range filters {
		t.Run(fmt.Sprint("history/", f.Segments, "/", f.MaxBytes), func(t *testing.T) { checkFetchBytes(t, pool, f, n) })
	}
}

func checkFetchBytes(t *testing.T, pool *pgxpool.Pool, f outbox.Filter, n int) {
	t.Helper()
	ctx := context.Background()
	budget := cmp.Or(f.MaxBytes, outbox.FetchMaxBytesDefault)
	var (
		after   outbox.Cursor
		got     []int
		batches int
		cuts    []bool
	)
	for {
		b, err := outbox.Fetch(ctx, pool, after, 1000, f)
		require.NoError(t, err)
		if b.Scanned == 0 && b.Next == after {
			break
		}
		batches++
		cuts = append(cuts, b.Cut)
		var bytes int
		for i, e := range b.Events {
			if i < len(b.Events)-1 {
				bytes += len(e.Data) + len(e.Metadata)
			}
			var v struct{ I int }
			require.NoError(t, json.Unmarshal(e.Data, &v))
			got = append(got, v.I)
		}
		if f.MaxBytes == 1 {
			require.LessOrEqual(t, len(b.Events), 1)
		}
		require.Less(t, int64(bytes), budget, "the events before the last one of a batch stay within the budget")
		after = b.Next
	}
	var want []int
	for i := range n {
		if f.Segments <= 1 || outboxSegment(t, pool, fmt.Sprint("o-", i%2), f.Segments) == f.Segment {
			want = append(want, i)
		}
	}
	require.Equal(t, want, got, "every event once, in order")
	require.Greater(t, batches, 1)
	// Every batch ended by the budget says so (the whole log fits the row
	// limit); the last one reached the end of the window.
	for i, cut := range cuts {
		require.Equal(t, i < len(cuts)-1, cut, "batch %d of %d: Cut", i+1, len(cuts))
	}
}

func outboxSegment(t *testing.T, pool *pgxpool.Pool, aggID string, segments int) int {
	t.Helper()
	var s int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT readside.readside_segment($1, $2)`, aggID, segments).Scan(&s))
	return s
}
