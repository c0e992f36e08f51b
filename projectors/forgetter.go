package projectors

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// Forgetter is implemented by a projection that can repair single
// aggregates (control.Repair): Forget removes everything the read model holds for
// the given aggregates, as if none of their events had been applied, so
// that re-applying them rebuilds exactly their fold. A table of rows per
// aggregate deletes them; a counter subtracts what the aggregates added.
// Repair calls it inside its transaction with every checkpoint row of the
// projection locked, so no batch of the projection runs meanwhile.
type Forgetter interface {
	Forget(ctx context.Context, tx pgx.Tx, aggregateType string, aggregateIDs []string) error
}
