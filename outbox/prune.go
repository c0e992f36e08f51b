package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// PruneChunk deletes, in the caller's transaction, up to limit outbox rows:
// the first ones in read order at or below upTo (the slowest checkpoint of
// every projection) and inside the read window, stopping before the first
// row younger than retention (negative: no age limit), and records the last
// one deleted as the new horizon, below which readers read the events table.
// The deleted rows are a prefix of the log, as the horizon is one cursor.
// It returns how many rows it deleted (0: nothing to prune) and the
// horizon.
func PruneChunk(ctx context.Context, tx pgx.Tx, upTo Cursor, limit int, retention time.Duration) (int64, Cursor, error) {
	var n int64
	var last Cursor
	err := tx.QueryRow(ctx, `
WITH chunk AS (
    SELECT txid, position, created_at FROM readside.outbox
     WHERE (txid, position) <= ($1::xid8, $2::bigint)
       -- Only inside the read window, whatever the checkpoints say: a
       -- horizon above an event writer still running would have its rows
       -- read from both the events table and the outbox once it commits.
       AND txid < (SELECT readside.readside_read_bound(pg_current_snapshot()))
     ORDER BY txid, position LIMIT $3
), young AS (
    SELECT txid, position FROM chunk
     WHERE $4::float8 >= 0 AND created_at > now() - $4::float8 * interval '1 second'
     ORDER BY txid, position LIMIT 1
), deleted AS (
    DELETE FROM readside.outbox o USING chunk c
     WHERE o.txid = c.txid AND o.position = c.position
       AND NOT EXISTS (SELECT 1 FROM young y WHERE (y.txid, y.position) <= (c.txid, c.position))
    RETURNING o.txid, o.position
)
SELECT txid, position, count(*) OVER () FROM deleted ORDER BY txid DESC, position DESC LIMIT 1`,
		upTo.TxID, upTo.Position, limit, retention.Seconds()).Scan(&last.TxID, &last.Position, &n)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, last, nil
	}
	if err != nil {
		return 0, last, fmt.Errorf("chunk: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO readside.outbox_horizon (txid, position) VALUES ($1, $2)
		ON CONFLICT (singleton) DO UPDATE SET txid = excluded.txid, position = excluded.position
		WHERE (outbox_horizon.txid, outbox_horizon.position) < (excluded.txid, excluded.position)`, last.TxID, last.Position); err != nil {
		return 0, last, fmt.Errorf("horizon: %w", err)
	}
	return n, last, nil
}
