-- A dead letter whose event the projection had applied once already, side
-- effects included, is a replay when it is retried: parked while the
-- projection replayed it (a reset moved the cursor back over it and the
-- event now fails), or parked by a rebuild's copy (which only replays) for
-- an event the live projection had applied. Retrying it must not fire its
-- side effects a second time.
ALTER TABLE dead_letters ADD COLUMN replay boolean NOT NULL DEFAULT false;
