package adopt_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/adopt"
)

// ectoStep is one command of the Elixir seed's append_events: in a
// transaction, read the aggregate's current version, then insert its new
// events (one Repo.insert! each, or one insert_all). It returns the number
// of events written, or the SQLSTATE that refused them.
func ectoStep(ctx context.Context, conn *pgx.Conn, rng *rand.Rand, id string) (int, string, error) {
	var written int
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var version int
		var last *string
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(event_version), 0),
			(SELECT event_type FROM events WHERE aggregate_id = $1 ORDER BY event_version DESC LIMIT 1)
			FROM events WHERE aggregate_id = $1`, id).Scan(&version, &last); err != nil {
			return err
		}
		var rows []ectoRow
		typ := ""
		if last != nil {
			typ = *last
		}
		switch typ {
		case "":
			rows = []ectoRow{{id, "OrderPlaced", placed(id, 100+rng.IntN(100000)), version + 1}}
			if rng.IntN(3) == 0 {
				rows = append(rows, ectoRow{id, "OrderConfirmed", at("", "confirmed_at", id), version + 2})
			}
		case "Elixir.CommandService.Domain.Events.OrderPlaced":
			rows = []ectoRow{{id, "OrderConfirmed", at("", "confirmed_at", id), version + 1}}
		case "Elixir.CommandService.Domain.Events.OrderConfirmed":
			rows = []ectoRow{{id, "OrderShipped", at("", "shipped_at", id), version + 1}}
			if rng.IntN(5) == 0 {
				rows = []ectoRow{{id, "OrderCancelled", at("", "cancelled_at", id), version + 1}}
			}
		default:
			return nil
		}
		if len(rows) > 1 && rng.IntN(2) == 0 {
			if err := ectoInsert(ctx, tx, "now", rows...); err != nil { // insert_all
				return err
			}
		} else {
			for _, r := range rows { // Repo.insert! per event
				if err := ectoInsert(ctx, tx, "now", r); err != nil {
					return err
				}
			}
		}
		written = len(rows)
		return nil
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "23505") {
		return 0, pgErr.Code, nil
	}
	return written, "", err
}

const elixirFoldSQL = `
SELECT aggregate_id::text || ' ' ||
       CASE regexp_replace((array_agg(event_type ORDER BY event_version DESC))[1], '^.*\.', '')
            WHEN 'OrderPlaced' THEN 'pending' WHEN 'OrderConfirmed' THEN 'confirmed'
            WHEN 'OrderShipped' THEN 'shipped' WHEN 'OrderCancelled' THEN 'cancelled' END || ' ' ||
       max((event_data->>'total_amount')::numeric(12,2))
  FROM public.events GROUP BY aggregate_id ORDER BY aggregate_id::text`

// The Elixir seed's schema, partitioned by month: concurrent writers as
// Ecto writes (one INSERT per event, some insert_all), the month's partition
// created after adoption, `projector run` SIGKILLed and restarted; then
// order_summary equals a fold of the application's table and
// order_statistics is exact.
func TestAdoptElixirConcurrentWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	app, rs, appURL, rsURL := setupURLs(t, "elixir_schema.sql")
	start := time.Now()
	waitBuilt := buildProjectorAsync(t)

	renames, err := adopt.ParseRenames(elixirRenames)
	require.NoError(t, err)
	_, err = adopt.Adopt(ctx, rs, adopt.Config{Table: "events", Columns: elixirCols, Renames: renames}, false)
	require.NoError(t, err)
	// The application adds this month's partition after adoption.
	_, err = app.Exec(ctx, `DO $$ BEGIN EXECUTE format('CREATE TABLE events_now PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
		date_trunc('month', now()), date_trunc('month', now()) + interval '2 months'); END $$`)
	require.NoError(t, err)
	proj := runProjector(t, waitBuilt(), rsURL)

	const writers, steps, orders = 4, 120, 80
	ids := make([]string, orders)
	for i := range ids {
		ids[i] = fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		written int
		refused = map[string]int{}
		errs    []error
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
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range steps {
				n, code, err := ectoStep(ctx, conn, rng, ids[rng.IntN(orders)])
				mu.Lock()
				written += n
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
		}()
	}
	if err := proj.killWhenApplying(ctx, rs, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(errs) > 0
	}); err != nil {
		wg.Wait()
		require.Empty(t, errs)
		require.Fail(t, err.Error())
	}
	wg.Wait()
	require.Empty(t, errs)

	var appRows, copied, inNow int
	require.NoError(t, app.QueryRow(ctx, `SELECT (SELECT count(*) FROM public.events), (SELECT count(*) FROM readside.events),
		(SELECT count(*) FROM public.events_now)`).Scan(&appRows, &copied, &inNow))
	require.Equal(t, written, appRows)
	require.Equal(t, appRows, copied)
	require.Equal(t, appRows, inNow, "all written into the partition created after adoption")

	want := requireCaughtUp(t, ctx, app, rs, elixirFoldSQL)
	t.Logf("Ecto-style writers wrote %d events into the new partition (refused: %d serialization failures, %d unique violations); %d orders projected, mismatches 0, in %s",
		appRows, refused["40001"], refused["23505"], len(want), time.Since(start).Round(time.Millisecond))
}
