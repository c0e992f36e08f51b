package orderstatistics

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/readmodel"
)

// recountSQL sets the four counters to the aggregation over the tracked
// orders (order_statistics_orders).
const recountSQL = `
UPDATE order_statistics s
   SET order_count = coalesce(c.n, 0), total_revenue = coalesce(c.revenue, 0)
  FROM (SELECT st.status, o.n, o.revenue
          FROM (VALUES ('pending'), ('confirmed'), ('shipped'), ('cancelled')) st(status)
          LEFT JOIN (SELECT status, count(*) AS n, sum(total_amount) AS revenue
                       FROM order_statistics_orders GROUP BY status) o USING (status)) c
 WHERE s.status = c.status`

// Forget implements projectors.Forgetter: it stops tracking the orders and
// takes them out of the counters. The counters are recounted from the
// orders still tracked rather than decremented by the forgotten rows: a row
// of order_statistics_orders edited by hand (or by a bug) no longer says
// what the order added to the counters, and subtracting it would carry the
// damage into them. Repair holds every segment's checkpoint lock, so no
// batch moves an order during the recount; its cost is one scan of
// order_statistics_orders.
func (*Projection) Forget(ctx context.Context, tx pgx.Tx, _ string, orderIDs []string) error {
	if err := readmodel.Delete(ctx, tx, Name, "order_id", orderIDs, "order_statistics_orders"); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, recountSQL); err != nil {
		return fmt.Errorf("%s: forget: recount: %w", Name, err)
	}
	return nil
}

var _ projectors.Forgetter = (*Projection)(nil)
