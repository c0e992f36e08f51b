-- Segment buckets: each outbox row carries its aggregate's bucket among 64
-- (the same hash as readside_segment), indexed with the read order. A
-- projection split in N segments, N dividing 64, reads only its own
-- buckets (64/N index range scans merged in order) instead of passing over
-- every row and keeping 1/N: segments then scale the fetch, not only the
-- apply.
ALTER TABLE outbox ADD COLUMN bucket smallint GENERATED ALWAYS AS (readside_segment(aggregate_id, 64)) STORED;
CREATE INDEX outbox_bucket_idx ON outbox (bucket, txid, position);
