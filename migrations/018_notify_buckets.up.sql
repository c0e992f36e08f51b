-- Notifications that name their buckets (issue 24, latency at the shipped
-- segment counts). The events trigger, as in 013, with one change: its
-- notification's payload is the set of buckets (migration 006) of the rows
-- the statement wrote, as a 64-bit mask in hexadecimal (bit b for bucket
-- b), instead of ''. A worker then runs only the segments whose buckets the
-- notification names: with 8 segments, an event wakes one segment, not
-- eight that each fetch and move their checkpoint. A statement that wrote
-- no row sends nothing. Payloads of one transaction that differ are each
-- delivered (equal ones are sent once, as before); a worker reads an empty
-- or unknown payload (an older trigger) as every bucket.
CREATE OR REPLACE FUNCTION readside_events_to_outbox() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    me    xid8 := pg_current_xact_id();
    mine  bigint := me::text::bigint;
    bad   record;
    buckets bigint;
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

    WITH written AS (
        INSERT INTO outbox (txid, position, aggregate_type, aggregate_id, event_type, version, payload_bytes)
        SELECT n.txid, n.id, n.aggregate_type, n.aggregate_id, n.event_type, n.version, readside_event_bytes(n.event_data, n.metadata)
          FROM new_events n
        RETURNING bucket)
    SELECT bit_or(1::bigint << w.bucket) INTO buckets FROM written w;
    IF buckets IS NOT NULL THEN
        PERFORM pg_notify('readside_outbox', to_hex(buckets));
    END IF;
    RETURN NULL;
END
$$;

DO $$
BEGIN
    EXECUTE pg_catalog.format('ALTER FUNCTION readside_events_to_outbox() SET search_path = pg_catalog, %I, pg_temp',
        pg_catalog.current_schema());
END
$$;
