-- An event store keyed by stream id, as several write it (Marten's
-- mt_events, EventStoreDB's projections into SQL, hand-rolled stores):
-- one column holds "Type-id", the version is per stream, and nothing but
-- the primary key is NOT NULL.
CREATE TABLE app_events (
    seq            bigserial PRIMARY KEY,
    stream         text,
    stream_version integer,
    type           text,
    body           jsonb,
    recorded_at    timestamptz DEFAULT now()
);
CREATE UNIQUE INDEX app_events_stream_version ON app_events (stream, stream_version);
