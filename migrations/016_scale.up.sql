-- A projection's segment count changes without a replay (projector scale;
-- the correctness argument is in the README, "Guarantees, and how").
--
-- Every outbox row carries one of 64 buckets (migration 006); a projection
-- split in N segments (N dividing 64) gives segment s the buckets b with
-- b % N = s. A scale regroups buckets, so what it must carry over is where
-- each BUCKET stands: one row per (projection, bucket), written only by a
-- scale, under the row locks of every checkpoint of the projection.
--
--   floor  every event of the bucket at or below it has been applied (or
--          parked, or discarded) by the projection: the segment now holding
--          the bucket passes over them without applying them again. Its
--          cursor is the least floor of its buckets. A reset and a
--          rebuild's switch set it back to 0: from then on the segment's
--          own cursor says what is applied.
--   high   the furthest point the bucket's events were ever applied to: an
--          event at or below it is a replay (its side effects fired once).
--          Kept by a reset and by a switch, as a segment's high-water mark is.
--
-- A segment looks at these rows only while its batches lie at or below
-- the greatest high of its buckets (read when it is claimed).
CREATE TABLE checkpoint_buckets (
    projection     text     NOT NULL REFERENCES projections (name) ON DELETE CASCADE,
    bucket         smallint NOT NULL CHECK (bucket BETWEEN 0 AND 63),
    floor_txid     xid8     NOT NULL DEFAULT '0',
    floor_position bigint   NOT NULL DEFAULT 0,
    high_txid      xid8     NOT NULL DEFAULT '0',
    high_position  bigint   NOT NULL DEFAULT 0,
    CHECK ((floor_txid, floor_position) <= (high_txid, high_position)),
    PRIMARY KEY (projection, bucket)
);
