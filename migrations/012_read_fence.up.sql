-- Only event writers hold the read window (issue 20; the correctness
-- argument is in the README, "Guarantees, and how", item 1).
--
-- Before this migration a reader took rows below the xmin of its snapshot:
-- any transaction with an xid, in any database of the cluster, held every
-- projection back. Now:
--
--   * the events trigger REGISTERS its transaction, once, with a shared
--     transaction-level advisory lock keyed by its xid (visible in pg_locks,
--     released when it ends, kept by PREPARE, released by ROLLBACK TO
--     SAVEPOINT together with the rows it covered), and then reads the
--     FENCE: a transaction whose xid lies below the fence and that was not
--     registered before is refused with SQLSTATE 40001 (constraint
--     readside_read_fence), so nothing is ever written below a position a
--     reader has passed;
--   * readers advance the fence (to an xmax they saw at least a grace
--     period ago, so that a writer has that long between taking its xid and
--     writing its first event), read it, and only then list the registered
--     writers; their bound is readside_read_bound(snapshot), below.
--
-- Advisory lock keys (two int4 keys, objsubid 2 in pg_locks; per database):
--   (1920169842 'rswr', low 32 bits of the xid)  a registered event writer
--   (1920168551 'rsrg', low 32 bits of the xid)  registered by readside_register()
--   (1920168548 'rsrd', 0)                       a reader advancing the fence (taken
--                                                with try, in a subtransaction that is
--                                                always rolled back: held for the
--                                                advance only)
-- Writers take only keys of their own xid: no writer ever waits for a lock
-- a reader or another writer holds.

-- The fence and its pending value are sequences because a sequence is
-- updated in place and read without a snapshot: a REPEATABLE READ or
-- SERIALIZABLE writer sees the value published after its snapshot was
-- taken, which a table row would give it only by a locking read that waits
-- for the reader (FOR SHARE) or by no error at all (a plain read, FOR KEY
-- SHARE). UNLOGGED: setval writes no WAL and takes no xid; a crash or a
-- failover resets them to empty, which is safe (README: every xid of a
-- transaction running before the crash is dead after it) and costs one
-- grace period of lag. (PostgreSQL 13 and 14 have no unlogged sequences:
-- there they are logged, and each advance of the fence takes an xid.)
--   read_fence             an xid8: writers below it are refused
--   read_fence_pending     the xmax the next advance moves the fence to
--   read_fence_pending_at  when it was seen, microseconds since the epoch
--   read_fence_refusals    transactions the fence refused: nextval outlives
--                          the refused transaction's rollback; a crash
--                          resets the count, as a restart resets a
--                          Prometheus counter
DO $$
DECLARE
    kind pg_catalog.text := CASE WHEN pg_catalog.current_setting('server_version_num')::pg_catalog.int4 >= 150000
                                 THEN 'UNLOGGED ' ELSE '' END;
BEGIN
    EXECUTE pg_catalog.format('CREATE %sSEQUENCE read_fence MINVALUE 0 START 0', kind);
    EXECUTE pg_catalog.format('CREATE %sSEQUENCE read_fence_pending MINVALUE 0 START 0', kind);
    EXECUTE pg_catalog.format('CREATE %sSEQUENCE read_fence_pending_at MINVALUE 0 START 0', kind);
    EXECUTE pg_catalog.format('CREATE %sSEQUENCE read_fence_refusals', kind);
END
$$;

