package orderstatistics

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// fromEventsSQL computes the statistics straight from the events table:
// each order's status is its last event, its amount its OrderPlaced total.
// Events the projection parked or discarded (and so never applied) are left
// out: parking takes an aggregate's failing event and everything after it,
// so what remains is what was applied.
const fromEventsSQL = `
WITH applied AS (
    SELECT e.* FROM readside.events e
     WHERE e.aggregate_type = 'Order'
       AND NOT EXISTS (SELECT 1 FROM readside.dead_letters d WHERE d.projection = 'order_statistics' AND d.event_id = e.id
                          AND d.status IN ('parked', 'discarded'))
), last AS (
    SELECT DISTINCT ON (aggregate_id) aggregate_id, event_type
      FROM applied
     ORDER BY aggregate_id, version DESC
), placed AS (
    SELECT aggregate_id, (event_data->>'total_amount')::numeric AS total
      FROM applied WHERE event_type = 'OrderPlaced'
), expected AS (
    SELECT CASE l.event_type WHEN 'OrderPlaced' THEN 'pending' WHEN 'OrderConfirmed' THEN 'confirmed'
                             WHEN 'OrderShipped' THEN 'shipped' WHEN 'OrderCancelled' THEN 'cancelled' END AS status,
           count(*) AS order_count, sum(p.total) AS total_revenue
      FROM last l JOIN placed p USING (aggregate_id)
     GROUP BY 1
)
SELECT s.status, coalesce(e.order_count, 0), coalesce(e.total_revenue, 0)::text, s.order_count, s.total_revenue::text
  FROM readside.order_statistics s LEFT JOIN expected e USING (status)
 WHERE s.order_count <> coalesce(e.order_count, 0) OR s.total_revenue <> coalesce(e.total_revenue, 0)`

// Mismatches compares order_statistics with the same figures aggregated
// straight from the events table, and describes every status that differs.
// Once the projection has caught up, any mismatch means an event was applied
// twice or never: this is the exactly-once canary.
func Mismatches(ctx context.Context, q interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}) ([]string, error) {
	rows, err := q.Query(ctx, fromEventsSQL)
	if err != nil {
		return nil, fmt.Errorf("order statistics check: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var status, wantRev, gotRev string
		var wantN, gotN int64
		err := r.Scan(&status, &wantN, &wantRev, &gotN, &gotRev)
		return fmt.Sprintf("%s: events say %d orders / %s revenue, order_statistics says %d / %s", status, wantN, wantRev, gotN, gotRev), err
	})
}
