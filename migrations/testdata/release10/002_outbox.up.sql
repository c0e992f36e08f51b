-- The outbox: one row per event, written by the same transaction as the event
-- (by the trigger below, so every writer, Go or not, gets it right).
--
-- Reading is gap-safe by the xid8 window: readers take rows with
--   (txid, position) > cursor AND txid < pg_snapshot_xmin(pg_current_snapshot())
-- ordered by (txid, position). Every transaction with an xid below the
-- snapshot's xmin has finished, so no row can later appear behind the cursor.
-- The primary key is the index that query walks.
CREATE TABLE outbox (
    txid           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    position       bigint      NOT NULL,  -- events.id
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    version        integer     NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (txid, position)
);

-- Outbox rows are short-lived and written at a high rate: let autovacuum keep
-- up with pruning instead of waiting for 20% of the table to be dead.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);

-- Trigger: the SQL contract for writers. Any INSERT INTO events (one row or
-- many) gets, in the same statement:
--   0. versions without gaps: version N needs version N-1 (SQLSTATE 23514,
--      constraint readside_aggregate_version_gap);
--   1. the per-aggregate xid rule: a transaction whose xid is older than the
--      transaction that wrote the aggregate's previous version would be read
--      before it, breaking per-aggregate order; it is refused with SQLSTATE
--      40001 (constraint readside_aggregate_xid_order) and must retry;
--   2. one outbox row per event;
--   3. a notification on channel readside_outbox, delivered at commit.
CREATE FUNCTION readside_events_to_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    conflict record;
BEGIN
    SELECT n.aggregate_type, n.aggregate_id, n.version, p.txid AS prev_txid
      INTO conflict
      FROM new_events n
      LEFT JOIN events p
        ON p.aggregate_type = n.aggregate_type
       AND p.aggregate_id = n.aggregate_id
       AND p.version = n.version - 1
     WHERE n.version > 1 AND (p.txid IS NULL OR p.txid > n.txid)
     LIMIT 1;
    IF FOUND AND conflict.prev_txid IS NULL THEN
        RAISE EXCEPTION 'readside: % % version % does not exist, so version % cannot be appended (stale or wrong expected version)',
            conflict.aggregate_type, conflict.aggregate_id, conflict.version - 1, conflict.version
            USING ERRCODE = '23514', CONSTRAINT = 'readside_aggregate_version_gap', TABLE = 'events';
    ELSIF FOUND THEN
        RAISE EXCEPTION 'readside: % % version % was committed by a newer transaction (xid %) than this one (xid %); retry the transaction',
            conflict.aggregate_type, conflict.aggregate_id, conflict.version - 1, conflict.prev_txid, pg_current_xact_id()
            USING ERRCODE = '40001', CONSTRAINT = 'readside_aggregate_xid_order', TABLE = 'events';
    END IF;

    INSERT INTO outbox (txid, position, aggregate_type, aggregate_id, event_type, version)
    SELECT n.txid, n.id, n.aggregate_type, n.aggregate_id, n.event_type, n.version
      FROM new_events n;

    PERFORM pg_notify('readside_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_to_outbox
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION readside_events_to_outbox();

-- Where pruning has removed outbox rows, readers replay the history up to and
-- including this cursor from the events table instead (same order). At most
-- one row.
CREATE TABLE outbox_horizon (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    txid      xid8    NOT NULL,
    position  bigint  NOT NULL
);
