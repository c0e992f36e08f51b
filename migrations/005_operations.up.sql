-- Blue/green rebuilds: a rebuild registers a shadow projection
-- (rebuild_of = the live one) whose tables live in their own schema; the
-- runtime applies it with that schema first on the search_path, and the
-- switch moves its tables into place atomically.
ALTER TABLE projections
    ADD COLUMN rebuild_of  text REFERENCES projections (name) ON DELETE CASCADE,
    ADD COLUMN schema_name text;

-- Fair share is per projection, over the live workers that run it: a fleet
-- may mix workers that run different --projections. A worker's liveness is
-- judged by its own lease TTL.
ALTER TABLE workers
    ADD COLUMN projections       text[]  NOT NULL DEFAULT '{}',
    ADD COLUMN lease_ttl_seconds float8  NOT NULL DEFAULT 10;
