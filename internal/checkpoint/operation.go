package checkpoint

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/outbox"
)

// newLease is the SET clause that starts a new lease on the checkpoint rows
// an UPDATE changes (alias names them): the epoch moves on, so that every
// transaction fenced by the previous owner's epoch fails its Advance, and
// owner and expiry become the given SQL expressions (NULL for none). Every
// statement that takes a segment from its owner uses it: a claim, a move,
// a rebuild's switch.
func newLease(alias, owner, expires string) string {
	return `lease_epoch = ` + alias + `.lease_epoch + 1, lease_owner = ` + owner + `, lease_expires_at = ` + expires
}

// LockForOperation takes the row lock of every checkpoint of projection,
// in segment order, for an operator's operation (reset, repair, a rebuild's
// switch) in the caller's transaction, and returns their cursors by segment.
// It waits for the batches in flight, whose Advance holds the lock; batches
// that start later wait for the transaction, and fail their Advance if the
// operation moved the cursor or the epoch.
func LockForOperation(ctx context.Context, tx DB, projection string) (map[int]outbox.Cursor, error) {
	return cursors(ctx, tx, projection, ` FOR UPDATE`)
}

// LockSegment takes one segment's checkpoint row lock in the caller's
// transaction, so that the segment's batches (and what they park) wait for
// it: a retry of the segment's dead letters.
func LockSegment(ctx context.Context, tx DB, projection string, segment int) error {
	if _, err := tx.Exec(ctx, `SELECT 1 FROM readside.checkpoints WHERE projection = $1 AND segment = $2 FOR UPDATE`, projection, segment); err != nil {
		return fmt.Errorf("lock %s/%d: %w", projection, segment, err)
	}
	return nil
}

// LockAggregateSegment takes, in the caller's transaction, the checkpoint
// row lock of the segment aggregateID belongs to now, and returns the
// segment: it holds the projection's registry row (FOR SHARE) first, so
// that no scale changes the split until the transaction ends.
func LockAggregateSegment(ctx context.Context, tx DB, projection, aggregateID string) (int, error) {
	var seg int
	if err := tx.QueryRow(ctx, `SELECT readside.readside_segment($2, segments) FROM readside.projections WHERE name = $1 FOR SHARE`,
		projection, aggregateID).Scan(&seg); err != nil {
		return 0, fmt.Errorf("lock the segment of %s in %s: %w", aggregateID, projection, err)
	}
	return seg, LockSegment(ctx, tx, projection, seg)
}

// Cursors returns the cursors of projection's checkpoints by segment,
// without locking them.
func Cursors(ctx context.Context, db DB, projection string) (map[int]outbox.Cursor, error) {
	return cursors(ctx, db, projection, ``)
}

func cursors(ctx context.Context, db DB, projection, lock string) (map[int]outbox.Cursor, error) {
	rows, err := db.Query(ctx, `SELECT segment, cursor_txid, cursor_position FROM readside.checkpoints
		WHERE projection = $1 ORDER BY segment`+lock, projection)
	if err != nil {
		return nil, fmt.Errorf("checkpoints of %s: %w", projection, err)
	}
	out := map[int]outbox.Cursor{}
	var seg int
	var cur outbox.Cursor
	if _, err := pgx.ForEachRow(rows, []any{&seg, &cur.TxID, &cur.Position}, func() error {
		out[seg] = cur
		return nil
	}); err != nil {
		return nil, fmt.Errorf("checkpoints of %s: %w", projection, err)
	}
	return out, nil
}

// Adopt points every checkpoint of live at the cursor of the same segment
// of shadow, a rebuild's copy switching in: live takes the copy's cursor,
// applied count and error, keeps the furthest of the two high-water marks
// and starts a new lease epoch, so that no batch of the live projection
// that waited for the switch commits over the copy. The caller holds both
// projections' locks (LockForOperation).
func Adopt(ctx context.Context, tx DB, live, shadow string) error {
	if _, err := tx.Exec(ctx, `
UPDATE readside.checkpoints l
   SET cursor_txid = s.cursor_txid, cursor_position = s.cursor_position,
       high_txid = CASE WHEN (s.high_txid, s.high_position) > (l.high_txid, l.high_position) THEN s.high_txid ELSE l.high_txid END,
       high_position = CASE WHEN (s.high_txid, s.high_position) > (l.high_txid, l.high_position) THEN s.high_position ELSE l.high_position END,
       events_applied = s.events_applied,
       `+newLease("l", "NULL", "NULL")+`,
       status = CASE WHEN l.status = 'failed' THEN s.status ELSE l.status END, last_error = s.last_error,
       advanced_at = now(), updated_at = now()
  FROM readside.checkpoints s
 WHERE l.projection = $1 AND s.projection = $2 AND s.segment = l.segment`, live, shadow); err != nil {
		return fmt.Errorf("adopt the checkpoints of %s into %s: %w", shadow, live, err)
	}
	// The copy applied every event up to its cursors: what a scale left
	// below a bucket's floor of the live projection is not in its tables.
	return clearFloors(ctx, tx, live)
}
