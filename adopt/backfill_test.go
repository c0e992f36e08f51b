package adopt_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/adopt"
)

// insertTiming is one application INSERT: when it was sent and how long
// it took.
type insertTiming struct {
	at  time.Time
	dur time.Duration
}

// Issue 21, item 7: a table of history (READSIDE_ADOPT_ROWS rows, 20000 by
// default; the README's figure is for 1000000) is adopted while writers
// append to it, to aggregates of the history and new ones. The
// application's longest INSERT while adopt runs is logged beside the
// longest before it; afterwards readside's log holds every row once, each
// aggregate's versions in the reader's order.
//
//	READSIDE_ADOPT_ROWS=1000000 go test -count=1 -run TestAdoptBackfillUnderLoad -v ./adopt/
func TestAdoptBackfillUnderLoad(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rows := 20000
	if s := os.Getenv("READSIDE_ADOPT_ROWS"); s != "" {
		var err error
		rows, err = strconv.Atoi(s)
		require.NoError(t, err)
	}
	const perAggregate, writers = 10, 4
	aggregates := rows / perAggregate
	app, rs, appURL, _ := setupURLs(t, "stream_schema.sql")
	seeded := time.Now()
	_, err := app.Exec(ctx, `INSERT INTO app_events (stream, stream_version, type, body, recorded_at)
		SELECT 'Order-' || (g / $2), g % $2 + 1, CASE WHEN g % $2 = 0 THEN 'OrderPlaced' ELSE 'OrderNoted' END,
		       jsonb_build_object('order_id', (g / $2)::text, 'note', repeat('x', 100)), now() - interval '1 day'
		  FROM generate_series(0, $1 - 1) g`, rows, perAggregate)
	require.NoError(t, err)
	_, err = app.Exec(ctx, `ANALYZE app_events`)
	require.NoError(t, err)
	t.Logf("%d rows of history (%d aggregates) written in %s", rows, aggregates, time.Since(seeded).Round(time.Millisecond))

	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		timings  []insertTiming
		refused  = map[string]int{}
		errs     []error
		inserted atomic.Int64
		stop     = make(chan struct{})
	)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, appURL)
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			defer conn.Close(ctx)
			rng := rand.New(rand.NewPCG(uint64(w), 21))
			var mine []insertTiming
			defer func() {
				mu.Lock()
				timings = append(timings, mine...)
				mu.Unlock()
			}()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				stream := fmt.Sprintf("Order-%d", rng.IntN(aggregates)) // history's aggregates
				if n%2 == 1 {
					stream = fmt.Sprintf("Order-new-%d-%d", w, n)
				}
				var took time.Duration
				var sent time.Time
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					var v int
					if err := tx.QueryRow(ctx, `SELECT coalesce(max(stream_version), 0) FROM app_events WHERE stream = $1`, stream).Scan(&v); err != nil {
						return err
					}
					sent = time.Now()
					_, err := tx.Exec(ctx, `INSERT INTO app_events (stream, stream_version, type, body) VALUES ($1, $2, 'OrderNoted', '{"note":"live"}')`, stream, v+1)
					took = time.Since(sent)
					return err
				})
				var pgErr *pgconn.PgError
				switch {
				case err == nil:
					inserted.Add(1)
					mine = append(mine, insertTiming{sent, took})
				case errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "23505"):
					mine = append(mine, insertTiming{sent, took})
					mu.Lock()
					refused[pgErr.Code]++
					mu.Unlock()
				default:
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
			}
		}()
	}
	writersFailed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(errs) > 0
	}
	waitUntil(t, "the writers to be writing", func() bool { return inserted.Load() > 200 || writersFailed() })

	var last adopt.Progress
	var backfilling time.Time // the trigger is in place, the backfill starts
	began := time.Now()
	res, err := adopt.Adopt(ctx, rs, adopt.Config{Table: "app_events", Columns: streamCols, Progress: func(p adopt.Progress) {
		if backfilling.IsZero() {
			backfilling = time.Now()
		}
		last = p
	}}, false)
	ended := time.Now()
	require.NoError(t, err)
	atEnd := inserted.Load()
	waitUntil(t, "writes after adoption", func() bool { return inserted.Load() > atEnd+200 || writersFailed() })
	close(stop)
	wg.Wait()
	require.Empty(t, errs)

	var appRows, copied int64
	require.NoError(t, app.QueryRow(ctx, `SELECT (SELECT count(*) FROM app_events), (SELECT count(*) FROM readside.events)`).Scan(&appRows, &copied))
	if appRows != copied {
		// readside's ids are its own (the trigger copies histories between
		// the backfill's chunks): rows are matched by aggregate and version.
		rows, _ := app.Query(ctx, `SELECT a.seq, a.stream, a.stream_version, a.xmin::text, a.recorded_at > now() - interval '1 hour'
			FROM app_events a WHERE NOT EXISTS (SELECT 1 FROM readside.events e WHERE e.aggregate_type = split_part(a.stream, '-', 1)
			   AND e.aggregate_id = substr(a.stream, strpos(a.stream, '-') + 1) AND e.version = a.stream_version)
			ORDER BY a.seq`)
		for rows.Next() {
			var seq int64
			var stream, xmin string
			var v int
			var live bool
			_ = rows.Scan(&seq, &stream, &v, &xmin, &live)
			t.Logf("MISSING seq %d %s v%d xmin %s live %v", seq, stream, v, xmin, live)
		}
		rows.Close()
		t.Logf("adopt began %s, backfilling %s, ended %s", began.Format("15:04:05.000"), backfilling.Format("15:04:05.000"), ended.Format("15:04:05.000"))
	}
	require.Equal(t, appRows, copied, "every row once in readside's log")
	var misordered int
	require.NoError(t, rs.QueryRow(ctx, `SELECT count(*) FROM (SELECT version, lag(version) OVER (PARTITION BY aggregate_type, aggregate_id ORDER BY txid, id) AS prev
		FROM readside.events) e WHERE prev IS DISTINCT FROM version - 1 AND NOT (prev IS NULL AND version = 1)`).Scan(&misordered))
	require.Zero(t, misordered, "each aggregate's versions in the reader's order")
	require.Equal(t, last.Total, last.Read, "the backfill's progress ends at its total")

	var before, installing, during []time.Duration
	for _, x := range timings {
		switch {
		case x.at.Before(began):
			before = append(before, x.dur)
		case x.at.Before(backfilling):
			installing = append(installing, x.dur)
		case x.at.Before(ended):
			during = append(during, x.dur)
		}
	}
	stat := func(ds []time.Duration) string {
		if len(ds) == 0 {
			return "none"
		}
		slices.Sort(ds)
		return fmt.Sprintf("%d inserts, p50 %s, p99 %s, max %s", len(ds), ds[len(ds)/2].Round(time.Microsecond),
			ds[len(ds)*99/100].Round(time.Microsecond), ds[len(ds)-1].Round(time.Microsecond))
	}
	t.Logf("adopt of %d rows took %s (checks and install %s, backfill %s; %d rows copied by the backfill, the rest by the first insert of their aggregate); %d writers' INSERTs before: %s; while checking and installing: %s; while backfilling: %s; refused: %d serialization failures (40001), %d unique violations (another writer took the version)",
		rows, ended.Sub(began).Round(time.Millisecond), backfilling.Sub(began).Round(time.Millisecond), ended.Sub(backfilling).Round(time.Millisecond),
		res.History, writers, stat(before), stat(installing), stat(during), refused["40001"], refused["23505"])
}

