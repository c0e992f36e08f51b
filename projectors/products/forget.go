package products

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/projectors"
)

// Forget implements projectors.Forgetter: it deletes the products' rows, so
// that projector repair can re-apply their events.
func (*Projection) Forget(ctx context.Context, tx pgx.Tx, _ string, productIDs []string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM products WHERE product_id = ANY ($1::text[])`, productIDs); err != nil {
		return fmt.Errorf("%s: forget: %w", Name, err)
	}
	return nil
}

var _ projectors.Forgetter = (*Projection)(nil)
