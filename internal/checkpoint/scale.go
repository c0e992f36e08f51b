package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/outbox"
)

// Buckets is how many hash buckets outbox rows carry (migration 006): a
// projection can be scaled between segment counts that divide it.
const Buckets = 64

// ErrScaleSplit refuses a scale from or to a segment count that does not
// divide Buckets: its segments do not map to whole buckets.
var ErrScaleSplit = errors.New("segment counts must divide 64 (1, 2, 4, 8, 16, 32 or 64) to scale")

// CanScale says whether a projection may be scaled from or to n segments.
func CanScale(n int) bool { return n >= 1 && n <= Buckets && Buckets%n == 0 }

// ScaleResult is what a scale changed.
type ScaleResult struct {
	From, To int
}

// oldSegment is a checkpoint row as a scale reads it.
type oldSegment struct {
	cursor, high outbox.Cursor
	status       Status
	lastError    string
	applied      int64
	advanced     *time.Time
	epoch        int64
}

// Scale changes projection's segment count to n in the caller's
// transaction, without moving anything back: it locks every checkpoint of
// the projection (waiting for the batches in flight, as a reset does),
// computes where each of the 64 buckets stands (its floor: the cursor of
// the segment that held it, or its floor from an earlier scale if further;
// its high likewise), and writes n checkpoints whose cursor is the least
// floor of their buckets and whose high-water mark is the least high,
// with a lease epoch above every old one and no owner, so that no batch
// of the old split commits after it. Events at or below a bucket's floor
// are passed over by the segment that now holds it (see Floors). A
// segment's status is the worst of the old segments it takes buckets
// from (failed, then paused); its applied count is shared out by bucket.
// Both counts must divide 64 (ErrScaleSplit).
func Scale(ctx context.Context, tx DB, projection string, n int) (ScaleResult, error) {
	if !CanScale(n) {
		return ScaleResult{}, fmt.Errorf("scale %s to %d: %w", projection, n, ErrScaleSplit)
	}
	// The registry row first, as Register takes it, then the checkpoints.
	if err := LockProjection(ctx, tx, projection); err != nil {
		return ScaleResult{}, err
	}
	rows, err := tx.Query(ctx, `SELECT segment, cursor_txid, cursor_position, high_txid, high_position, status,
		coalesce(last_error, ''), events_applied, advanced_at, lease_epoch
		FROM readside.checkpoints WHERE projection = $1 ORDER BY segment FOR UPDATE`, projection)
	if err != nil {
		return ScaleResult{}, fmt.Errorf("scale %s: lock: %w", projection, err)
	}
	var old []oldSegment
	var seg int
	var o oldSegment
	if _, err := pgx.ForEachRow(rows, []any{&seg, &o.cursor.TxID, &o.cursor.Position, &o.high.TxID, &o.high.Position,
		&o.status, &o.lastError, &o.applied, &o.advanced, &o.epoch}, func() error {
		if seg != len(old) {
			return fmt.Errorf("segment %d missing", len(old))
		}
		old = append(old, o)
		return nil
	}); err != nil {
		return ScaleResult{}, fmt.Errorf("scale %s: %w", projection, err)
	}
	if len(old) == 0 {
		return ScaleResult{}, fmt.Errorf("scale %s: %w", projection, ErrUnknownProjection)
	}
	res := ScaleResult{From: len(old), To: n}
	if !CanScale(len(old)) {
		return res, fmt.Errorf("scale %s from %d: %w", projection, len(old), ErrScaleSplit)
	}
	floors, highs, err := bucketPoints(ctx, tx, projection, old)
	if err != nil {
		return res, err
	}
	newRows := regroup(old, floors, highs, n)
	if err := writeScale(ctx, tx, projection, newRows, floors, highs); err != nil {
		return res, fmt.Errorf("scale %s: %w", projection, err)
	}
	return res, nil
}

