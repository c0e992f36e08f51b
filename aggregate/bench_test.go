package aggregate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

// BenchmarkCommand measures the writer's command path (aggregate.Execute:
// load the order's snapshot and events, decide, append one event, commit)
// against a raw pgx loop of the same shape (the same load statement, rows
// read but not decoded, one INSERT of a ready payload, commit), 8 writers
// each, interleaved in rounds on the same database. Each writer drives its
// own orders through place, confirm, ship, as `writer load` does; there
// are no conflicts. READSIDE_BENCH_COMMANDS commands per path (default
// 4000), whatever -benchtime says.
func BenchmarkCommand(b *testing.B) {
	n := 4000
	if s := os.Getenv("READSIDE_BENCH_COMMANDS"); s != "" {
		v, err := strconv.Atoi(s)
		require.NoError(b, err, "READSIDE_BENCH_COMMANDS")
		n = v
	}
	const writers, rounds = 8, 4
	pool := pgtest.NewDB(b)
	repo, err := aggregate.New(pool, aggregate.Config{})
	require.NoError(b, err)
	ctx := context.Background()
	items := []domain.OrderItem{{ProductID: "p-1", ProductName: "Fountain pen", Quantity: 2, UnitPrice: 3500},
		{ProductID: "p-2", ProductName: "Notebook", Quantity: 3, UnitPrice: 450}}
	payloads := map[int]struct{ typ, data string }{}
	for v, e := range []domain.Event{
		&domain.OrderPlaced{OrderID: "x", CustomerName: "Aiko Tanaka", Items: items, TotalAmount: 8350, PlacedAt: time.Now()},
		&domain.OrderConfirmed{OrderID: "x", ConfirmedAt: time.Now()},
		&domain.OrderShipped{OrderID: "x", TrackingNumber: "JP0123456789", ShippedAt: time.Now()},
	} {
		data, err := json.Marshal(e)
		require.NoError(b, err)
		payloads[v+1] = struct{ typ, data string }{e.EventType(), string(data)}
	}
	meta := outbox.Metadata{CorrelationID: "c-1", UserID: "bench"}
	loop := 0 // new orders on every loop

	command := func(w, i int) error {
		id := fmt.Sprintf("cmd-%d-%d-%d", loop, w, i/3)
		_, err := aggregate.Execute(ctx, repo, id, meta, func(o *domain.Order) ([]domain.Event, error) {
			now := time.Now()
			switch o.Status {
			case "":
				return o.Place(domain.PlaceOrder{OrderID: id, CustomerName: "Aiko Tanaka", Items: items}, now)
			case domain.OrderStatusPending:
				return o.Confirm(domain.ConfirmOrder{OrderID: id}, now)
			default:
				return o.Ship(domain.ShipOrder{OrderID: id, TrackingNumber: "JP0123456789"}, now)
			}
		})
		return err
	}
	raw := func(w, i int) error {
		id := fmt.Sprintf("raw-%d-%d-%d", loop, w, i/3)
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, rawLoadSQL, domain.OrderAggregate, id, true)
			if err != nil {
				return err
			}
			version := 0
			for rows.Next() {
				var snap bool
				var typ string
				var sv int
				var data []byte
				if err := rows.Scan(&snap, &version, &typ, &sv, &data); err != nil {
					return err
				}
			}
			if err := rows.Err(); err != nil {
				return err
			}
			p := payloads[version+1]
			_, err = tx.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, metadata, version)
				VALUES ($1, $2, $3, $4, $5, $6)`, domain.OrderAggregate, id, p.typ, p.data, `{"correlation_id":"c-1","user_id":"bench"}`, version+1)
			return err
		})
	}
	run := func(from, to int, f func(w, i int) error) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				// Writer w takes commands from, from+1, ... of its own
				// sequence: orders advance one step per command.
				for i := from; i < to; i++ {
					if err := f(w, i); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		return time.Since(start)
	}

	var tCmd, tRaw time.Duration
	per := n / writers / rounds
	for b.Loop() {
		tCmd, tRaw = 0, 0
		for r := range rounds {
			from, to := r*per, (r+1)*per
			if r%2 == 0 {
				tCmd += run(from, to, command)
				tRaw += run(from, to, raw)
			} else {
				tRaw += run(from, to, raw)
				tCmd += run(from, to, command)
			}
		}
		loop++
	}
	total := float64(per * rounds * writers)
	b.ReportMetric(total/tCmd.Seconds(), "command_events/s")
	b.ReportMetric(total/tRaw.Seconds(), "raw_events/s")
	b.ReportMetric(tRaw.Seconds()/tCmd.Seconds(), "command/raw")
	b.ReportMetric(0, "ns/op")
}

// rawLoadSQL is aggregate's load statement: the latest snapshot and the
// events after it.
const rawLoadSQL = `
WITH s AS (
    SELECT version, state FROM readside.snapshots
     WHERE aggregate_type = $1 AND aggregate_id = $2 AND $3
     ORDER BY version DESC LIMIT 1)
SELECT true, version, '', 0, state FROM s
UNION ALL
SELECT false, e.version, e.event_type, e.schema_version, e.event_data
  FROM readside.events e
 WHERE e.aggregate_type = $1 AND e.aggregate_id = $2
   AND e.version > coalesce((SELECT version FROM s), 0)
ORDER BY 1 DESC, 2`
