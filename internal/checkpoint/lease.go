package checkpoint

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/outbox"
)

// Held is a lease Renew kept, with its segment's stored cursor and
// high-water mark as the renewal read them.
type Held struct {
	Lease
	Cursor, HighWater outbox.Cursor
}

// Member describes a fleet member for its heartbeat.
type Member struct {
	ID          string
	Host        string
	PID         int
	Projections []string      // the projections it runs
	LeaseTTL    time.Duration // it counts as live this long after a heartbeat
}

// Heartbeat records that m is alive and returns the live fleet (m
// included): every worker whose heartbeat is younger than its own TTL, with
// the projections it runs, ordered by id.
func Heartbeat(ctx context.Context, db DB, m Member) ([]Member, error) {
	if _, err := db.Exec(ctx, `INSERT INTO readside.workers (id, host, pid, projections, lease_ttl_seconds) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), host = excluded.host, pid = excluded.pid,
		    projections = excluded.projections, lease_ttl_seconds = excluded.lease_ttl_seconds`,
		m.ID, m.Host, m.PID, nonNil(m.Projections), m.LeaseTTL.Seconds()); err != nil {
		return nil, fmt.Errorf("heartbeat %s: %w", m.ID, err)
	}
	rows, err := db.Query(ctx, `SELECT id, host, pid, projections, lease_ttl_seconds FROM readside.workers
		WHERE heartbeat_at > now() - lease_ttl_seconds * interval '1 second' OR id = $1 ORDER BY id`, m.ID)
	if err != nil {
		return nil, fmt.Errorf("heartbeat %s: %w", m.ID, err)
	}
	members, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Member, error) {
		var x Member
		var ttl float64
		err := r.Scan(&x.ID, &x.Host, &x.PID, &x.Projections, &ttl)
		x.LeaseTTL = time.Duration(ttl * float64(time.Second))
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("heartbeat %s: %w", m.ID, err)
	}
	return members, nil
}

// Leave deletes a worker's heartbeat and releases all of its leases, for a
// clean stop: the segments can be claimed at once instead of after the TTL.
func Leave(ctx context.Context, db DB, id string) error {
	// Locked in (projection, segment) order first, as an operation on a
	// projection locks its checkpoints (see SetStatus).
	if _, err := db.Exec(ctx, `WITH locked AS MATERIALIZED (
    SELECT projection, segment FROM readside.checkpoints WHERE lease_owner = $1 ORDER BY projection, segment FOR UPDATE
)
UPDATE readside.checkpoints c SET lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
  FROM locked l WHERE c.projection = l.projection AND c.segment = l.segment AND c.lease_owner = $1`, id); err != nil {
		return fmt.Errorf("leave %s: %w", id, err)
	}
	if _, err := db.Exec(ctx, `DELETE FROM readside.workers WHERE id = $1`, id); err != nil {
		return fmt.Errorf("leave %s: %w", id, err)
	}
	return nil
}

// Segment names one segment.
type Segment struct {
	Projection string
	Segment    int
}

// ClaimSegments takes, for ttl, the listed running segments that have no
// owner or whose lease expired, bumping each one's epoch so that the
// previous owner is fenced. Segments locked by an apply transaction in
// flight are skipped (their owner is alive and working).
func ClaimSegments(ctx context.Context, db DB, owner string, segs []Segment, ttl time.Duration) ([]Checkpoint, error) {
	if len(segs) == 0 {
		return nil, nil
	}
	projs := make([]string, len(segs))
	nums := make([]int32, len(segs))
	for i, s := range segs {
		projs[i], nums[i] = s.Projection, int32(s.Segment)
	}
	rows, err := db.Query(ctx, `
UPDATE readside.checkpoints c
   SET `+newLease("c", "$1", "clock_timestamp() + $4::float8 * interval '1 second'")+`, updated_at = now()
  FROM (SELECT c2.projection, c2.segment FROM readside.checkpoints c2
          JOIN unnest($2::text[], $3::int[]) AS w(projection, segment) ON w.projection = c2.projection AND w.segment = c2.segment
         WHERE c2.status = 'running' AND (c2.lease_owner IS NULL OR c2.lease_expires_at < clock_timestamp())
         FOR UPDATE OF c2 SKIP LOCKED) f
 WHERE c.projection = f.projection AND c.segment = f.segment
RETURNING `+prefixed("c")+``, owner, projs, nums, ttl.Seconds())
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Checkpoint, error) { return scan(r) })
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	return out, nil
}

