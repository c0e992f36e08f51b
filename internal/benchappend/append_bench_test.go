package benchappend_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

// payload is a typical OrderPlaced of a couple of hundred bytes.
const payload = `{"order_id":"5f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5","customer_name":"Aiko Tanaka",` +
	`"items":[{"product_id":"p-1","product_name":"Fountain pen","quantity":2,"unit_price":35.00},` +
	`{"product_id":"p-2","product_name":"Notebook","quantity":3,"unit_price":4.50}],` +
	`"total_amount":83.50,"placed_at":"2025-01-02T03:04:05Z"}`

const metadata = `{"correlation_id":"c-1","user_id":"u-1"}`

// rawSQL is the same transaction shape as Append without the library: one
// multi-row INSERT INTO events carrying the same rows (each event's payload
// and metadata sent), whose trigger writes the outbox rows.
const rawSQL = `
INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, metadata, schema_version, version)
SELECT 'Order', $1, 'OrderPlaced', t.data, t.meta, 1, $2::int + t.ord::int
  FROM unnest($3::jsonb[], $4::jsonb[]) WITH ORDINALITY AS t(data, meta, ord)`

// writer appends transactions of perTx events to its own aggregate.
type writer struct {
	pool    *pgxpool.Pool
	id      string
	version int
	events  []outbox.NewEvent
	// the same rows for raw SQL
	data, meta []string
}

func newWriter(pool *pgxpool.Pool, id string, perTx int) *writer {
	w := &writer{pool: pool, id: id, events: make([]outbox.NewEvent, perTx)}
	for i := range w.events {
		w.events[i] = outbox.NewEvent{Type: "OrderPlaced", Data: json.RawMessage(payload),
			Metadata: outbox.Metadata{CorrelationID: "c-1", UserID: "u-1"}}
		w.data = append(w.data, payload)
		w.meta = append(w.meta, metadata)
	}
	return w
}

func (w *writer) appendTx(ctx context.Context) error {
	return pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
		res, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: "Order", ID: w.id}, w.version, w.events)
		if err == nil {
			w.version = res.Version
		}
		return err
	})
}

func (w *writer) rawTx(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, rawSQL, w.id, w.version, w.data, w.meta)
		return err
	})
	if err == nil {
		w.version += len(w.events)
	}
	return err
}

// runs makes aggregate ids unique across the runs of one benchmark binary.
var runs atomic.Int64

// BenchmarkAppend measures outbox.Append and raw SQL of the same transaction
// shape in the same run, interleaved in rounds so that table growth and
// background work weigh on both alike. One op is one transaction of each.
func BenchmarkAppend(b *testing.B) {
	pool := pgtest.NewDB(b)
	for _, shape := range []struct {
		name    string
		perTx   int
		writers int
	}{
		{"1_event_per_tx_8_writers", 1, 8},
		{"100_events_per_tx_1_writer", 100, 1},
	} {
		b.Run(shape.name, func(b *testing.B) {
			ctx := context.Background()
			prefix := fmt.Sprintf("%s-%d-", shape.name, runs.Add(1))
			var appenders, raws []*writer
			for i := range shape.writers {
				appenders = append(appenders, newWriter(pool, fmt.Sprintf("%sappend-%d", prefix, i), shape.perTx))
				raws = append(raws, newWriter(pool, fmt.Sprintf("%sraw-%d", prefix, i), shape.perTx))
			}
			// run does n transactions split over the writers and returns
			// how long they took.
			run := func(ws []*writer, n int, tx func(*writer, context.Context) error) time.Duration {
				start := time.Now()
				var wg sync.WaitGroup
				for i, w := range ws {
					share := n / len(ws)
					if i < n%len(ws) {
						share++
					}
					wg.Go(func() {
						for range share {
							if err := tx(w, ctx); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				return time.Since(start)
			}

			const rounds = 4
			var tAppend, tRaw time.Duration
			b.ResetTimer()
			for r := range rounds {
				n := b.N / rounds
				if r < b.N%rounds {
					n++
				}
				if n == 0 {
					continue
				}
				if r%2 == 0 {
					tAppend += run(appenders, n, (*writer).appendTx)
					tRaw += run(raws, n, (*writer).rawTx)
				} else {
					tRaw += run(raws, n, (*writer).rawTx)
					tAppend += run(appenders, n, (*writer).appendTx)
				}
			}
			b.StopTimer()

			events := float64(b.N * shape.perTx)
			appendRate := events / tAppend.Seconds()
			rawRate := events / tRaw.Seconds()
			b.ReportMetric(appendRate, "append_events/s")
			b.ReportMetric(rawRate, "raw_events/s")
			b.ReportMetric(appendRate/rawRate, "append/raw")
			// ns/op of the Append transactions alone.
			b.ReportMetric(float64(tAppend.Nanoseconds())/float64(b.N), "ns/op")
		})
	}
}
