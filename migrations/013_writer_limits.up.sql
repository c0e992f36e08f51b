-- Limits on what a writer may choose (issue 22).

-- Event ids come from the identity only. OVERRIDING SYSTEM VALUE, or a
-- COPY that names the id column, writes the ids the writer gives: ids the
-- identity hands out next (every later append then fails on events_pkey),
-- negative ones, the largest bigint. A row trigger refuses any row whose
-- id is not the value the identity drew for it: the default is evaluated
-- (nextval) just before the row's BEFORE triggers, so a drawn id equals
-- currval in this session. A session that never drew has no currval
-- (55000 from currval, caught). SQLSTATE 428C9 is PostgreSQL's own for a
-- value written into a GENERATED ALWAYS column.
CREATE FUNCTION readside_events_row_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    drawn bigint;
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