func prefixed(alias string) string {
	return alias + `.projection, ` + alias + `.segment, ` + alias + `.cursor_txid, ` + alias + `.cursor_position, ` +
		alias + `.high_txid, ` + alias + `.high_position, ` + alias + `.status, coalesce(` + alias + `.lease_owner, ''), ` +
		alias + `.lease_epoch, ` + alias + `.lease_expires_at, coalesce(` + alias + `.last_error, ''), ` +
		alias + `.events_applied, ` + alias + `.advanced_at, ` + alias + `.updated_at`
}

// Renew extends the given leases by ttl and returns those still held.
// A lease is lost when its epoch moved (reset, takeover), it expired, or its
// segment was paused. Segments locked by the owner's own apply transaction
// are not waited for: they count as held if owner and epoch still match.
//
// Each lease kept comes with the segment's stored cursor and high-water
// mark: a worker's own view of an idle segment can be ahead of them only
// when a crash of the server undid its last apply transactions, which
// commit asynchronously (projectors.Config.SynchronousApply).
func Renew(ctx context.Context, db DB, owner string, leases []Lease, ttl time.Duration) ([]Held, error) {
	if len(leases) == 0 {
		return nil, nil
	}
	projs := make([]string, len(leases))
	segs := make([]int32, len(leases))
	epochs := make([]int64, len(leases))
	for i, l := range leases {
		projs[i], segs[i], epochs[i] = l.Projection, int32(l.Segment), l.Epoch
	}
	rows, err := db.Query(ctx, `
WITH want AS (
    SELECT * FROM unnest($2::text[], $3::int[], $4::bigint[]) AS w(projection, segment, epoch)
), renewed AS (
    UPDATE readside.checkpoints c SET lease_expires_at = clock_timestamp() + $5::float8 * interval '1 second'
      FROM (SELECT c2.projection, c2.segment FROM readside.checkpoints c2
              JOIN want w ON w.projection = c2.projection AND w.segment = c2.segment AND w.epoch = c2.lease_epoch
             WHERE c2.lease_owner = $1 AND c2.status = 'running' AND c2.lease_expires_at > clock_timestamp()
             FOR UPDATE OF c2 SKIP LOCKED) f
     WHERE c.projection = f.projection AND c.segment = f.segment
    RETURNING c.projection, c.segment
)
SELECT w.projection, w.segment, w.epoch, c.cursor_txid, c.cursor_position, c.high_txid, c.high_position
  FROM want w JOIN readside.checkpoints c ON c.projection = w.projection AND c.segment = w.segment
 WHERE EXISTS (SELECT 1 FROM renewed r WHERE r.projection = w.projection AND r.segment = w.segment)
    OR (c.lease_owner = $1 AND c.lease_epoch = w.epoch AND c.status = 'running'
        AND c.lease_expires_at > clock_timestamp())`, owner, projs, segs, epochs, ttl.Seconds())
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	kept, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Held, error) {
		h := Held{Lease: Lease{Owner: owner}}
		err := r.Scan(&h.Projection, &h.Segment, &h.Epoch, &h.Cursor.TxID, &h.Cursor.Position, &h.HighWater.TxID, &h.HighWater.Position)
		return h, err
	})
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	return kept, nil
}

// Release gives a lease up so that another worker can claim it at once.
func Release(ctx context.Context, db DB, l Lease) error {
	if _, err := db.Exec(ctx, `UPDATE readside.checkpoints SET lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
		WHERE projection = $1 AND segment = $2 AND lease_owner = $3 AND lease_epoch = $4`,
		l.Projection, l.Segment, l.Owner, l.Epoch); err != nil {
		return fmt.Errorf("release %s: %w", l, err)
	}
	return nil
}
