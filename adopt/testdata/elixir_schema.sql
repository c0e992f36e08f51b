-- The Elixir seed's event store, partitioned by month on created_at as its
-- "partitioning" section does. PostgreSQL requires a partitioned table's
-- unique constraints to include the partition key, so the primary key and
-- the (aggregate_id, event_version) key carry created_at (readside's copy
-- enforces one row per version on its side).
CREATE TABLE events (
    id             bigserial,
    aggregate_id   uuid NOT NULL,
    aggregate_type character varying(255) NOT NULL,
    event_type     character varying(255) NOT NULL,
    event_data     jsonb NOT NULL,
    event_metadata jsonb,
    event_version  integer NOT NULL,
    created_at     timestamp with time zone NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at),
    UNIQUE (aggregate_id, event_version, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX idx_events_aggregate_id ON events (aggregate_id);
CREATE INDEX idx_events_aggregate_type ON events (aggregate_type);
CREATE INDEX idx_events_created_at ON events (created_at);
CREATE TABLE events_2024_01 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');
CREATE TABLE events_2024_02 PARTITION OF events FOR VALUES FROM ('2024-02-01') TO ('2024-03-01');
