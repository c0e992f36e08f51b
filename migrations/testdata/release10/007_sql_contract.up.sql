-- The SQL contract, enforced by the database whoever the writer is (issue
-- 10, holes 1, 2 and 10). Every rule of the read side rests on properties
-- of the log that a writer outside Go could otherwise break:
--
--   * within one statement (multi-row VALUES, INSERT ... SELECT, COPY) an
--     aggregate's versions must come in version order: the reader delivers a
--     transaction's rows in events.id order, which is the statement's row
--     order (SQLSTATE 23514, constraint readside_aggregate_version_order);
--   * events.txid is the writing transaction's own pg_current_xact_id(),
--     never a supplied value (23514, readside_events_txid_current);
--   * events are never updated, deleted or truncated (55000,
--     readside_events_append_only); the one exception is
--     readside_erase_event_data, below;
--   * only the events trigger writes the outbox (55000,
--     readside_outbox_trigger_only);
--   * the trigger runs with its owner's rights (SECURITY DEFINER, fixed
--     search_path), so a writer needs INSERT on events and nothing on the
--     read side's tables: the role readside_writer, below.

-- The trigger, as in 002, with the order and txid rules. Rows of the same
-- statement are visible to its queries (the statement has finished), so
-- "the predecessor sorts before me" covers predecessors written by this
-- statement, by an earlier statement of this transaction, and by earlier
-- transactions alike: (p.txid, p.id) < (n.txid, n.id) is exactly the
-- reader's order.
CREATE OR REPLACE FUNCTION readside_events_to_outbox() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.aggregate_type, n.aggregate_id, n.version, n.txid
      INTO bad
      FROM new_events n
     WHERE n.txid <> pg_current_xact_id()
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'readside: % % version %: txid % is not this transaction''s id (%); leave events.txid to its default',
            bad.aggregate_type, bad.aggregate_id, bad.version, bad.txid, pg_current_xact_id()
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
    ELSIF bad.prev_txid > pg_current_xact_id() THEN
        RAISE EXCEPTION 'readside: % % version % was committed by a newer transaction (xid %) than this one (xid %); retry the transaction',
            bad.aggregate_type, bad.aggregate_id, bad.version - 1, bad.prev_txid, pg_current_xact_id()
            USING ERRCODE = '40001', CONSTRAINT = 'readside_aggregate_xid_order', TABLE = 'events';
    ELSE
        RAISE EXCEPTION 'readside: % % version % comes after version % in the statement''s row order (ids % > %): write an aggregate''s rows in version order',
            bad.aggregate_type, bad.aggregate_id, bad.version - 1, bad.version, bad.prev_id, bad.id
            USING ERRCODE = '23514', CONSTRAINT = 'readside_aggregate_version_order', TABLE = 'events',
                  HINT = 'The reader delivers a transaction''s events in the order they were inserted.';
    END IF;

    INSERT INTO outbox (txid, position, aggregate_type, aggregate_id, event_type, version)
    SELECT n.txid, n.id, n.aggregate_type, n.aggregate_id, n.event_type, n.version
      FROM new_events n;

    PERFORM pg_notify('readside_outbox', '');
    RETURN NULL;
END
$$;

-- Only the events trigger writes the outbox. A statement trigger costs one
-- call per statement; the trigger depth is 1 for a client's own INSERT and
-- 2 under readside_events_to_outbox.
CREATE FUNCTION readside_outbox_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'readside: the outbox is written by the trigger on events only; insert into events instead'
            USING ERRCODE = '55000', CONSTRAINT = 'readside_outbox_trigger_only', TABLE = 'outbox';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_trigger_only
    BEFORE INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION readside_outbox_guard();

-- Erasure (GDPR and the like) is the one change events may undergo: one
-- event's payload (and optionally metadata) is replaced in place by
-- readside_erase_event_data, recorded here. Its id, type, aggregate,
-- version and txid stay: the reader's order and every checkpoint keep their
-- meaning, and a replay reads the redacted payload in its place.
CREATE TABLE event_erasures (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       bigint      NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    version        integer     NOT NULL,
    reason         text        NOT NULL DEFAULT '',
    erased_by      text        NOT NULL DEFAULT session_user,
    erased_at      timestamptz NOT NULL DEFAULT now(),
    txid           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    -- Set while the erasing UPDATE runs, then cleared: the append-only
    -- guard lets an UPDATE through only with this token in
    -- readside.erasure_token.
    token          uuid
);
CREATE INDEX event_erasures_event_id_idx ON event_erasures (event_id);

