-- A cheaper read bound (issue 24, latency). Every reader's statement
-- calls readside_read_bound(): at 1000 events/s it ran 1.6 times per
-- event, 0.7 ms each, most of it planning readside_event_writers()'s SQL
-- body and reading pg_locks. readside_read_bound() is 012's, step for
-- step, with two changes: it returns the snapshot's xmin at once when no
-- transaction older than the fence runs (the result steps 3 and 4 would
-- give, proved below), and step 3, the registered writers, is
-- readside_event_writers()'s query written into it (PL/pgSQL keeps its
-- plan).
CREATE OR REPLACE FUNCTION readside_read_bound(snap pg_snapshot, grace interval DEFAULT interval '250 milliseconds')
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
    -- When every transaction running in snap is at or above the fence
    -- (none has run longer than a grace or two: the usual case), steps 3
    -- and 4 give its xmin: each running xid is at or above the fence, so
    -- the least of them (4) is the xmin, and a registered writer (3) is
    -- one of them, or began after snap (at or above its xmax), or had
    -- ended before it; nothing ended below the fence. The bound is then
    -- the classic one, without reading pg_locks. Only for a reader
    -- without an xid of its own: a snapshot's xmin counts its own
    -- transaction, which its xip leaves out (a reader that wrote first,
    -- as a reset's clamp does after locking its checkpoints, would get
    -- its own xid as the bound).
    IF pg_snapshot_xmin(snap) >= fence AND pg_current_xact_id_if_assigned() IS NULL THEN
        RETURN pg_snapshot_xmin(snap);
    END IF;
    -- 3. readside_event_writers(), inline: PostgreSQL plans a SQL
    -- function's body at every call (0.4 ms of the 0.5 ms a call took, in
    -- pg_stat_statements), where PL/pgSQL keeps this statement's plan for
    -- the session. The same query (keep the two alike).
    WITH l AS MATERIALIZED (
        SELECT l.locktype, l.database, l.classid, l.objid, l.objsubid, l.virtualtransaction, l.transactionid
          FROM pg_locks l
         WHERE l.locktype IN ('advisory', 'transactionid')
    ), ref AS (
        SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS n
    )
    SELECT min((ref.n + ((w.objid::bigint - ref.n % 4294967296 + 6442450944) % 4294967296) - 2147483648)::text::xid8)
      INTO held
      FROM l w
      JOIN l t ON t.locktype = 'transactionid' AND t.virtualtransaction = w.virtualtransaction
              AND t.transactionid::text::bigint = w.objid::bigint
     CROSS JOIN ref
     WHERE w.locktype = 'advisory' AND w.classid = 1920169842 AND w.objsubid = 2
       AND w.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
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

DO $$
BEGIN
    EXECUTE pg_catalog.format('ALTER FUNCTION readside_read_bound(pg_snapshot, interval) SET search_path = pg_catalog, %I, pg_temp',
        pg_catalog.current_schema());
END
$$;
