-- A dead letter is parked, retried or discarded. 003 allowed a 'retrying'
-- status that nothing ever wrote: a retry applies an aggregate's parked
-- events inside one transaction that locks their rows, so no other reader
-- sees one in between. Any row that claims it is still parked.
UPDATE dead_letters SET status = 'parked' WHERE status = 'retrying';
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_status_check;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_status_check CHECK (status IN ('parked', 'retried', 'discarded'));

-- Every batch asks "which of these aggregates are parked?": the index holds
-- only parked rows.
DROP INDEX dead_letters_parked_idx;
CREATE INDEX dead_letters_parked_idx ON dead_letters (projection, aggregate_type, aggregate_id) WHERE status = 'parked';
