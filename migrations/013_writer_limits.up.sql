-- Limits on what a writer may choose (issue 22).

-- The largest event: event_data and metadata together, as jsonb and
-- uncompressed (readside_event_bytes), at most readside_max_event_bytes()
-- bytes. A 50 MB payload, or six in one transaction, went through to every
-- projector's memory. The limit is a constant the owner of readside's
-- objects changes with readside_set_max_event_bytes(bytes), which replaces
-- the function (plans that folded the old value are invalidated with it):
-- no per-row table read, no setting a writer could change.
CREATE FUNCTION readside_max_event_bytes() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS 'SELECT 1048576::pg_catalog.int8';

DO $do$
BEGIN
    EXECUTE pg_catalog.format($f$
CREATE FUNCTION %1$I.readside_set_max_event_bytes(bytes bigint) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $body$
BEGIN
    IF bytes IS NULL OR bytes < 1024 OR bytes > 1073741824 THEN
        RAISE EXCEPTION 'readside: the largest event must be between 1024 bytes and 1 GiB, not %%', bytes
            USING ERRCODE = '22023';
    END IF;
    EXECUTE format('CREATE OR REPLACE FUNCTION %%I.readside_max_event_bytes() RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE AS %%L',
        %2$L, format('SELECT %%s::pg_catalog.int8', bytes));
END
$body$;
$f$, pg_catalog.current_schema(), pg_catalog.current_schema());
END
$do$;
REVOKE ALL ON FUNCTION readside_set_max_event_bytes(bigint) FROM PUBLIC;

-- An event's size as the limit and the fetch budget count it. A value that
-- arrives compressed (INSERT ... SELECT from a table that stores it so) is
-- measured as text: pg_column_size would give its compressed size, and 3
-- MB of one repeated character compress to 35 kB.
CREATE FUNCTION readside_event_bytes(d jsonb, m jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT (CASE WHEN pg_catalog.pg_column_compression(d) IS NULL THEN pg_catalog.pg_column_size(d)
             ELSE pg_catalog.octet_length(d::pg_catalog.text) END)::pg_catalog.int8
       OPERATOR(pg_catalog.+)
       (CASE WHEN pg_catalog.pg_column_compression(m) IS NULL THEN COALESCE(pg_catalog.pg_column_size(m), 0)
             ELSE pg_catalog.octet_length(m::pg_catalog.text) END)::pg_catalog.int8
$$;

-- Event ids come from the identity only. OVERRIDING SYSTEM VALUE, or a
-- COPY that names the id column, writes the ids the writer gives: ids the
-- identity hands out next (every later append then fails on events_pkey),
-- negative ones, the largest bigint. A row trigger refuses any row whose
-- id is not the value the identity drew for it: the default is evaluated
-- (nextval) just before the row's BEFORE triggers, so a drawn id equals
-- currval in this session. A session that never drew has no currval
-- (55000 from currval, caught). SQLSTATE 428C9 is PostgreSQL's own for a
-- value written into a GENERATED ALWAYS column. The same trigger refuses
-- an event over the size limit (54000).
CREATE FUNCTION readside_events_row_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    drawn bigint;
    bytes bigint;
BEGIN
    BEGIN
        drawn := currval('events_id_seq');
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        drawn := NULL;
    END;
    IF drawn IS DISTINCT FROM NEW.id THEN
        RAISE EXCEPTION 'readside: % % version %: events.id % was chosen by the writer, not drawn from the identity; leave id to its default',
            NEW.aggregate_type, NEW.aggregate_id, NEW.version, NEW.id
            USING ERRCODE = '428C9', CONSTRAINT = 'readside_events_id_generated', TABLE = 'events', COLUMN = 'id',
                  HINT = 'OVERRIDING SYSTEM VALUE and a COPY naming the id column are refused.';
    END IF;
    bytes := readside_event_bytes(NEW.event_data, NEW.metadata);
    IF bytes > readside_max_event_bytes() THEN
        RAISE EXCEPTION 'readside: % % version %: event_data and metadata take % bytes, over the limit of % bytes',
            NEW.aggregate_type, NEW.aggregate_id, NEW.version, bytes, readside_max_event_bytes()
            USING ERRCODE = '54000', CONSTRAINT = 'readside_event_max_bytes', TABLE = 'events',
                  HINT = 'Store large content elsewhere and put a reference in the event; the owner may raise the limit with readside_set_max_event_bytes(bytes).';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER events_row_guard BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION readside_events_row_guard();

DO $$
BEGIN
    EXECUTE pg_catalog.format('ALTER FUNCTION readside_events_row_guard() SET search_path = pg_catalog, %I, pg_temp',
        pg_catalog.current_schema());
END
$$;

-- Snapshots are written by the transaction that appends their version.
-- A snapshot is a cache of the events, and Load trusts it: a writer that
-- inserted one of its own making (a pending order marked confirmed, a
-- version the log does not hold) changed what commands decide. A row
-- trigger refuses a snapshot unless the event at its version was appended
-- by the inserting transaction (23514, readside_snapshot_own_append),
-- which is how aggregate.Save writes them; the owner of readside's objects
-- (and a superuser) is exempt. The writer still chooses the state it
-- snapshots, as it chooses the events it appends: the rule binds each
-- snapshot to an append of its own, so none rewrites an aggregate's past
-- or runs ahead of its log. It runs with the inserting role's rights
-- (SELECT on events is part of the writer grant).
CREATE FUNCTION readside_snapshots_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM events e
                WHERE e.aggregate_type = NEW.aggregate_type AND e.aggregate_id = NEW.aggregate_id
                  AND e.version = NEW.version AND e.txid = pg_current_xact_id())
       OR pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID), 'USAGE') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'readside: snapshot of % % at version % refused: this transaction did not append that version',
        NEW.aggregate_type, NEW.aggregate_id, NEW.version
        USING ERRCODE = '23514', CONSTRAINT = 'readside_snapshot_own_append', TABLE = 'snapshots',
              HINT = 'A snapshot is written in the transaction that appends the event at its version (aggregate.Save does).';