-- The event writers of this database that are registered now: one row per
-- transaction (pid NULL for a prepared transaction), with its full xid.
-- pg_locks shows the low 32 bits of the xid (the key); the epoch is
-- restored around the current snapshot's xmax (running xids lie within
-- 2^31 of it). A key counts only while the same virtual transaction holds
-- the lock on that xid, so a stray lock on a readside key names no one.
-- pg_locks needs no privilege.
CREATE FUNCTION readside_event_writers(OUT pid integer, OUT txid xid8, OUT prepared boolean)
RETURNS SETOF record
LANGUAGE sql STABLE AS $$
WITH l AS MATERIALIZED (
    SELECT l.locktype, l.database, l.classid, l.objid, l.objsubid, l.virtualtransaction, l.transactionid, l.pid
      FROM pg_locks l
     WHERE l.locktype IN ('advisory', 'transactionid')
), ref AS (
    SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS n
)
SELECT w.pid,
       (ref.n + ((w.objid::bigint - ref.n % 4294967296 + 6442450944) % 4294967296) - 2147483648)::text::xid8,
       w.pid IS NULL
  FROM l w
  JOIN l t ON t.locktype = 'transactionid' AND t.virtualtransaction = w.virtualtransaction
          AND t.transactionid::text::bigint = w.objid::bigint
 CROSS JOIN ref
 WHERE w.locktype = 'advisory' AND w.classid = 1920169842 AND w.objsubid = 2
   AND w.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
$$;

-- readside_read_bound(snapshot): the bound below which a reader whose
-- statement runs with that snapshot may take outbox rows: every
-- transaction with an xid below it that will ever commit an event has
-- committed in that snapshot. Pass the reading statement's own snapshot,
-- once per statement (a CTE), and read txid < bound with it:
--
--   WITH b AS (SELECT readside_read_bound(pg_current_snapshot()) AS bound)
--   SELECT ... FROM outbox WHERE txid < (SELECT bound FROM b) ...
--
-- The steps, in this order (the README proves each order):
--   1. advance the fence, at most once per grace, to the xmax seen a grace
--      earlier (one reader at a time, under a lock it holds for this step
--      only; the others skip it, never wait);
--   2. read the fence F: every writer that registers from now on and whose
--      xid is below F is refused;
--   3. list the registered writers (pg_locks);
--   4. list the transactions running in the snapshot whose xid is at or
--      above F (they may still register), and those below F that have
--      ended since the snapshot was taken and wrote events (a later
--      statement's snapshot sees their rows; in REPEATABLE READ and
--      SERIALIZABLE, where no statement sees them, every one that ended).
-- bound = least(xmax of the snapshot, 3, 4). A transaction below F that
-- writes no event (in this database or any other) holds nothing back.
-- Successive calls in READ COMMITTED never return a smaller bound (README).
CREATE FUNCTION readside_read_bound(snap pg_snapshot, grace interval DEFAULT interval '250 milliseconds')
RETURNS xid8
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
    fence  xid8;
    pend   bigint;
    now_us bigint;
    held   xid8;
    open   xid8;
    ended  xid8[];