// LockProjection takes projection's registry row lock for a change of its
// split, in the caller's transaction: Register and RegisterShadow (a
// rebuild starting) wait for it, and it waits for them.
//
// FOR NO KEY UPDATE, not FOR UPDATE: a row that references the projection
// (a dead letter parked by a batch in flight) takes the key-share lock
// that FOR UPDATE would refuse it, and that batch already holds the
// checkpoint row the scale waits for next: a deadlock, one of the two
// aborted (40P01). The name never changes under it, so the weaker lock
// keeps out all it must (the updates, SELECT ... FOR SHARE).
func LockProjection(ctx context.Context, tx DB, projection string) error {
	if _, err := tx.Exec(ctx, `SELECT 1 FROM readside.projections WHERE name = $1 FOR NO KEY UPDATE`, projection); err != nil {
		return fmt.Errorf("lock %s: %w", projection, err)
	}
	return nil
}

// bucketPoints returns each bucket's floor and high: the furthest of the
// old segment's cursor (high-water mark) and what an earlier scale left.
func bucketPoints(ctx context.Context, tx DB, projection string, old []oldSegment) (floors, highs [Buckets]outbox.Cursor, err error) {
	for b := range Buckets {
		floors[b], highs[b] = old[b%len(old)].cursor, old[b%len(old)].high
	}
	rows, err := tx.Query(ctx, `SELECT bucket, floor_txid, floor_position, high_txid, high_position
		FROM readside.checkpoint_buckets WHERE projection = $1`, projection)
	if err != nil {
		return floors, highs, fmt.Errorf("scale %s: buckets: %w", projection, err)
	}
	var b int
	var f, h outbox.Cursor
	if _, err := pgx.ForEachRow(rows, []any{&b, &f.TxID, &f.Position, &h.TxID, &h.Position}, func() error {
		floors[b] = maxCursor(floors[b], f)
		highs[b] = maxCursor(highs[b], h)
		return nil
	}); err != nil {
		return floors, highs, fmt.Errorf("scale %s: buckets: %w", projection, err)
	}
	for b := range Buckets {
		highs[b] = maxCursor(highs[b], floors[b])
	}
	return floors, highs, nil
}

func maxCursor(a, b outbox.Cursor) outbox.Cursor {
	if a.Less(b) {
		return b
	}
	return a
}

// newSegment is a checkpoint row of the new split.
type newSegment struct {
	cursor, high outbox.Cursor
	status       Status
	lastError    string
	applied      int64
	advanced     *time.Time
}

// regroup computes the n new checkpoints from the old ones and the
// buckets' points.
func regroup(old []oldSegment, floors, highs [Buckets]outbox.Cursor, n int) []newSegment {
	out := make([]newSegment, n)
	first := make([]bool, n)
	for i := range out {
		out[i].status = Running
		first[i] = true
	}
	per := Buckets / len(old) // buckets of each old segment
	for b := range Buckets {
		t, s := &out[b%n], old[b%len(old)]
		if first[b%n] || floors[b].Less(t.cursor) {
			t.cursor = floors[b]
		}
		if first[b%n] || highs[b].Less(t.high) {
			t.high = highs[b]
		}
		first[b%n] = false
		// The old segment's applied count, shared out over its buckets.
		i := int64(b / len(old))
		t.applied += s.applied / int64(per)
		if i < s.applied%int64(per) {
			t.applied++
		}
		if s.advanced != nil && (t.advanced == nil || s.advanced.After(*t.advanced)) {
			t.advanced = s.advanced
		}
		switch {
		case s.status == Failed && t.status != Failed:
			t.status, t.lastError = Failed, s.lastError
		case s.status == Paused && t.status == Running:
			t.status = Paused
		}
	}
	return out
}

