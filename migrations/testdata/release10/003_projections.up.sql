-- The segment an aggregate belongs to when a projection is split in n.
-- Immutable: a segment's checkpoint only means something for a fixed split.
CREATE FUNCTION readside_segment(aggregate_id text, n integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN n <= 1 THEN 0 ELSE (hashtext(aggregate_id) & 2147483647) % n END;

-- Registered projections. segments is fixed at registration: a segment's
-- checkpoint only means something for the hash split it was built with.
CREATE TABLE projections (
    name       text        PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    segments   integer     NOT NULL CHECK (segments BETWEEN 1 AND 1024),
    on_error   text        NOT NULL DEFAULT 'park' CHECK (on_error IN ('park', 'halt')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per (projection, segment): the whole read cursor (txid AND
-- position: resuming by position alone loses rows), the lease that fences
-- writers, and what operators need to see.
CREATE TABLE checkpoints (
    projection       text        NOT NULL REFERENCES projections (name) ON DELETE CASCADE,
    segment          integer     NOT NULL CHECK (segment >= 0),
    cursor_txid      xid8        NOT NULL DEFAULT '0',
    cursor_position  bigint      NOT NULL DEFAULT 0,
    -- The furthest cursor ever committed. A reset moves the cursor back but
    -- not this: batches at or below it are replays, and projections suppress
    -- their side effects.
    high_txid        xid8        NOT NULL DEFAULT '0',
    high_position    bigint      NOT NULL DEFAULT 0,
    status           text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'paused', 'failed')),
    lease_owner      text,
    lease_epoch      bigint      NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,
    last_error       text,
    events_applied   bigint      NOT NULL DEFAULT 0,
    advanced_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, segment)
);

-- Live projector processes. A worker is live while its heartbeat is younger
-- than the lease TTL; fair share is ceil(segments / live workers).
CREATE TABLE workers (
    id           text        PRIMARY KEY,
    host         text        NOT NULL DEFAULT '',
    pid          integer     NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Events a projection could not apply. status parked: waiting for an
-- operator; reason failed: this event's apply failed; reason blocked: parked
-- behind an earlier failed event of the same aggregate, to keep its order.
CREATE TABLE dead_letters (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection      text        NOT NULL REFERENCES projections (name) ON DELETE CASCADE,
    segment         integer     NOT NULL,
    event_id        bigint      NOT NULL,
    txid            xid8        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    event_type      text        NOT NULL,
    version         integer     NOT NULL,
    reason          text        NOT NULL CHECK (reason IN ('failed', 'blocked')),
    error           text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 1,
    status          text        NOT NULL DEFAULT 'parked' CHECK (status IN ('parked', 'retrying', 'retried', 'discarded')),
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    UNIQUE (projection, event_id)
);

-- Every batch asks "which of these aggregates are parked for this
-- projection?"; only parked rows matter, so the index holds only those.
CREATE INDEX dead_letters_parked_idx ON dead_letters (projection, aggregate_type, aggregate_id)
    WHERE status IN ('parked', 'retrying');