BEGIN
    -- 1. When a grace has passed since the last advance (a lock-free look
    -- first: most calls stop here), one reader at a time, under a
    -- transaction-level lock taken in a subtransaction that is always
    -- rolled back (RSFEN): the rollback releases the lock on every path,
    -- an error or a cancel included, so a reader inside a long transaction
    -- does not keep the others from advancing the fence, and no session
    -- state is left behind (a pipeline's implicit transaction, PgBouncer).
    -- setval is not transactional: what it set stays.
    now_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    pend := coalesce(pg_sequence_last_value('read_fence_pending_at'), 0);
    -- (A clock that went back would otherwise stop the fence.)
    IF (now_us - pend >= extract(epoch FROM grace) * 1000000 OR now_us < pend)
       AND NOT current_setting('transaction_read_only')::boolean THEN
        BEGIN
            IF pg_try_advisory_xact_lock(1920168548, 0) THEN
                -- Again under the lock: another reader may have just advanced.
                now_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
                pend := coalesce(pg_sequence_last_value('read_fence_pending_at'), 0);
                IF now_us - pend >= extract(epoch FROM grace) * 1000000 OR now_us < pend THEN
                    pend := coalesce(pg_sequence_last_value('read_fence_pending'), 0);
                    IF pend > coalesce(pg_sequence_last_value('read_fence'), 0) THEN
                        PERFORM setval('read_fence', pend);
                    END IF;
                    PERFORM setval('read_fence_pending', greatest(pend, pg_snapshot_xmax(pg_current_snapshot())::text::bigint));
                    PERFORM setval('read_fence_pending_at', now_us);
                END IF;
            END IF;
            RAISE SQLSTATE 'RSFEN';
        EXCEPTION WHEN SQLSTATE 'RSFEN' THEN
            NULL;
        END;
    END IF;
    -- 2.
    fence := coalesce(pg_sequence_last_value('read_fence'), 0)::text::xid8;
    -- 3.
    SELECT min(w.txid) INTO held FROM readside_event_writers() w;
    -- 4. Running in snap at or above the fence (they may still register);
    SELECT min(x) INTO open FROM pg_snapshot_xip(snap) x WHERE x >= fence;
    -- below it, ended since, then (next statement, newer snapshot: it sees
    -- them ended) wrote events. The events table: pruning may have moved
    -- their outbox rows already.
    SELECT array_agg(x) INTO ended
      FROM pg_snapshot_xip(snap) x
     WHERE x < fence AND pg_xact_status(x) IS DISTINCT FROM 'in progress';
    IF ended IS NOT NULL THEN
        IF current_setting('transaction_isolation') = 'read committed' THEN
            SELECT least(open, min(x)) INTO open
              FROM unnest(ended) x
             WHERE EXISTS (SELECT 1 FROM events e WHERE e.txid = x);
        ELSE
            SELECT least(open, min(x)) INTO open FROM unnest(ended) x;
        END IF;
    END IF;
    RETURN least(pg_snapshot_xmax(snap), held, open);
END
$$;

-- The refusal, shared by the trigger and readside_register(), reached only
-- when the transaction's xid lies below the fence: it passes a transaction
-- that registered and passed the fence earlier (it has outbox rows, or
-- called readside_register(); either way its registration is held since,
-- as a ROLLBACK TO SAVEPOINT drops rows, marker and registration
-- together), and refuses any other.
CREATE FUNCTION readside_fence_refuse(me xid8) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    fence bigint := coalesce(pg_sequence_last_value('read_fence'), 0);
BEGIN
    IF EXISTS (SELECT 1 FROM outbox o WHERE o.txid = me) OR EXISTS (
        SELECT 1 FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.classid = 1920168551
           AND l.objid::bigint = me::text::bigint % 4294967296 AND l.objsubid = 2
           AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())) THEN
        RETURN;
    END IF;
    PERFORM nextval('read_fence_refusals');
    IF fence > pg_snapshot_xmax(pg_current_snapshot())::text::bigint THEN
        RAISE EXCEPTION 'readside: the read fence (%) is above this cluster''s transaction ids (%): the database was restored into a new cluster', fence, me
            USING ERRCODE = '40001', CONSTRAINT = 'readside_read_fence', TABLE = 'events',
                  HINT = 'Move the xid counter past it (pg_resetwal -x), as `projector run` says (transaction id regression).';
    END IF;
    RAISE EXCEPTION 'readside: transaction % wrote its first event after readers had passed its xid (read fence %); retry the transaction', me, fence
        USING ERRCODE = '40001', CONSTRAINT = 'readside_read_fence', TABLE = 'events',
              HINT = 'Write the first event soon after the transaction''s first write, or call readside_register() (in readside''s schema) at its start.';
END
$$;

-- readside_register(): registers the calling transaction as an event
-- writer now, for a transaction that writes other tables first and its
-- events more than a grace period later (a refusal would repeat on every
-- retry). Call it first in the transaction; it returns the transaction's
-- xid. The transaction then holds the read window until it ends, as any
-- event writer does.
CREATE FUNCTION readside_register() RETURNS xid8
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    me   xid8 := pg_current_xact_id();
    mine bigint := me::text::bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1920169842, (mine << 32 >> 32)::int4);
    IF mine < coalesce(pg_sequence_last_value('read_fence'), 0) THEN
        PERFORM readside_fence_refuse(me);
    END IF;
    PERFORM pg_advisory_xact_lock_shared(1920168551, (me::text::bigint << 32 >> 32)::int4);
    RETURN me;
