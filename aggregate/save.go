package aggregate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/outbox"
)

// Tx is what Save needs from the caller's transaction (a pgx.Tx).
type Tx = outbox.DB

// snapshotSQL writes a snapshot and drops the aggregate's older ones: a
// snapshot is a cache of the events, and Load only reads the latest.
const snapshotSQL = `
WITH old AS (
    DELETE FROM readside.snapshots
     WHERE aggregate_type = $1 AND aggregate_id = $2 AND version < $3)
INSERT INTO readside.snapshots (aggregate_type, aggregate_id, version, state)
VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING`

// SaveResult describes what Save wrote.
type SaveResult struct {
	*outbox.AppendResult
	// Snapshot is true when Save also wrote a snapshot at Version.
	Snapshot bool
}

// Save appends events to aggregate id, whose state the caller loaded at
// expectedVersion, inside tx (outbox.Append), applies them to state, and
// writes a snapshot of the new state in the same transaction when the append
// crosses a multiple of Config.SnapshotEvery. A clash with another writer is
// an error wrapping outbox.ErrConcurrencyConflict; tx is then aborted.
//
// state is changed even when Save fails; reload it before retrying.
func (r *Repository) Save(ctx context.Context, tx Tx, id string, expectedVersion int, state domain.State, meta outbox.Metadata, events []domain.Event) (*SaveResult, error) {
	sv, err := r.prepareSave(id, expectedVersion, state, meta, events)
	if err != nil {
		return nil, err
	}
	res, err := sv.append.Read(tx.QueryRow(ctx, sv.append.SQL, sv.append.Args...))
	if err != nil {
		return nil, err
	}
	out := &SaveResult{AppendResult: res}
	if sv.snapshot != nil {
		if _, err := tx.Exec(ctx, snapshotSQL, sv.snapshot...); err != nil {
			return nil, sv.snapshotError(err)
		}
		out.Snapshot = true
	}
	return out, nil
}

// saving is what Save writes, prepared: the append and, when one is due,
// the snapshot (snapshotSQL's arguments; nil when none is).
type saving struct {
	append   *outbox.AppendQuery
	snapshot []any
}

func (sv *saving) snapshotError(err error) error {
	return fmt.Errorf("save %s %s: snapshot at version %d: %w", sv.snapshot[0], sv.snapshot[1], sv.snapshot[2], err)
}

// prepareSave encodes events, applies them to state and, when the append
// crosses a multiple of Config.SnapshotEvery, encodes the new state.
func (r *Repository) prepareSave(id string, expectedVersion int, state domain.State, meta outbox.Metadata, events []domain.Event) (*saving, error) {
	if len(events) == 0 {
		return nil, errors.New("aggregate: save: no events")
	}
	aggType := state.AggregateType()
	news := make([]outbox.NewEvent, len(events))
	for i, e := range events {
		data, err := json.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("save %s %s: encode %s: %w", aggType, id, e.EventType(), err)
		}
		news[i] = outbox.NewEvent{
			Type:          e.EventType(),
			Data:          data,
			Metadata:      meta,
			SchemaVersion: domain.SchemaVersion(e.EventType()),
		}
	}
	q, err := outbox.PrepareAppend(outbox.Aggregate{Type: aggType, ID: id}, expectedVersion, news)
	if err != nil {
		return nil, err
	}
	for _, e := range events {
		if err := state.Apply(e); err != nil {
			return nil, fmt.Errorf("save %s %s: %w", aggType, id, err)
		}
	}
	sv := &saving{append: q}
	version := expectedVersion + len(events)
	if n := r.cfg.SnapshotEvery; n > 0 && version/n > expectedVersion/n {
		b, err := json.Marshal(state)
		if err != nil {
			return nil, fmt.Errorf("save %s %s: encode snapshot: %w", aggType, id, err)
		}
		sv.snapshot = []any{aggType, id, version, string(b)}
	}
	return sv, nil
}
