package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/readside/readside/checkpoint"
	"github.com/readside/readside/outbox"
)

// Status, Checkpoint and the errors are the public data model's.
type (
	Status     = checkpoint.Status
	Checkpoint = checkpoint.Checkpoint
)

const (
	Running = checkpoint.Running
	Paused  = checkpoint.Paused
	Failed  = checkpoint.Failed
)

var (
	ErrFenced            = checkpoint.ErrFenced
	ErrUnknownProjection = checkpoint.ErrUnknownProjection
)

// DB is what this package needs: *pgxpool.Pool, *pgx.Conn and pgx.Tx.
type DB = outbox.DB

// Lease is a worker's right to advance one segment.
type Lease struct {
	Projection string
	Segment    int
	Owner      string
	Epoch      int64
}

func (l Lease) String() string { return fmt.Sprintf("%s/%d@%d", l.Projection, l.Segment, l.Epoch) }

const selectCols = `projection, segment, cursor_txid, cursor_position, high_txid, high_position, status,
       coalesce(lease_owner, ''), lease_epoch, lease_expires_at, coalesce(last_error, ''), events_applied,
       advanced_at, updated_at`

func scan(row pgx.Row) (Checkpoint, error) {
	var c Checkpoint
	var expires, advanced *time.Time
	err := row.Scan(&c.Projection, &c.Segment, &c.Cursor.TxID, &c.Cursor.Position, &c.HighWater.TxID, &c.HighWater.Position,
		&c.Status, &c.LeaseOwner, &c.LeaseEpoch, &expires, &c.LastError, &c.EventsApplied, &advanced, &c.UpdatedAt)
	if expires != nil {
		c.LeaseExpiresAt = *expires
	}
	if advanced != nil {
		c.AdvancedAt = *advanced
	}
	return c, err
}

