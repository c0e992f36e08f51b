-- The event store: append-only, one row per domain event. The unique
-- (aggregate_type, aggregate_id, version) constraint is the optimistic
-- concurrency check: two writers that both decided on version N cannot both
-- commit it.
CREATE TABLE events (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    event_data     jsonb       NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}',
    schema_version integer     NOT NULL DEFAULT 1 CHECK (schema_version > 0),
    version        integer     NOT NULL CHECK (version > 0),
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    -- The writing transaction's id. The gap-safe reader orders by it, and the
    -- per-aggregate xid rule (trigger below) compares against it.
    txid           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT events_aggregate_version_key UNIQUE (aggregate_type, aggregate_id, version)
);

-- Replaying history that the outbox has already pruned reads the events
-- table in the reader's order (txid, id).
CREATE INDEX events_txid_id_idx ON events (txid, id);

-- Payloads are compressed by the server (TOAST) rather than by hand; lz4 is
-- cheaper than the default pglz where the server was built with it.
DO $$
BEGIN
    ALTER TABLE events ALTER COLUMN event_data SET COMPRESSION lz4;
    ALTER TABLE events ALTER COLUMN metadata SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value OR undefined_object THEN
    RAISE NOTICE 'lz4 compression not available, keeping the default';
END
$$;

CREATE TABLE snapshots (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    version        integer     NOT NULL CHECK (version > 0),
    state          jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, version)
);

DO $$
BEGIN
    ALTER TABLE snapshots ALTER COLUMN state SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value OR undefined_object THEN
    RAISE NOTICE 'lz4 compression not available, keeping the default';
END
$$;
