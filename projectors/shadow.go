package projectors

import (
	"context"
	"fmt"

	"github.com/readside/readside/outbox"
)

// fetchBehindLive reads the next batch of a rebuild's copy (segment of the
// live projection live), no further than the live projection's checkpoint:
// everything the copy applies, the live projection has passed already
// (applied, side effects included, or parked), so the copy applies it all
// as a replay; the side-effect ledger, which the copy shares under the live
// name, says which side effects are still due (those of events the live
// projection parked). Reading the live checkpoint before the
// fetch makes the bound a cursor the fetch's window has passed, so the rows
// up to it are all in the batch. The switch stops the live projection and
// waits for the copy to reach it.
func fetchBehindLive(ctx context.Context, db outbox.Querier, live string, segment int, after outbox.Cursor, limit int, f outbox.Filter) (*outbox.Batch, error) {
	var bound outbox.Cursor
	if err := db.QueryRow(ctx, `SELECT cursor_txid, cursor_position FROM readside.checkpoints WHERE projection = $1 AND segment = $2`,
		live, segment).Scan(&bound.TxID, &bound.Position); err != nil {
		return nil, fmt.Errorf("rebuild: checkpoint of %s/%d: %w", live, segment, err)
	}
	if !after.Less(bound) {
		return &outbox.Batch{Next: after}, nil // level with the live projection: wait for it
	}
	b, err := outbox.Fetch(ctx, db, after, limit, f)
	if err != nil || !bound.Less(b.Next) {
		return b, err
	}
	n := 0
	for n < len(b.Events) && !bound.Less(b.Events[n].Cursor) {
		n++
	}
	return &outbox.Batch{Events: b.Events[:n], Next: bound, Scanned: n}, nil
}
