package deadletter

import (
	"context"
	"fmt"

	"github.com/readside/readside/outbox"
)

// Parking says how to park a group of events of one segment.
type Parking struct {
	Projection string
	Segment    int
	Reason     Reason
	Error      string
	// Attempts of a failed event; 0 (blocked events) counts as 1.
	Attempts int
	// Replay reports whether the projection had applied the event once
	// before, side effects included (at or below the segment's high-water
	// mark, or read by a rebuild's copy): retrying it must not fire them
	// again. nil means none was.
	Replay func(outbox.Event) bool
}

// Park writes events to the dead-letter table inside the caller's apply
// transaction, which must commit a cursor at or beyond each of them (a dead
// letter above the committed cursor would be read again). An event already
// parked (read again after a reset moved the cursor back) keeps its row as
// it is: its reason and attempts say why it was parked. One that an
// operator retried is parked again, as a replay; one discarded stays
// discarded.
func Park(ctx context.Context, tx DB, p Parking, events []outbox.Event) error {
	if len(events) == 0 {
		return nil
	}
	n := len(events)
	ids, versions, att := make([]int64, n), make([]int32, n), make([]int32, n)
	txids := make([]uint64, n)
	types, aggTypes, aggIDs := make([]string, n), make([]string, n), make([]string, n)
	replay := make([]bool, n)
	for i, e := range events {
		ids[i], txids[i], versions[i] = e.ID(), e.Cursor.TxID, int32(e.Version)
		types[i], aggTypes[i], aggIDs[i] = e.Type, e.AggregateType, e.AggregateID
		att[i] = int32(max(p.Attempts, 1))
		replay[i] = p.Replay != nil && p.Replay(e)
	}
	_, err := tx.Exec(ctx, `
INSERT INTO readside.dead_letters (projection, segment, event_id, txid, aggregate_type, aggregate_id, event_type, version, reason, error, attempts, replay)
SELECT $1, $2, t.id, t.txid, t.agg_type, t.agg_id, t.event_type, t.version, $3, $4, t.attempts, t.replay
  FROM unnest($5::bigint[], $6::xid8[], $7::text[], $8::text[], $9::text[], $10::int[], $11::int[], $12::bool[])
       AS t(id, txid, agg_type, agg_id, event_type, version, attempts, replay)
ON CONFLICT (projection, event_id) DO UPDATE
   SET status = 'parked', reason = excluded.reason, error = excluded.error,
       attempts = dead_letters.attempts + excluded.attempts, last_failed_at = now(), resolved_at = NULL, replay = true
 WHERE dead_letters.status = 'retried'`,
		p.Projection, p.Segment, p.Reason, p.Error, ids, txids, aggTypes, aggIDs, types, versions, att, replay)
	if err != nil {
		return fmt.Errorf("park %d events: %w", n, err)
	}
	return nil
}