-- The append-only guard. It runs with its owner's rights to read the
-- erasure tokens; a session setting readside.erasure_token by hand finds no
-- token of its transaction.
CREATE FUNCTION readside_events_append_only() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND EXISTS (
        SELECT 1 FROM event_erasures
         WHERE token IS NOT NULL
           AND token::text = current_setting('readside.erasure_token', true)
           AND txid = pg_current_xact_id()) THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'readside: events are append-only (% refused); erase a payload with readside_erase_event_data', TG_OP
        USING ERRCODE = '55000', CONSTRAINT = 'readside_events_append_only', TABLE = 'events';
END
$$;

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION readside_events_append_only();
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION readside_events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION readside_events_append_only();

-- readside_erase_event_data(event id, new payload, new metadata or NULL to
-- keep it, reason): the documented escape hatch. The new payload must be a
-- JSON object; keep the fields projections need and replace the personal
-- ones (for example "customer_name": "[erased]"), so a replay still applies
-- it. The aggregate's snapshots are dropped (they hold state derived from
-- the erased data; the next load folds the events). Read models built
-- before the erasure still hold the old values: rebuild the projections
-- that copy the erased fields (projector rebuild NAME).
CREATE FUNCTION readside_erase_event_data(p_event_id bigint, p_event_data jsonb, p_metadata jsonb, p_reason text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    e record;
    t uuid := gen_random_uuid();
BEGIN
    IF p_event_data IS NULL OR jsonb_typeof(p_event_data) <> 'object' THEN
        RAISE EXCEPTION 'readside: erase event %: the new payload must be a JSON object', p_event_id
            USING ERRCODE = '22023';
    END IF;
    IF p_metadata IS NOT NULL AND jsonb_typeof(p_metadata) <> 'object' THEN
        RAISE EXCEPTION 'readside: erase event %: the new metadata must be a JSON object or NULL', p_event_id
            USING ERRCODE = '22023';
    END IF;
    SELECT id, aggregate_type, aggregate_id, version INTO e FROM events WHERE id = p_event_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'readside: erase: no event %', p_event_id USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO event_erasures (event_id, aggregate_type, aggregate_id, version, reason, token)
    VALUES (e.id, e.aggregate_type, e.aggregate_id, e.version, coalesce(p_reason, ''), t);
    PERFORM set_config('readside.erasure_token', t::text, true);
    UPDATE events SET event_data = p_event_data, metadata = coalesce(p_metadata, metadata) WHERE id = e.id;
    PERFORM set_config('readside.erasure_token', '', true);
    UPDATE event_erasures SET token = NULL WHERE token = t;
    DELETE FROM snapshots WHERE aggregate_type = e.aggregate_type AND aggregate_id = e.aggregate_id;
END
$$;
REVOKE ALL ON FUNCTION readside_erase_event_data(bigint, jsonb, jsonb, text) FROM PUBLIC;

-- Fixed search_path for the functions that run with their owner's rights:
-- the catalog, then the schema readside was migrated into, pg_temp last (a
-- writer's temporary table must not shadow events or outbox).
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION readside_events_to_outbox() SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION readside_events_append_only() SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION readside_erase_event_data(bigint, jsonb, jsonb, text) SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;

-- The least-privilege writer: INSERT and SELECT on events (SELECT for
-- RETURNING and for loading an aggregate), its snapshots, and nothing on
-- the outbox, checkpoints, dead letters or read models. NOLOGIN: grant it to
-- the application's login role (GRANT readside_writer TO app). Roles are
-- cluster-wide and several databases may be migrated at once, so "already
-- exists" (or a concurrent creation's unique violation) is success; a
-- migrating user without CREATEROLE skips it with a notice (create the role
-- and run the GRANTs below by hand).
DO $$
BEGIN
    BEGIN
        CREATE ROLE readside_writer NOLOGIN;
    EXCEPTION
        WHEN duplicate_object OR unique_violation THEN NULL;
        WHEN insufficient_privilege THEN
            RAISE NOTICE 'readside: cannot create role readside_writer (%); create it and grant it by hand', SQLERRM;
    END;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'readside_writer') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO readside_writer', current_schema());
        GRANT SELECT, INSERT ON events TO readside_writer;
        GRANT SELECT, INSERT, DELETE ON snapshots TO readside_writer;
    END IF;
END
$$;