END
$$;

CREATE TRIGGER snapshots_own_append BEFORE INSERT OR UPDATE ON snapshots
    FOR EACH ROW EXECUTE FUNCTION readside_snapshots_guard();

DO $$
BEGIN
    EXECUTE pg_catalog.format('ALTER FUNCTION readside_snapshots_guard() SET search_path = pg_catalog, %I, pg_temp',
        pg_catalog.current_schema());
END
$$;

-- Snapshots written before the rule may be forged: they are a cache, the
-- next loads fold the events and the next appends write new ones.
TRUNCATE snapshots;

-- Each outbox row carries its event's size (readside_event_bytes), so a
-- fetch bounds its batch by bytes before it reads a payload. Rows written
-- before this migration have none and count as 0. Only the events trigger
-- writes the outbox, so a writer cannot understate it.
ALTER TABLE outbox ADD COLUMN payload_bytes integer;

-- The events trigger, as in 012, writing payload_bytes.
CREATE OR REPLACE FUNCTION readside_events_to_outbox() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    me    xid8 := pg_current_xact_id();
    mine  bigint := me::text::bigint;
    bad   record;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1920169842, (mine << 32 >> 32)::int4);
    IF mine < coalesce(pg_sequence_last_value('read_fence'), 0) THEN
        -- (A statement that inserted no row writes nothing to refuse.)
        IF EXISTS (SELECT 1 FROM new_events) THEN
            PERFORM readside_fence_refuse(me);
        END IF;
    END IF;

    SELECT n.aggregate_type, n.aggregate_id, n.version, n.txid
      INTO bad
      FROM new_events n
     WHERE n.txid <> me
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'readside: % % version %: txid % is not this transaction''s id (%); leave events.txid to its default',
            bad.aggregate_type, bad.aggregate_id, bad.version, bad.txid, me
            USING ERRCODE = '23514', CONSTRAINT = 'readside_events_txid_current', TABLE = 'events', COLUMN = 'txid';
    END IF;

    SELECT n.aggregate_type, n.aggregate_id, n.version, n.id, p.txid AS prev_txid, p.id AS prev_id
      INTO bad
      FROM new_events n
      LEFT JOIN events p
        ON p.aggregate_type = n.aggregate_type
       AND p.aggregate_id = n.aggregate_id
       AND p.version = n.version - 1
     WHERE n.version > 1 AND (p.txid IS NULL OR (p.txid, p.id) > (n.txid, n.id))
     LIMIT 1;
    IF NOT FOUND THEN
        NULL;
    ELSIF bad.prev_txid IS NULL THEN
        RAISE EXCEPTION 'readside: % % version % does not exist, so version % cannot be appended (stale or wrong expected version)',
            bad.aggregate_type, bad.aggregate_id, bad.version - 1, bad.version
            USING ERRCODE = '23514', CONSTRAINT = 'readside_aggregate_version_gap', TABLE = 'events';
    ELSIF bad.prev_txid > me THEN
        RAISE EXCEPTION 'readside: % % version % was committed by a newer transaction (xid %) than this one (xid %); retry the transaction',
            bad.aggregate_type, bad.aggregate_id, bad.version - 1, bad.prev_txid, me
            USING ERRCODE = '40001', CONSTRAINT = 'readside_aggregate_xid_order', TABLE = 'events';
    ELSE
        RAISE EXCEPTION 'readside: % % version % comes after version % in the statement''s row order (ids % > %): write an aggregate''s rows in version order',
            bad.aggregate_type, bad.aggregate_id, bad.version - 1, bad.version, bad.prev_id, bad.id
            USING ERRCODE = '23514', CONSTRAINT = 'readside_aggregate_version_order', TABLE = 'events',
                  HINT = 'The reader delivers a transaction''s events in the order they were inserted.';
    END IF;

    INSERT INTO outbox (txid, position, aggregate_type, aggregate_id, event_type, version, payload_bytes)
    SELECT n.txid, n.id, n.aggregate_type, n.aggregate_id, n.event_type, n.version, readside_event_bytes(n.event_data, n.metadata)
      FROM new_events n;

    PERFORM pg_notify('readside_outbox', '');
    RETURN NULL;
END
$$;

DO $$
BEGIN
    EXECUTE pg_catalog.format('ALTER FUNCTION readside_events_to_outbox() SET search_path = pg_catalog, %I, pg_temp',
        pg_catalog.current_schema());
END
$$;
