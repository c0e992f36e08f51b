package outbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

// fill appends n events to fresh aggregates in rounds of one INSERT each:
// round r writes version r of aggregates 1..perRound, so every round is its
// own transaction (its own txid) and the trigger writes the outbox rows set
// based, as it does for any writer.
func fill(tb testing.TB, pool *pgxpool.Pool, n, perRound int) time.Duration {
	tb.Helper()
	ctx := context.Background()
	start := time.Now()
	for round, done := 1, 0; done < n; round++ {
		k := min(perRound, n-done)
		_, err := pool.Exec(ctx, `
INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
SELECT 'Thing', 't-' || a, 'Touched', jsonb_build_object('n', a, 'round', $2::int), $2::int
  FROM generate_series(1, $1::int) a`, k, round)
		require.NoError(tb, err)
		done += k
	}
	return time.Since(start)
}

// lastCursors returns the cursor of the k-th row from the end of the outbox.
func cursorAt(tb testing.TB, pool *pgxpool.Pool, offset int, desc bool) outbox.Cursor {
	tb.Helper()
	dir := "ASC"
	if desc {
		dir = "DESC"
	}
	var c outbox.Cursor
	require.NoError(tb, pool.QueryRow(context.Background(), fmt.Sprintf(
		`SELECT txid, position FROM readside.outbox ORDER BY txid %[1]s, position %[1]s OFFSET $1 LIMIT 1`, dir), offset).
		Scan(&c.TxID, &c.Position))
	return c
}

// planNode is the part of EXPLAIN (ANALYZE, FORMAT JSON) the test reads.
type planNode struct {
	NodeType     string     `json:"Node Type"`
	Relation     string     `json:"Relation Name"`
	Index        string     `json:"Index Name"`
	ActualRows   float64    `json:"Actual Rows"`
	ActualLoops  float64    `json:"Actual Loops"`
	RemovedByFlt float64    `json:"Rows Removed by Filter"`
	RemovedByJF  float64    `json:"Rows Removed by Join Filter"`
	Plans        []planNode `json:"Plans"`
}

func (n *planNode) walk(f func(n, parent *planNode)) {
	var rec func(n, parent *planNode)
	rec = func(n, parent *planNode) {
		f(n, parent)
		for i := range n.Plans {
			rec(&n.Plans[i], n)
		}
	}
	rec(n, nil)
}

func (n *planNode) scans(rel string) bool {
	found := false
	n.walk(func(c, _ *planNode) { found = found || c.Relation == rel })
	return found
}

// rowsIn is how many rows a node produced over all its loops, plus those
// its own filters discarded: what it had to read.
func (n *planNode) rowsIn() float64 {
	return n.ActualRows*max(n.ActualLoops, 1) + n.RemovedByFlt + n.RemovedByJF
}

func (n *planNode) String() string {
	var b strings.Builder
	var rec func(n *planNode, depth int)
	rec = func(n *planNode, depth int) {
		fmt.Fprintf(&b, "%s%s", strings.Repeat("  ", depth), n.NodeType)
		if n.Relation != "" {
			fmt.Fprintf(&b, " on %s", n.Relation)
		}
		if n.Index != "" {
			fmt.Fprintf(&b, " using %s", n.Index)
		}
		fmt.Fprintf(&b, " (rows=%.0f loops=%.0f)\n", n.ActualRows, n.ActualLoops)
		for i := range n.Plans {
			rec(&n.Plans[i], depth+1)
		}
	}
	rec(n, 0)
	return b.String()
}

