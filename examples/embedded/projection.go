package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/projectors"
)

// CustomerTotalsName is the projection's name.
const CustomerTotalsName = "customer_totals"

// CustomerTotals keeps, per customer, how many orders they placed and for
// how much money.
type CustomerTotals struct{}

// Spec implements projectors.Projection.
func (CustomerTotals) Spec() projectors.Spec {
	return projectors.Spec{
		Name:       CustomerTotalsName,
		EventTypes: []string{domain.OrderPlacedType},
		Segments:   2,
		Tables:     []string{"customer_totals"},
	}
}

// Schema implements projectors.Schema: Client.Migrate creates the table in
// readside's schema.
func (CustomerTotals) Schema() string {
	return `CREATE TABLE IF NOT EXISTS customer_totals (
    customer text          PRIMARY KEY,
    orders   bigint        NOT NULL,
    total    numeric(16,2) NOT NULL)`
}

// Apply adds the batch's orders in one statement. A sum is not idempotent:
// it is right because the runtime commits it with the checkpoint, once.
// Customers are not the aggregate: segments applied at once update the
// same rows, so each statement locks them in one order (ORDER BY), which
// keeps two segments from deadlocking.
func (CustomerTotals) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	customers := make([]string, 0, len(b.Events))
	amounts := make([]string, 0, len(b.Events))
	for _, e := range b.Events {
		v, err := domain.Decode(e.Type, e.SchemaVersion, e.Data)
		if err != nil {
			return fmt.Errorf("%s: event %d: %w", CustomerTotalsName, e.ID(), err)
		}
		placed, ok := v.(*domain.OrderPlaced)
		if !ok {
			return fmt.Errorf("%s: event %d: unexpected type %s", CustomerTotalsName, e.ID(), e.Type)
		}
		customers = append(customers, placed.CustomerName)
		amounts = append(amounts, placed.TotalAmount.String())
	}
	if len(customers) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, `INSERT INTO customer_totals AS t (customer, orders, total)
		SELECT c, count(*), sum(a::numeric) FROM unnest($1::text[], $2::text[]) AS x(c, a) GROUP BY c ORDER BY c
		ON CONFLICT (customer) DO UPDATE SET orders = t.orders + excluded.orders, total = t.total + excluded.total`,
		customers, amounts)
	return err
}

// Reset implements projectors.Projection: empty the table before a replay
// from the start.
func (CustomerTotals) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `TRUNCATE customer_totals`)
	return err
}
