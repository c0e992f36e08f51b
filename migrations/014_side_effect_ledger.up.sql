-- The side-effect ledger: one row per event whose side effects (River jobs
-- a projection enqueues in its apply transaction: notifications, webhooks)
-- have fired, keyed by the live projection's name. A projection asks it
-- before it fires (projectors.Batch.SideEffectsDue: INSERT ... ON CONFLICT
-- DO NOTHING RETURNING, in the apply transaction), so the row commits
-- exactly when the side effect does, and every path that applies an event
-- (the runner, a replay after a reset, a rebuild's copy, repair,
-- dead-letter retry) asks the same question instead of inferring the
-- answer from high-water marks. A reset, even to the start, keeps it;
-- pruning the outbox keeps it too (pruned history is still replayed from
-- the events table). Rows go only with the projection (none of readside's
-- commands deletes them yet).
CREATE TABLE side_effects (
    projection text        NOT NULL,
    event_id   bigint      NOT NULL,
    fired_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, event_id)
);
