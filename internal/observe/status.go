package observe

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/internal/checkpoint"
)

// LagCountCap is how many outbox rows Status counts per segment: a lag up
// to it is exact; a larger one is estimated from positions (the last event
// id minus the checkpoint's), so that a status or scrape costs the same
// with a thousand rows waiting or a billion.
const LagCountCap = 1_000

// SegmentStatus is one segment as operators see it, derived from database
// state only: a dead or stuck fleet shows growing lag, never a frozen value.
type SegmentStatus struct {
	checkpoint.Checkpoint
	// LagEvents counts committed outbox rows after the cursor in the
	// segment's own buckets (all event types: the segment must pass over
	// them too; every bucket when its count does not divide 64), exactly up to
	// LagCountCap; above it, it is an estimate from positions (event ids
	// handed out after the checkpoint's, rolled back ones included, times
	// the segment's share of the buckets).
	LagEvents int64
	// LagSeconds is the age of the oldest committed outbox row after the
	// cursor in the segment's buckets; 0 when caught up.
	LagSeconds float64
	// Parked counts this segment's events waiting in the dead-letter table.
	Parked int64
	// OwnerLive is true when a worker holds an unexpired lease.
	OwnerLive bool
	// StalledSeconds is the time since the cursor last moved while events
	// wait; 0 when caught up.
	StalledSeconds float64
}

// Status returns every segment of the named projections (all when none).
func Status(ctx context.Context, db checkpoint.DB, names ...string) ([]SegmentStatus, error) {
	if names == nil {
		names = []string{}
	}
	rows, err := db.Query(ctx, `
SELECT c.projection, c.segment, c.cursor_txid, c.cursor_position, c.high_txid, c.high_position, c.status,
       coalesce(c.lease_owner, ''), c.lease_epoch, c.lease_expires_at, coalesce(c.last_error, ''), c.events_applied,
       c.advanced_at, c.updated_at,
       (SELECT count(*) FROM (SELECT 1 FROM readside.outbox o
          WHERE o.bucket = ANY (s.buckets) AND (o.txid, o.position) > (c.cursor_txid, c.cursor_position) LIMIT $2 + 1) x),
       (coalesce((SELECT max(e.id) FROM readside.events e), 0) - c.cursor_position) * cardinality(s.buckets) / 64,
       coalesce((SELECT extract(epoch FROM now() - o.created_at) FROM readside.outbox o
          WHERE o.bucket = ANY (s.buckets) AND (o.txid, o.position) > (c.cursor_txid, c.cursor_position)
          ORDER BY o.txid, o.position LIMIT 1), 0)::float8,
       (SELECT count(*) FROM readside.dead_letters d
          WHERE d.projection = c.projection AND d.segment = c.segment AND d.status = 'parked'),
       coalesce(c.lease_owner IS NOT NULL AND c.lease_expires_at > now(), false)
  FROM readside.checkpoints c
  JOIN readside.projections p ON p.name = c.projection
 CROSS JOIN LATERAL (SELECT `+segmentBucketsSQL+` AS buckets) s
 WHERE cardinality($1::text[]) = 0 OR c.projection = ANY ($1::text[])
 ORDER BY c.projection, c.segment`, names, LagCountCap)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	now := time.Now()
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (SegmentStatus, error) {
		var s SegmentStatus
		var expires, advanced *time.Time
		var byPosition int64
		c := &s.Checkpoint
		err := r.Scan(&c.Projection, &c.Segment, &c.Cursor.TxID, &c.Cursor.Position, &c.HighWater.TxID, &c.HighWater.Position,
			&c.Status, &c.LeaseOwner, &c.LeaseEpoch, &expires, &c.LastError, &c.EventsApplied, &advanced, &c.UpdatedAt,
			&s.LagEvents, &byPosition, &s.LagSeconds, &s.Parked, &s.OwnerLive)
		if s.LagEvents > LagCountCap {
			s.LagEvents = max(s.LagEvents, byPosition)
		}
		if expires != nil {
			c.LeaseExpiresAt = *expires
		}
		if advanced != nil {
			c.AdvancedAt = *advanced
		}
		if s.LagEvents > 0 {
			since := c.UpdatedAt
			if !c.AdvancedAt.IsZero() {
				since = c.AdvancedAt
			}
			s.StalledSeconds = max(0, min(now.Sub(since).Seconds(), s.LagSeconds))
		}
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	return out, nil
}
