package ordersummary

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/readmodel"
)

// Forget implements projectors.Forgetter: it deletes the orders' rows, so
// that projector repair can re-apply their events.
func (*Projection) Forget(ctx context.Context, tx pgx.Tx, _ string, orderIDs []string) error {
	return readmodel.Delete(ctx, tx, Name, "order_id", orderIDs, "order_summary")
}

var _ projectors.Forgetter = (*Projection)(nil)
