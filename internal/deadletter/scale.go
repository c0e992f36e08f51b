package deadletter

import (
	"context"
	"fmt"
)

// Resegment gives every dead letter of projection the segment its
// aggregate belongs to in a split of n, in the transaction that scales
// the projection to n segments: a segment asks whether it has parked
// events (and a retry locks the segment) by this number.
func Resegment(ctx context.Context, tx DB, projection string, n int) error {
	if _, err := tx.Exec(ctx, `UPDATE readside.dead_letters SET segment = readside.readside_segment(aggregate_id, $2)
		WHERE projection = $1 AND segment <> readside.readside_segment(aggregate_id, $2)`, projection, n); err != nil {
		return fmt.Errorf("resegment the dead letters of %s: %w", projection, err)
	}
	return nil
}
