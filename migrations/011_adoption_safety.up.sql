-- Writer rights per schema, and adoption (projector adopt) made safe,
-- complete and general.

-- Writer rights are granted per database and schema, never through a
-- cluster-wide role: readside_grant_writer(role) gives a role what a
-- writer needs in this schema only (USAGE on it, SELECT and INSERT on
-- events, SELECT, INSERT and DELETE on snapshots; nothing on the outbox,
-- checkpoints, dead letters or read models), readside_revoke_writer(role)
-- takes it back. Run them as the owner of readside's objects. The role
-- readside_writer that 007 creates is cluster-wide (granting it for one
-- database let its members write every database's readside): its members
-- keep their rights in this schema as direct grants and it loses its own.
-- It is not dropped here: DROP ROLE locks the role against the GRANTs of
-- other databases' migrations running at the same time (a deadlock); drop
-- it by hand once no database of the cluster runs an older release.
DO $do$
BEGIN
    EXECUTE format($f$
CREATE FUNCTION %1$I.readside_grant_writer(grantee regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $body$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %%I TO %%s', %2$L, grantee);
    EXECUTE format('GRANT SELECT, INSERT ON %%I.events TO %%s', %2$L, grantee);
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON %%I.snapshots TO %%s', %2$L, grantee);
END
$body$;
CREATE FUNCTION %1$I.readside_revoke_writer(grantee regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $body$
BEGIN
    EXECUTE format('REVOKE SELECT, INSERT ON %%I.events FROM %%s', %2$L, grantee);
    EXECUTE format('REVOKE SELECT, INSERT, DELETE ON %%I.snapshots FROM %%s', %2$L, grantee);
    EXECUTE format('REVOKE USAGE ON SCHEMA %%I FROM %%s', %2$L, grantee);
END
$body$;
$f$, current_schema(), current_schema());
END
$do$;
REVOKE ALL ON FUNCTION readside_grant_writer(regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION readside_revoke_writer(regrole) FROM PUBLIC;

DO $$
DECLARE
    w oid;
    m record;
BEGIN
    SELECT oid INTO w FROM pg_roles WHERE rolname = 'readside_writer';
    IF w IS NULL THEN
        RETURN;
    END IF;
    IF has_table_privilege(w, 'events', 'INSERT') THEN
        FOR m IN SELECT a.member::regrole AS member FROM pg_auth_members a WHERE a.roleid = w LOOP
            PERFORM readside_grant_writer(m.member);
        END LOOP;
    END IF;
    REVOKE ALL ON events, snapshots FROM readside_writer;
    EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM readside_writer', current_schema());
END
$$;

-- Adoption. The trigger on the application's table runs as the role that
-- inserts (SECURITY INVOKER): the mapping's expressions, the casts and
-- operators of the table's column types and any row-level security run
-- with the application's rights, never readside's. Only plain values
-- (text, jsonb, integers, timestamps) cross into readside, through two
-- SECURITY DEFINER functions per adopted table (readside_adopt_<hash>_claim
-- and _append) that adopt grants to the roles that may insert into it.
--
-- state backfilling: the history (rows written before the trigger) is
-- being copied in chunks while the application writes; the trigger then
-- claims each aggregate it touches first and copies that aggregate's
-- missing history itself, in the application's transaction, before the new
-- rows. adopted: every aggregate of the history is in readside's log.
-- install_txid is the transaction that installed the trigger.
ALTER TABLE readside_adoptions
    ADD COLUMN state          text  NOT NULL DEFAULT 'adopted' CHECK (state IN ('backfilling', 'adopted')),
    ADD COLUMN install_txid   xid8,
    ADD COLUMN history_total  bigint NOT NULL DEFAULT 0,  -- rows the backfill read (progress)
    ADD COLUMN backfilled_at  timestamptz;

-- Aggregates whose history has been copied since the trigger was
-- installed, by the backfill or by the trigger: each aggregate's history
-- is copied once, by one transaction, before any of its new rows. Emptied
-- when the backfill is done.
CREATE TABLE readside_adoption_claims (
    table_name     text NOT NULL,
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    PRIMARY KEY (table_name, aggregate_type, aggregate_id)
);

-- UPDATE, DELETE and TRUNCATE of an adopted table are not mirrored
-- (readside's log is append-only; erasure goes through
-- readside_erase_event_data): they are recorded here and shown by
-- projector status.
CREATE TABLE readside_adoption_changes (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name text        NOT NULL,
    operation  text        NOT NULL CHECK (operation IN ('UPDATE', 'DELETE', 'TRUNCATE')),
    rows       bigint,     -- NULL for TRUNCATE
    changed_by text        NOT NULL DEFAULT session_user,
    txid       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX readside_adoption_changes_table_idx ON readside_adoption_changes (table_name);

-- readside_adopt_insert(table, rows...) appends rows of an adopted table
-- (p_table names it in refusals; p_rows are its ids) to the log, in the
-- order given, through the events trigger like any writer. A version the
-- log has already is refused naming the application's row. Called by the
-- adopted tables' _append functions and by adopt's backfill, which run as
-- readside's owner: no EXECUTE for anyone else.
CREATE FUNCTION readside_adopt_insert(p_table text, p_rows bigint[], p_types text[], p_ids text[], p_events text[],
    p_data jsonb[], p_meta jsonb[], p_versions integer[], p_at timestamptz[])
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
    n bigint;
BEGIN
    SELECT x.row_id, x.t, x.a, x.v, e.id AS event_id INTO bad
      FROM unnest(p_rows, p_types, p_ids, p_versions) AS x(row_id, t, a, v)
      JOIN events e ON e.aggregate_type = x.t AND e.aggregate_id = x.a AND e.version = x.v
     LIMIT 1;
    IF NOT FOUND THEN
        SELECT min(x.row_id) AS row_id, x.t, x.a, x.v, NULL::bigint AS event_id INTO bad
          FROM unnest(p_rows, p_types, p_ids, p_versions) AS x(row_id, t, a, v)
         GROUP BY x.t, x.a, x.v HAVING count(*) > 1
         LIMIT 1;
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION 'readside refused the row of % with id %: % % version % is already in readside''s log%', p_table,
            bad.row_id, bad.t, bad.a, bad.v, coalesce(' (event ' || bad.event_id || ')', ' (twice in this statement)')
            USING ERRCODE = '23505', CONSTRAINT = 'events_aggregate_version_key', TABLE = 'events',
                  HINT = 'readside keeps one event per aggregate version: a second row for it (or two stored names renamed to one) cannot be copied.';
    END IF;
    INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data, metadata, version, occurred_at)
    SELECT x.t, x.a, x.et, x.d, x.md, x.v, x.o
      FROM unnest(p_types, p_ids, p_events, p_data, p_meta, p_versions, p_at) WITH ORDINALITY AS x(t, a, et, d, md, v, o, ord)
     ORDER BY x.ord;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION readside_adopt_insert(text, bigint[], text[], text[], text[], jsonb[], jsonb[], integer[], timestamptz[]) FROM PUBLIC;

-- The trigger behind UPDATE, DELETE and TRUNCATE of an adopted table
-- (TG_ARGV[0]: its name). It reads nothing of the rows but their number,
-- so it may run with its owner's rights.
CREATE FUNCTION readside_adopt_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    n bigint;
BEGIN
    IF TG_OP <> 'TRUNCATE' THEN
        SELECT count(*) INTO n FROM readside_old_rows;
        IF n = 0 THEN
            RETURN NULL;
        END IF;
    END IF;
    INSERT INTO readside_adoption_changes (table_name, operation, rows) VALUES (TG_ARGV[0], TG_OP, n);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION readside_adopt_changed() FROM PUBLIC;

-- A statement trigger on a partitioned table with a transition table
-- fires for the rows routed through it, not for an INSERT straight into
-- a partition. readside_adopt_route marks, for the statement's trigger
-- depth, that a statement on the partitioned table TG_RELID is running
-- (BEFORE) and clears the mark (AFTER); readside_adopt_partition_guard, a
-- row trigger that PostgreSQL clones onto every partition, present and
-- future, refuses a row that arrives without the mark (TG_ARGV: the
-- partitioned table's oid and name). No SET clause: a function with one
-- would undo its set_config at exit.
CREATE FUNCTION readside_adopt_route() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('readside_adopt.route_' OPERATOR(pg_catalog.||) pg_catalog.pg_trigger_depth()::text,
        CASE WHEN TG_WHEN = 'BEFORE' THEN TG_RELID::text ELSE '' END, true);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION readside_adopt_route() FROM PUBLIC;

CREATE FUNCTION readside_adopt_partition_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_catalog.current_setting('readside_adopt.route_' OPERATOR(pg_catalog.||) pg_catalog.pg_trigger_depth()::text, true)
       IS DISTINCT FROM TG_ARGV[0] THEN
        RAISE EXCEPTION 'readside refused an INSERT straight into %.%, a partition of the adopted table %: only rows inserted through % reach readside''s log',
            TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[1], TG_ARGV[1]
            USING ERRCODE = '0A000', CONSTRAINT = 'readside_adopt_partition_insert',
                  SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME,
                  HINT = 'Insert into the partitioned table; PostgreSQL routes the row to this partition.';
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION readside_adopt_partition_guard() FROM PUBLIC;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION readside_adopt_changed() SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION readside_adopt_insert(text, bigint[], text[], text[], text[], jsonb[], jsonb[], integer[], timestamptz[]) SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
