package products

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/readmodel"
)

// Forget implements projectors.Forgetter: it deletes the products' rows, so
// that projector repair can re-apply their events.
func (*Projection) Forget(ctx context.Context, tx pgx.Tx, _ string, productIDs []string) error {
	return readmodel.Delete(ctx, tx, Name, "product_id", productIDs, "products")
}

var _ projectors.Forgetter = (*Projection)(nil)
