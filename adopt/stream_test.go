package adopt_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// streamStep is one command of a stream-id event store: in a transaction,
// read the stream's version and last type, then append its next events (a
// multi-row INSERT now and then). It returns the events written, or the
// SQLSTATE that refused them (a conflict another writer caused, or
// readside's 40001).
func streamStep(ctx context.Context, conn *pgx.Conn, rng *rand.Rand, id string) (int, string, error) {
	stream := "Order-" + id
	var written int
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var version int
		var last string
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(stream_version), 0),
			coalesce((SELECT type FROM app_events WHERE stream = $1 ORDER BY stream_version DESC LIMIT 1), '')
			FROM app_events WHERE stream = $1`, stream).Scan(&version, &last); err != nil {
			return err
		}
		var types, bodies []string
		switch last {
		case "":
			types, bodies = []string{"OrderPlaced"}, []string{placed(id, 100+rng.IntN(100000))}
			if rng.IntN(3) == 0 {
				types, bodies = append(types, "OrderConfirmed"), append(bodies, at("", "confirmed_at", id))
			}
		case "OrderPlaced":
			types, bodies = []string{"OrderConfirmed"}, []string{at("", "confirmed_at", id)}
		case "OrderConfirmed":
			types, bodies = []string{"OrderShipped"}, []string{at("", "shipped_at", id)}
			if rng.IntN(5) == 0 {
				types, bodies = []string{"OrderCancelled"}, []string{at("", "cancelled_at", id)}
			}
		default:
			return nil
		}
		_, err := tx.Exec(ctx, `INSERT INTO app_events (stream, stream_version, type, body)
			SELECT $1, $2 + n, t, b::jsonb FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS x(t, b, n)`, stream, version, types, bodies)
		written = len(types)
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "23505") {
		return 0, pgErr.Code, nil
	}
	return written, "", err
}

const streamFoldSQL = `
SELECT substr(stream, strpos(stream, '-') + 1) || ' ' ||
       CASE (array_agg(type ORDER BY stream_version DESC))[1]
            WHEN 'OrderPlaced' THEN 'pending' WHEN 'OrderConfirmed' THEN 'confirmed'
            WHEN 'OrderShipped' THEN 'shipped' WHEN 'OrderCancelled' THEN 'cancelled' END || ' ' ||
       max((body->>'total_amount')::numeric(12,2))
  FROM app_events GROUP BY stream ORDER BY 1`

// Issue 21, done when: a stream-id table ("Order-<uuid>" in one column)
// written by concurrent writers is adopted, while they write, with the
// --column form of projector adopt (the history copied in small chunks
// beside their inserts), projected by projector run, which is SIGKILLed
// and restarted; once caught up, order_summary equals a fold of the
// application's table and order_statistics has every event once.
func TestAdoptStreamIDsWhileWriting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, appURL, rsURL := setupURLs(t, "stream_schema.sql")
	start := time.Now()
	waitBuilt := buildProjectorAsync(t)

	const writers, orders = 4, 1500
	ids := make([]string, orders)
	for i := range ids {
		ids[i] = fmt.Sprintf("6f1c%04d-0000-4000-8000-%012d", i, i)
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		refused = map[string]int{}
		errs    []error
		written atomic.Int64
		steps   atomic.Int64
		stop    = make(chan struct{})
	)
	write := func(w int, maxSteps int) {
		defer wg.Done()
		conn, err := pgx.Connect(ctx, appURL)
		if err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
			return
		}
		defer conn.Close(ctx)
		rng := rand.New(rand.NewPCG(uint64(w), 11))
		for i := 0; maxSteps == 0 || i < maxSteps; i++ {
			select {
			case <-stop:
				return
			default:
			}
			n, code, err := streamStep(ctx, conn, rng, ids[rng.IntN(orders)])
			written.Add(int64(n))
			steps.Add(1)
			mu.Lock()
			if code != "" {
				refused[code]++
			}
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}
	// History, then writers that go on through adoption, the kill and after.
	wg.Add(1)
	write(100, 300)
	history := written.Load()
	for w := range writers {
		wg.Add(1)
		go write(w, 0)
	}
	writersFailed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(errs) > 0
	}
	bin := waitBuilt()
	waitUntil(t, "the writers to be writing", func() bool { return written.Load() > history+20 || writersFailed() })

	out, err := exec.CommandContext(ctx, bin, "adopt", "--table", "app_events",
		"--column", "aggregate_type=split_part(stream, '-', 1)",
		"--column", "aggregate_id=substr(stream, strpos(stream, '-') + 1)",
		"--column", "id=seq", "--column", "version=stream_version", "--column", "event_type=type", "--column", "event_data=body",
		"--chunk-rows", "10", "--database-url", rsURL).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "adopted public.app_events")
	atAdoption, stepsAtAdoption := written.Load(), steps.Load()
	t.Logf("adopted while writing at %s: %s", time.Since(start).Round(time.Millisecond), lastLine(out))

	proj := runProjector(t, bin, rsURL)
	if err := proj.killWhenApplying(ctx, rs, writersFailed); err != nil {
		close(stop)
		wg.Wait()
		require.Empty(t, errs)
		require.Fail(t, err.Error())
	}
	waitUntil(t, "more steps of the writers after the kill", func() bool { return steps.Load() > stepsAtAdoption+200 || writersFailed() })
	close(stop)
	wg.Wait()
	require.Empty(t, errs)

	var appRows, copied int64
	require.NoError(t, app.QueryRow(ctx, `SELECT (SELECT count(*) FROM app_events), (SELECT count(*) FROM readside.events)`).Scan(&appRows, &copied))
	require.Equal(t, written.Load(), appRows)
	require.Equal(t, appRows, copied, "every row of the application's table once in readside's log")
	var misordered int
	require.NoError(t, rs.QueryRow(ctx, `SELECT count(*) FROM (SELECT version, lag(version) OVER (PARTITION BY aggregate_type, aggregate_id ORDER BY txid, id) AS prev
		FROM readside.events) e WHERE prev IS DISTINCT FROM version - 1 AND NOT (prev IS NULL AND version = 1)`).Scan(&misordered))
	require.Zero(t, misordered, "each aggregate's versions in the reader's order")

	want := requireCaughtUp(t, ctx, app, rs, streamFoldSQL)
	mu.Lock()
	defer mu.Unlock()
	t.Logf("stream-id writers wrote %d events (%d before adoption, %d by the time adopt returned); refused: %d serialization failures, %d unique violations; %d orders projected, mismatches 0, in %s",
		appRows, history, atAdoption, refused["40001"], refused["23505"], len(want), time.Since(start).Round(time.Millisecond))
}

func lastLine(out []byte) string {
	s := string(out)
	for len(s) > 0 && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			return s[i+1:]
		}
	}
	return s
}
