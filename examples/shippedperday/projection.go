package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/projectors"
)

// ShippedPerDay counts shipped orders per day (UTC).
type ShippedPerDay struct{}

// Spec implements projectors.Projection.
func (ShippedPerDay) Spec() projectors.Spec {
	return projectors.Spec{
		Name:       "shipped_per_day",
		EventTypes: []string{domain.OrderShippedType},
		Segments:   2,                           // parallel by hash of aggregate id
		OnError:    projectors.Park,             // a bad event waits in dead letters
		Tables:     []string{"shipped_per_day"}, // for blue/green rebuilds
	}
}

// Schema implements projectors.Schema: `migrate` creates the table, in
// readside's schema.
func (ShippedPerDay) Schema() string {
	return `CREATE TABLE IF NOT EXISTS shipped_per_day (day date PRIMARY KEY, orders bigint NOT NULL)`
}

// Apply adds the batch's shipments, one statement per batch. A counter is
// not idempotent: the runtime applies each event once (the checkpoint moves
// in the same transaction), and a reset to the start empties the table.
func (ShippedPerDay) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	days := make([]string, 0, len(b.Events))
	for _, e := range b.Events {
		v, err := domain.Decode(e.Type, e.SchemaVersion, e.Data)
		if err != nil {
			return fmt.Errorf("shipped_per_day: event %d: %w", e.ID(), err)
		}
		s, ok := v.(*domain.OrderShipped)
		if !ok {
			return fmt.Errorf("shipped_per_day: event %d: unexpected type %s", e.ID(), e.Type)
		}
		days = append(days, s.ShippedAt.UTC().Format("2006-01-02"))
	}
	if len(days) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, `INSERT INTO shipped_per_day (day, orders)
		SELECT d::date, count(*) FROM unnest($1::text[]) d GROUP BY d
		ON CONFLICT (day) DO UPDATE SET orders = shipped_per_day.orders + excluded.orders`, days)
	return err
}

// Reset implements projectors.Projection: empty the table before a replay
// from the start.
func (ShippedPerDay) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `TRUNCATE shipped_per_day`)
	return err
}