// List returns the checkpoints of the named projections (all when names is
// empty), ordered by projection and segment.
func List(ctx context.Context, db DB, names ...string) ([]Checkpoint, error) {
	rows, err := db.Query(ctx, `SELECT `+selectCols+` FROM readside.checkpoints
		WHERE cardinality($1::text[]) = 0 OR projection = ANY ($1::text[]) ORDER BY projection, segment`, nonNil(names))
	if err != nil {
		return nil, fmt.Errorf("list checkpoints: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Checkpoint, error) { return scan(r) })
	if err != nil {
		return nil, fmt.Errorf("list checkpoints: %w", err)
	}
	return out, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// advanceSQL moves the cursor; %s is the lease condition.
const advanceSQL = `
UPDATE readside.checkpoints
   SET cursor_txid = $5, cursor_position = $6,
       high_txid = CASE WHEN (high_txid, high_position) < ($5::xid8, $6::bigint) THEN $5::xid8 ELSE high_txid END,
       high_position = CASE WHEN (high_txid, high_position) < ($5::xid8, $6::bigint) THEN $6::bigint ELSE high_position END,
       events_applied = events_applied + $9,
       advanced_at = CASE WHEN (cursor_txid, cursor_position) <> ($5::xid8, $6::bigint) THEN now() ELSE advanced_at END,
       lease_expires_at = greatest(lease_expires_at, clock_timestamp() + $10::float8 * interval '1 second'),
       updated_at = now()
 WHERE projection = $1 AND segment = $2
   AND lease_owner = $3 AND lease_epoch = $4%s
   AND status = 'running'
   AND cursor_txid = $7 AND cursor_position = $8`

var (
	// advanceFirst is the first fenced UPDATE of a transaction: the lease
	// must be unexpired, since nothing kept others out until now.
	advanceFirst = fmt.Sprintf(advanceSQL, ` AND lease_expires_at > clock_timestamp()`)
	// advanceHeld follows a successful first one in the same transaction:
	// its row lock kept every claim out since, so owner and epoch suffice.
	advanceHeld = fmt.Sprintf(advanceSQL, ``)
	// advanceOrFail is advanceFirst as a statement that fails when it moves
	// nothing (fencedMark), so that nothing pipelined behind it runs: not
	// a projection's statements, not the COMMIT (dbschema.CommitBatch).
	// The failing cast is evaluated only then: its text depends on the
	// row count, so the planner cannot fold it.
	advanceOrFail = `WITH a AS (` + advanceFirst + `
 RETURNING 1)
SELECT CAST(CASE WHEN count(*) = 1 THEN '1' ELSE '` + fencedMark + `' END AS pg_catalog.int4) FROM a`
)

// fencedMark is the text of advanceOrFail's error: PostgreSQL reports
// `invalid input syntax for type integer: "readside: checkpoint fenced"`.
const fencedMark = "readside: checkpoint fenced"

// isFenced reports whether err is advanceOrFail's failure.
func isFenced(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "22P02" && strings.Contains(pe.Message, fencedMark)
}

// Advance moves a segment's cursor from `from` to `to` inside the caller's
// apply transaction, counting applied events. It returns ErrFenced, and
// changes nothing, unless the lease is current and unexpired, the segment is
// running, and the cursor is still at `from`. Call it first in the
// transaction: its row lock keeps the segment from being claimed until the
// transaction ends.
func Advance(ctx context.Context, tx DB, l Lease, from, to outbox.Cursor, applied int) error {
	tag, err := tx.Exec(ctx, advanceFirst, l.Projection, l.Segment, l.Owner, l.Epoch, to.TxID, to.Position, from.TxID, from.Position, applied, 0.0)
	return AdvanceResult(tag, err)(l, from)
}

// AdvanceHeld is Advance for a transaction whose first Advance (or queued
// Advance) succeeded: that UPDATE's row lock has kept the segment from being
// claimed, reset or paused since, so the lease is still the caller's even
// if its expiry passed meanwhile (a long apply, a slow isolation). It checks
// owner, epoch, status and cursor but not expiry, and extends the lease to
// at least ttl from now so that the next transaction finds it live.
func AdvanceHeld(ctx context.Context, tx DB, l Lease, from, to outbox.Cursor, applied int, ttl time.Duration) error {
	tag, err := tx.Exec(ctx, advanceHeld, l.Projection, l.Segment, l.Owner, l.Epoch, to.TxID, to.Position, from.TxID, from.Position, applied, ttl.Seconds())
	return AdvanceResult(tag, err)(l, from)
}

// QueueAdvance queues Advance into a pipelined batch, also extending the
// lease to at least ttl from now: a segment that is busy all the time holds
// its row lock too often for the renewal (which skips locked rows) to reach
// it, so its batches renew it. When fenced the statement fails, and what
// the batch holds behind it is not run. Check the result with
// AdvanceResult.
func QueueAdvance(b *pgx.Batch, l Lease, from, to outbox.Cursor, applied int, ttl time.Duration) {
	b.Queue(advanceOrFail, l.Projection, l.Segment, l.Owner, l.Epoch, to.TxID, to.Position, from.TxID, from.Position, applied, ttl.Seconds())
}

// AdvanceResult turns the result of a queued Advance into its error.
func AdvanceResult(tag pgconn.CommandTag, err error) func(l Lease, from outbox.Cursor) error {
	return func(l Lease, from outbox.Cursor) error {
		if err != nil && !isFenced(err) {
			return fmt.Errorf("advance %s: %w", l, err)
		}
		if err != nil || tag.RowsAffected() == 0 {
			return fmt.Errorf("advance %s from %s: %w", l, from, ErrFenced)
		}
		return nil
	}
}

// Fail halts a segment (status failed) with the reason, inside the apply
// transaction that committed the events before the failing one.
func Fail(ctx context.Context, tx DB, l Lease, reason string) error {
	_, err := tx.Exec(ctx, `UPDATE readside.checkpoints SET status = 'failed', last_error = $4, updated_at = now()
		WHERE projection = $1 AND segment = $2 AND lease_epoch = $3`, l.Projection, l.Segment, l.Epoch, reason)
	if err != nil {
		return fmt.Errorf("fail %s: %w", l, err)
	}
	return nil
}

// SetStatus pauses or resumes every segment of a projection (resuming also
// clears a failed segment's error). It returns how many segments changed.
func SetStatus(ctx context.Context, db interface {
	DB
	Begin(ctx context.Context) (pgx.Tx, error)
}, projection string, status Status) (int, error) {
	if err := Exists(ctx, db, projection); err != nil {
		return 0, err
	}
	var from []string
	switch status {
	case Paused:
		from = []string{string(Running), string(Failed)}
	case Running:
		from = []string{string(Paused), string(Failed)}
	default:
		return 0, fmt.Errorf("set status: %q is not paused or running", status)
	}
	// The rows are locked in segment order first, as every operation
	// that locks all of a projection's checkpoints does
	// (LockForOperation, Scale): an UPDATE alone locks them in the order
	// its scan meets them (their heap order), and could hold one segment
	// while it waits for another that a reset or a scale holds, waiting
	// for the first.
	//
	// The registry row first (FOR SHARE, as a retry takes it), in a
	// statement of its own: a scale holds it until it has written the
	// new split, and the UPDATE's snapshot, taken after, sees every
	// segment of it (one taken before would miss the segments the scale
	// added, which would stay as they were).
	var n int
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT 1 FROM readside.projections WHERE name = $1 FOR SHARE`, projection); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `WITH locked AS MATERIALIZED (
    SELECT segment FROM readside.checkpoints WHERE projection = $1 ORDER BY segment FOR UPDATE
)
UPDATE readside.checkpoints c SET status = $2, last_error = CASE WHEN $2 = 'running' THEN NULL ELSE c.last_error END,
       updated_at = now()
  FROM locked l WHERE c.projection = $1 AND c.segment = l.segment AND c.status = ANY ($3::text[])`, projection, status, from)
		n = int(tag.RowsAffected())
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("set status %s: %w", projection, err)
	}
	return n, nil
}

// Move sets the cursor of every segment of a projection to `to`, bumping
// the lease epoch and dropping the lease so that no current owner can
// commit across the move. The caller runs it in the transaction that also
// resets the read model. It clears the floors a scale left (see Scale) and
// keeps the buckets' highs, as it keeps the segments' high-water marks.
func Move(ctx context.Context, tx DB, projection string, to outbox.Cursor) error {
	tag, err := tx.Exec(ctx, `UPDATE readside.checkpoints SET cursor_txid = $2, cursor_position = $3,
		`+newLease("checkpoints", "NULL", "NULL")+`,
		last_error = NULL, status = CASE WHEN status = 'failed' THEN 'running' ELSE status END, updated_at = now()
		WHERE projection = $1`, projection, to.TxID, to.Position)
	if err != nil {
		return fmt.Errorf("move %s to %s: %w", projection, to, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("move %s: %w", projection, ErrUnknownProjection)
	}
	// After the move the cursors say what is applied: events a scale had
	// left below a bucket's floor are applied again from the new cursor.
	return clearFloors(ctx, tx, projection)
}
