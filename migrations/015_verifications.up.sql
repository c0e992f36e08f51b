-- One row per verification of a projection (`projector verify`,
-- Client.Verify): its read model rebuilt from the log into a scratch
-- schema and compared with the live tables. The metrics
-- readside_verify_last_result, readside_verify_differences and
-- readside_verify_last_timestamp_seconds read each projection's latest
-- row, so that an alert fires on a read model that drifted from its log.
--   result          ok, differs, repaired (every difference was in
--                   aggregates and repair fixed them), error (the
--                   verification did not finish: error says why)
--   differing       aggregates whose rows differ, plus tables without an
--                   aggregate column that differ
--   differing_rows  rows only in the live tables plus rows only in the copy
--   events          events the copy applied
-- A row per run, and runs are rare (a daily job): nothing prunes it.
CREATE TABLE verifications (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection     text        NOT NULL,
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz NOT NULL,
    result         text        NOT NULL CHECK (result IN ('ok', 'differs', 'repaired', 'error')),
    differing      integer     NOT NULL DEFAULT 0,
    differing_rows bigint      NOT NULL DEFAULT 0,
    events         bigint      NOT NULL DEFAULT 0,
    error          text
);
-- The metrics' "latest row of each projection" is an index probe.
CREATE INDEX verifications_projection_finished_idx ON verifications (projection, finished_at DESC);