// writeScale writes the new split: n checkpoints (those beyond n
// deleted), the projection's segment count and the buckets' points.
func writeScale(ctx context.Context, tx DB, projection string, segs []newSegment, floors, highs [Buckets]outbox.Cursor) error {
	n := len(segs)
	if _, err := tx.Exec(ctx, `DELETE FROM readside.checkpoints WHERE projection = $1 AND segment >= $2`, projection, n); err != nil {
		return err
	}
	curT, curP, highT, highP, applied := make([]string, n), make([]int64, n), make([]string, n), make([]int64, n), make([]int64, n)
	status, lastErr, advanced := make([]string, n), make([]*string, n), make([]*time.Time, n)
	for i, s := range segs {
		curT[i], curP[i] = fmt.Sprint(s.cursor.TxID), s.cursor.Position
		highT[i], highP[i] = fmt.Sprint(s.high.TxID), s.high.Position
		applied[i], status[i], advanced[i] = s.applied, string(s.status), s.advanced
		if s.lastError != "" {
			e := s.lastError
			lastErr[i] = &e
		}
	}
	// The epoch of every new checkpoint is above every old one, whatever
	// row it lands in: a lease of the old split never matches it.
	if _, err := tx.Exec(ctx, `
WITH e AS (SELECT coalesce(max(lease_epoch), 0) + 1 AS epoch FROM readside.checkpoints WHERE projection = $1)
INSERT INTO readside.checkpoints AS c (projection, segment, cursor_txid, cursor_position, high_txid, high_position, status,
       last_error, events_applied, advanced_at, lease_epoch, lease_owner, lease_expires_at)
SELECT $1, x.segment - 1, x.ct::xid8, x.cp, x.ht::xid8, x.hp, x.status, x.last_error, x.applied, x.advanced, e.epoch, NULL, NULL
  FROM e, unnest($2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::bigint[], $9::timestamptz[])
       WITH ORDINALITY AS x(ct, cp, ht, hp, status, last_error, applied, advanced, segment)
ON CONFLICT (projection, segment) DO UPDATE SET
       cursor_txid = excluded.cursor_txid, cursor_position = excluded.cursor_position,
       high_txid = excluded.high_txid, high_position = excluded.high_position,
       status = excluded.status, last_error = excluded.last_error, events_applied = excluded.events_applied,
       advanced_at = excluded.advanced_at, lease_epoch = excluded.lease_epoch, lease_owner = NULL,
       lease_expires_at = NULL, updated_at = now()`,
		projection, curT, curP, highT, highP, status, lastErr, applied, advanced); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE readside.projections SET segments = $2, updated_at = now() WHERE name = $1`, projection, n); err != nil {
		return err
	}
	fT, fP, hT, hP := make([]string, Buckets), make([]int64, Buckets), make([]string, Buckets), make([]int64, Buckets)
	for b := range Buckets {
		fT[b], fP[b] = fmt.Sprint(floors[b].TxID), floors[b].Position
		hT[b], hP[b] = fmt.Sprint(highs[b].TxID), highs[b].Position
	}
	_, err := tx.Exec(ctx, `
INSERT INTO readside.checkpoint_buckets (projection, bucket, floor_txid, floor_position, high_txid, high_position)
SELECT $1, x.bucket - 1, x.ft::xid8, x.fp, x.ht::xid8, x.hp
  FROM unnest($2::text[], $3::bigint[], $4::text[], $5::bigint[]) WITH ORDINALITY AS x(ft, fp, ht, hp, bucket)
ON CONFLICT (projection, bucket) DO UPDATE SET floor_txid = excluded.floor_txid, floor_position = excluded.floor_position,
       high_txid = excluded.high_txid, high_position = excluded.high_position`, projection, fT, fP, hT, hP)
	return err
}

// clearFloors sets the floors of projection's buckets back to the start,
// keeping their highs: after a reset or a rebuild's switch the segments'
// cursors say what is applied. The caller holds the checkpoint locks.
func clearFloors(ctx context.Context, tx DB, projection string) error {
	if _, err := tx.Exec(ctx, `UPDATE readside.checkpoint_buckets SET floor_txid = '0', floor_position = 0
		WHERE projection = $1 AND (floor_txid, floor_position) > ('0'::xid8, 0::bigint)`, projection); err != nil {
		return fmt.Errorf("clear the bucket floors of %s: %w", projection, err)
	}
	return nil
}

// Split is how a claimed segment reads: its projection's segment count,
// and up to where its buckets' points (Floors) matter.
type Split struct {
	Segments int
	// Until is the greatest high among the segment's buckets (their floors
	// lie at or below it); batches after it need not ask Floors. Zero when
	// the projection was never scaled.
	Until outbox.Cursor
}

// Splits returns the split of each segment. Read it after claiming them:
// a scale that committed before the claim is seen, and one after it has
// fenced the claim.
func Splits(ctx context.Context, db DB, segs []Segment) (map[Segment]Split, error) {
	if len(segs) == 0 {
		return map[Segment]Split{}, nil
	}
	projs := make([]string, len(segs))
	nums := make([]int32, len(segs))
	for i, s := range segs {
		projs[i], nums[i] = s.Projection, int32(s.Segment)
	}
	rows, err := db.Query(ctx, `
SELECT s.projection, s.segment, p.segments, coalesce(m.high_txid, '0'), coalesce(m.high_position, 0)
  FROM unnest($1::text[], $2::int[]) AS s(projection, segment)
  JOIN readside.projections p ON p.name = s.projection
  LEFT JOIN LATERAL (SELECT b.high_txid, b.high_position FROM readside.checkpoint_buckets b
                      WHERE b.projection = p.name AND b.bucket % p.segments = s.segment
                      ORDER BY b.high_txid DESC, b.high_position DESC LIMIT 1) m ON true`, projs, nums)
	if err != nil {
		return nil, fmt.Errorf("splits: %w", err)
	}
	out := map[Segment]Split{}
	var k Segment
	var sp Split
	if _, err := pgx.ForEachRow(rows, []any{&k.Projection, &k.Segment, &sp.Segments, &sp.Until.TxID, &sp.Until.Position}, func() error {
		out[k] = sp
		return nil
	}); err != nil {
		return nil, fmt.Errorf("splits: %w", err)
	}
	return out, nil
}

// QueueFloors queues, into an apply transaction's batch, the question which
// of events lie at or below their bucket's high and which of those at or
// below its floor. Read the answer with ReadFloors.
func QueueFloors(b *pgx.Batch, projection string, events []outbox.Event) {
	ids, txids, aggs := make([]int64, len(events)), make([]string, len(events)), make([]string, len(events))
	for i, e := range events {
		ids[i], txids[i], aggs[i] = e.ID(), fmt.Sprint(e.Cursor.TxID), e.AggregateID
	}
	b.Queue(`SELECT x.id, (x.txid::xid8, x.id) <= (b.floor_txid, b.floor_position)
  FROM unnest($2::bigint[], $3::text[], $4::text[]) AS x(id, txid, aggregate_id)
  JOIN readside.checkpoint_buckets b ON b.projection = $1 AND b.bucket = readside.readside_segment(x.aggregate_id, 64)
 WHERE (x.txid::xid8, x.id) <= (b.high_txid, b.high_position)`, projection, ids, txids, aggs)
}

// ReadFloors reads the answer to QueueFloors: done holds the events at or
// below their bucket's floor (applied before a scale: not to apply again),
// replay the others at or below their bucket's high.
func ReadFloors(res pgx.BatchResults) (done, replay map[int64]bool, err error) {
	rows, err := res.Query()
	if err != nil {
		return nil, nil, err
	}
	done, replay = map[int64]bool{}, map[int64]bool{}
	var id int64
	var below bool
	_, err = pgx.ForEachRow(rows, []any{&id, &below}, func() error {
		if below {
			done[id] = true
		} else {
			replay[id] = true
		}
		return nil
	})
	return done, replay, err
}
