package ordersummary

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/projectors"
)

// Forget implements projectors.Forgetter: it deletes the orders' rows, so
// that projector repair can re-apply their events.
func (*Projection) Forget(ctx context.Context, tx pgx.Tx, _ string, orderIDs []string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM order_summary WHERE order_id = ANY ($1::text[])`, orderIDs); err != nil {
		return fmt.Errorf("%s: forget: %w", Name, err)
	}
	return nil
}

var _ projectors.Forgetter = (*Projection)(nil)
