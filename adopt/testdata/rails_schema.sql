-- The Rails seed's event store (db/migrate/..._create_event_store.rb), as
-- ActiveRecord 6.1/7 creates it on PostgreSQL: create_table :events with
-- t.string, t.jsonb, t.integer, t.datetime and t.timestamps.
CREATE TABLE events (
    id             bigserial PRIMARY KEY,
    aggregate_id   character varying NOT NULL,
    aggregate_type character varying NOT NULL,
    event_type     character varying NOT NULL,
    event_data     jsonb NOT NULL DEFAULT '{}',
    version        integer NOT NULL,
    occurred_at    timestamp(6) without time zone NOT NULL,
    created_at     timestamp(6) without time zone NOT NULL,
    updated_at     timestamp(6) without time zone NOT NULL
);
CREATE UNIQUE INDEX idx_events_aggregate_stream ON events (aggregate_id, aggregate_type, version);
CREATE INDEX index_events_on_event_type ON events (event_type);
CREATE INDEX index_events_on_occurred_at ON events (occurred_at);
