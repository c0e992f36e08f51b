package orderstatistics

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/projectors/readmodel"
)

// Row is one status's row of order_statistics. Amounts are exactly as
// PostgreSQL's numeric prints them (two decimals), with no trip through
// float64.
type Row struct {
	Status            string      `json:"status"`
	OrderCount        int64       `json:"order_count"`
	TotalRevenue      json.Number `json:"total_revenue"`
	AverageOrderValue json.Number `json:"average_order_value"` // 0.00 without orders
}

// Get returns the four statuses' rows in life-cycle order: pending,
// confirmed, shipped, cancelled.
func Get(ctx context.Context, db readmodel.Querier) ([]Row, error) {
	rows, err := db.Query(ctx, `
SELECT status, order_count, total_revenue::text, coalesce(average_order_value, 0)::numeric(12,2)::text
  FROM readside.order_statistics
 ORDER BY array_position(ARRAY['pending', 'confirmed', 'shipped', 'cancelled'], status)`)
	if err != nil {
		return nil, fmt.Errorf("%s: get: %w", Name, err)
	}
	stats, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Row, error) {
		var s Row
		var revenue, avg string
		err := row.Scan(&s.Status, &s.OrderCount, &revenue, &avg)
		s.TotalRevenue, s.AverageOrderValue = json.Number(revenue), json.Number(avg)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: get: %w", Name, err)
	}
	return stats, nil
}
