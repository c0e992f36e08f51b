package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// workload is the order life cycles every system receives: Aggregates
// orders, EventsPerAgg events each (versions 1..EventsPerAgg), written by
// Writers concurrent writers in transactions of PerTx events of one order.
type workload struct {
	Aggregates   int
	EventsPerAgg int
	PerTx        int
	Writers      int
}

func newWorkload(n, aggregates, perTx, writers int) workload {
	e := max(1, n/aggregates)
	return workload{Aggregates: aggregates, EventsPerAgg: e, PerTx: min(perTx, e), Writers: writers}
}

func (w workload) Events() int { return w.Aggregates * w.EventsPerAgg }

// event is one event of the workload.
type event struct {
	AggregateID string
	Version     int
	Type        string
	Data        string // ~200-byte JSON object
}

const metadataJSON = `{"correlation_id":"c-1","user_id":"u-1"}`

func aggregateID(a int) string { return fmt.Sprintf("order-%06d", a) }

// eventType is the life cycle: placed, items added, confirmed, shipped.
func (w workload) eventType(version int) string {
	switch {
	case version == 1:
		return "OrderPlaced"
	case version == w.EventsPerAgg:
		return "OrderShipped"
	case version == w.EventsPerAgg-1:
		return "OrderConfirmed"
	default:
		return "OrderItemAdded"
	}
}

func (w workload) event(a, version int) event {
	id := aggregateID(a)
	t := w.eventType(version)
	data := fmt.Sprintf(`{"order_id":"%s","customer_name":"Aiko Tanaka","seq":%d,`+
		`"items":[{"product_id":"p-%d","product_name":"Fountain pen","quantity":%d,"unit_price":35.00}],`+
		`"total_amount":%d.50,"status":"%s","at":"2025-01-02T03:04:05Z"}`, id, version, version%97, version%5+1, 35*version, t)
	return event{AggregateID: id, Version: version, Type: t, Data: data}
}

// writeTx writes one transaction's events (all of one aggregate, versions
// consecutive, the first being events[0].Version) inside tx.
type writeTx func(ctx context.Context, tx pgx.Tx, events []event) error

// write appends the whole workload: each writer owns the aggregates a with
// a % Writers == its index and goes round by round (first chunk of each of
// its aggregates, then the second, ...), one transaction per chunk. It
// returns the elapsed time.
func (w workload) write(ctx context.Context, pool *pgxpool.Pool, fn writeTx) (time.Duration, error) {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, w.Writers)
	for wi := range w.Writers {
		wg.Go(func() {
			buf := make([]event, 0, w.PerTx)
			for from := 1; from <= w.EventsPerAgg; from += w.PerTx {
				for a := wi; a < w.Aggregates; a += w.Writers {
					buf = buf[:0]
					for v := from; v < from+w.PerTx && v <= w.EventsPerAgg; v++ {
						buf = append(buf, w.event(a, v))
					}
					if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return fn(ctx, tx, buf) }); err != nil {
						errs <- fmt.Errorf("writer %d: %w", wi, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return time.Since(start), <-errs
}

// columns splits events into the arrays the SQL statements take.
func columns(events []event) (types, data, meta []string) {
	for _, e := range events {
		types = append(types, e.Type)
		data = append(data, e.Data)
		meta = append(meta, metadataJSON)
	}
	return
}
