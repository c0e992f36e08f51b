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