// The backfill skips the aggregates whose history the application's
// first INSERT copied before the backfill's snapshot (an INSERT that
// commits between the install and the backfill's first read, or while
// an interrupted adoption waits to be resumed): its progress counts the
// rows it has to read, and ends with Read equal to Total.
func TestAdoptProgressLeavesOutAggregatesCopied(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, _ := setup(t, "stream_schema.sql")
	_, err := app.Exec(ctx, `INSERT INTO app_events (stream, stream_version, type, body)
		SELECT 'Order-' || (g / 3), g % 3 + 1, 'OrderNoted', '{}' FROM generate_series(0, 8) g`)
	require.NoError(t, err)

	// Interrupted once the trigger is in place, before a row is read.
	interrupted, cancel := context.WithCancel(ctx)
	defer cancel()
	_, err = adopt.Adopt(interrupted, rs, adopt.Config{Table: "app_events", Columns: streamCols, Progress: func(adopt.Progress) { cancel() }}, false)
	require.ErrorIs(t, err, context.Canceled)
	// The first INSERT into Order-0 copies its history.
	_, err = app.Exec(ctx, `INSERT INTO app_events (stream, stream_version, type, body) VALUES ('Order-0', 4, 'OrderNoted', '{}')`)
	require.NoError(t, err)
	require.Len(t, readsideLog(t, rs), 4)

	var last adopt.Progress
	res, err := adopt.Adopt(ctx, rs, adopt.Config{Table: "app_events", Columns: streamCols, Progress: func(p adopt.Progress) { last = p }}, false)
	require.NoError(t, err)
	require.EqualValues(t, 6, res.History, "Order-1's and Order-2's rows")
	require.Equal(t, adopt.Progress{Read: 6, Total: 6, Copied: 6}, last)
	require.Len(t, readsideLog(t, rs), 10)
}
