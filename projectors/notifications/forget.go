package notifications

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/projectors"
)

// Forget implements projectors.Forgetter: the projection keeps no rows, so
// there is nothing to forget. Repair re-applies what it had applied as a
// replay (no notification goes out twice) and applies parked events, never
// notified, as new: `projector repair order_notifications --all-parked`
// sends what a fixed bug held back.
func (*Projection) Forget(context.Context, pgx.Tx, string, []string) error { return nil }

var _ projectors.Forgetter = (*Projection)(nil)
