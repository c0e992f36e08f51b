-- readside_event_bytes (013) sizes an event with pg_column_size and
-- pg_column_compression, which are STABLE. Declared IMMUTABLE, it is never
-- inlined (PostgreSQL does not inline a function whose body is more
-- volatile than its declaration), so its body is planned at every call:
-- twice per event written, by the row guard and by the outbox insert of the
-- events triggers (pg_stat_statements: 18,247 plans for 9,123 single-row
-- INSERTs, about 10 µs of the writer's server time per event), and once
-- per history read. STABLE is what it is (its result depends on how a
-- value is stored, not only on the value), and it then inlines into the
-- triggers' and readers' cached plans. Nothing of readside's stores its
-- result in an index or a generated column, which need IMMUTABLE; one of
-- the database's own (the function is executable by PUBLIC) is refused
-- here, by name, rather than left to fail when a dump is restored.
DO $$
DECLARE
    dep text;
BEGIN
    SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)
      INTO dep
      FROM pg_catalog.pg_depend d
     WHERE d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
       AND d.refobjid = 'readside_event_bytes(jsonb, jsonb)'::pg_catalog.regprocedure
       AND (d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
            OR d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_attrdef ad
                             JOIN pg_catalog.pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
                            WHERE ad.oid = d.objid AND a.attgenerated <> ''))
     LIMIT 1;
    IF dep IS NOT NULL THEN
        RAISE EXCEPTION 'readside: % uses readside_event_bytes(jsonb, jsonb), which migration 019 declares STABLE, as its body is; an index or a generated column needs an IMMUTABLE function', dep
            USING HINT = 'Drop it, or compute the size with pg_column_size in an IMMUTABLE function of your own, and run the migration again.';
    END IF;
END
$$;

ALTER FUNCTION readside_event_bytes(jsonb, jsonb) STABLE;