END
$$;
REVOKE ALL ON FUNCTION readside_register() FROM PUBLIC;
REVOKE ALL ON FUNCTION readside_fence_refuse(xid8) FROM PUBLIC;

-- The events trigger, as in 007, with the registration first: take the
-- registration lock (a local lookup after the first statement of the
-- transaction), then read the fence. The order is what makes it safe: a
-- reader that listed the registered writers before this lock was taken
-- had published its fence before, so this read sees it.
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

    INSERT INTO outbox (txid, position, aggregate_type, aggregate_id, event_type, version)
    SELECT n.txid, n.id, n.aggregate_type, n.aggregate_id, n.event_type, n.version
      FROM new_events n;

    PERFORM pg_notify('readside_outbox', '');
    RETURN NULL;
END
$$;

-- Fixed search_path for everything above (CREATE OR REPLACE dropped the
-- trigger function's).
DO $$
DECLARE
    path pg_catalog.text := pg_catalog.format('pg_catalog, %I, pg_temp', pg_catalog.current_schema());
BEGIN
    EXECUTE pg_catalog.format('ALTER FUNCTION readside_events_to_outbox() SET search_path = %s', path);
    EXECUTE pg_catalog.format('ALTER FUNCTION readside_event_writers() SET search_path = %s', path);
    EXECUTE pg_catalog.format('ALTER FUNCTION readside_read_bound(pg_snapshot, interval) SET search_path = %s', path);
    EXECUTE pg_catalog.format('ALTER FUNCTION readside_fence_refuse(xid8) SET search_path = %s', path);
    EXECUTE pg_catalog.format('ALTER FUNCTION readside_register() SET search_path = %s', path);
END
$$;

-- Writers may call readside_register(): the writer grant (011) includes it
-- from now on, and the roles that hold that grant already (INSERT on
-- events, the owner aside) get it here.
DO $do$
BEGIN
    EXECUTE pg_catalog.format($f$
CREATE OR REPLACE FUNCTION %1$I.readside_grant_writer(grantee regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $body$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %%I TO %%s', %2$L, grantee);
    EXECUTE format('GRANT SELECT, INSERT ON %%I.events TO %%s', %2$L, grantee);
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON %%I.snapshots TO %%s', %2$L, grantee);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %%I.readside_register() TO %%s', %2$L, grantee);
END
$body$;
CREATE OR REPLACE FUNCTION %1$I.readside_revoke_writer(grantee regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $body$
BEGIN
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %%I.readside_register() FROM %%s', %2$L, grantee);
    EXECUTE format('REVOKE SELECT, INSERT ON %%I.events FROM %%s', %2$L, grantee);
    EXECUTE format('REVOKE SELECT, INSERT, DELETE ON %%I.snapshots FROM %%s', %2$L, grantee);
    EXECUTE format('REVOKE USAGE ON SCHEMA %%I FROM %%s', %2$L, grantee);
END
$body$;
$f$, pg_catalog.current_schema(), pg_catalog.current_schema());
END
$do$;

DO $$
DECLARE
    w record;
BEGIN
    FOR w IN SELECT DISTINCT a.grantee::pg_catalog.regrole AS grantee
               FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
              WHERE c.oid OPERATOR(pg_catalog.=) 'events'::pg_catalog.regclass
                AND a.privilege_type OPERATOR(pg_catalog.=) 'INSERT'
                AND a.grantee OPERATOR(pg_catalog.<>) c.relowner
                AND a.grantee OPERATOR(pg_catalog.<>) 0::pg_catalog.oid LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION readside_register() TO %s', w.grantee);
    END LOOP;
END
$$;