// TestFetchPlan checks, on a 1M-row outbox (READSIDE_PLAN_EVENTS to change),
// that the reader's query walks outbox_pkey from the cursor and reads about
// a batch whatever is waiting: no Seq Scan of the outbox, no Sort of more
// than two batches, and no scan node that reads more than two batches of
// rows, near the start and near the end of the backlog, with custom and
// with generic plans (pgx prepares statements, and PostgreSQL switches to a
// generic plan after five executions).
func TestFetchPlan(t *testing.T) {
	t.Parallel()
	n := 1_000_000
	if s := os.Getenv("READSIDE_PLAN_EVENTS"); s != "" {
		v, err := strconv.Atoi(s)
		require.NoError(t, err, "READSIDE_PLAN_EVENTS")
		n = v
	}
	const limit = 1000
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	took := fill(t, pool, n, 100_000)
	t0 := time.Now()
	_, err := pool.Exec(ctx, `ANALYZE`)
	require.NoError(t, err)
	t.Logf("outbox: %d rows written in %s, analyzed in %s", n, took.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))

	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.Exec(ctx, `PREPARE fetch_plan(xid8, bigint, int, text[], text[], int, int, bigint) AS `+outbox.FetchSQL)
	require.NoError(t, err)
	defer conn.Exec(context.Background(), `DEALLOCATE fetch_plan; RESET plan_cache_mode`) //nolint:errcheck

	cursors := map[string]outbox.Cursor{
		"near start": cursorAt(t, pool, 10*limit, false),
		"near end":   cursorAt(t, pool, 10*limit, true),
	}
	for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
		_, err := conn.Exec(ctx, `SET plan_cache_mode = `+mode)
		require.NoError(t, err)
		for where, c := range cursors {
			for _, segments := range []int{1, 4} {
				name := fmt.Sprintf("%s/%s/segments=%d", mode, where, segments)
				var raw []byte
				// Literals, not parameters: EXECUTE of the prepared statement is
				// what makes plan_cache_mode apply.
				require.NoError(t, conn.QueryRow(ctx, fmt.Sprintf(
					`EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE fetch_plan('%d', %d, %d, '{}', '{}', 0, %d, %d)`,
					c.TxID, c.Position, limit, segments, outbox.FetchMaxBytesDefault)).Scan(&raw), name)
				var plans []struct {
					Plan planNode `json:"Plan"`
				}
				require.NoError(t, json.Unmarshal(raw, &plans), name)
				require.Len(t, plans, 1, name)
				checkPlan(t, name, &plans[0].Plan, limit)
			}
		}
	}

	// The reader returns full batches from both ends of the backlog, once
	// the window has opened (in a new database the read fence takes a
	// grace period to pass transactions of other databases).
	waitWindow(t, pool)
	for where, c := range cursors {
		b, err := outbox.Fetch(ctx, pool, c, limit, outbox.Filter{})
		require.NoError(t, err, where)
		require.Equal(t, limit, b.Scanned, where)
		require.Len(t, b.Events, limit, where)
		require.True(t, c.Less(b.Events[0].Cursor), where)
		require.Equal(t, b.Events[limit-1].Cursor, b.Next, where)
	}
}

func checkPlan(t *testing.T, name string, root *planNode, limit int) {
	t.Helper()
	pkey := false
	root.walk(func(n, parent *planNode) {
		if n.Relation == "outbox" {
			require.NotEqual(t, "Seq Scan", n.NodeType, "%s: Seq Scan on outbox\n%s", name, root)
			if n.Index == "outbox_pkey" && strings.HasPrefix(n.NodeType, "Index") {
				pkey = true
			}
		}
		if n.NodeType == "Sort" && n.scans("outbox") {
			var in float64
			for i := range n.Plans {
				in += n.Plans[i].rowsIn()
			}
			require.LessOrEqual(t, in, float64(2*limit), "%s: Sort of %.0f rows over the outbox\n%s", name, in, root)
		}
		// What the claim rests on: no scan reads more than two batches,
		// however many rows wait behind the cursor.
		if strings.Contains(n.NodeType, "Scan") && n.Relation != "" {
			if in := n.rowsIn(); in > float64(2*limit) {
				t.Errorf("%s: %s on %s read %.0f rows for a batch of %d: the cost grows with the backlog\n%s",
					name, n.NodeType, n.Relation, in, limit, root)
			}
		}
	})
	require.True(t, pkey, "%s: no Index Scan using outbox_pkey\n%s", name, root)
}

// TestFetchPlansGeneric: a fetch on a pooled connection is planned once,
// generically, not for its parameters on each of its first five
// executions on that connection (each segment's fetch is a statement of
// its own, so with many segments and connections a drain was planned
// nearly every batch). In a caller's transaction it keeps the caller's
// settings.
func TestFetchPlansGeneric(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	fill(t, pool, 200, 50)
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	plans := func() (generic, custom int) {
		t.Helper()
		require.NoError(t, conn.QueryRow(ctx, `SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0)
			FROM pg_prepared_statements WHERE statement LIKE '%readside_read_bound%' AND statement NOT LIKE '%pg_prepared_statements%'`).Scan(&generic, &custom))
		return generic, custom
	}
	for _, f := range []outbox.Filter{{}, {Segment: 1, Segments: 4}} {
		for range 3 {
			_, err := outbox.Fetch(ctx, conn.Conn(), outbox.Cursor{}, 100, f)
			require.NoError(t, err)
		}
	}
	generic, custom := plans()
	require.Zero(t, custom, "no fetch planned for its parameters")
	require.Equal(t, 6, generic)
	// Every segment of one count shares one statement, planned once per
	// connection (a segmented fetch's plan takes about 10 ms).
	for seg := range 4 {
		_, err := outbox.Fetch(ctx, conn.Conn(), outbox.Cursor{}, 100, outbox.Filter{Segment: seg, Segments: 4})
		require.NoError(t, err)
	}
	var statements int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM pg_prepared_statements
		WHERE statement LIKE '%o.bucket =%' AND statement NOT LIKE '%pg_prepared_statements%'`).Scan(&statements))
	require.Equal(t, 1, statements, "one statement for every segment of 4")

	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = outbox.Fetch(ctx, tx, outbox.Cursor{}, 100, outbox.Filter{})
	require.NoError(t, err)
	var mode string
	require.NoError(t, tx.QueryRow(ctx, `SHOW plan_cache_mode`).Scan(&mode))
	require.Equal(t, "auto", mode, "a fetch in the caller's transaction leaves its settings alone")
}
