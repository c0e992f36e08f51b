package outbox_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

// Issue 22, item 5: a 50 MB event_data was accepted, and 6 of them in one
// transaction. The contract refuses an event whose event_data and metadata
// together (as jsonb, uncompressed) exceed readside_max_event_bytes()
// (1 MiB unless the owner sets another with readside_set_max_event_bytes):
// SQLSTATE 54000, readside_event_max_bytes. A payload that arrives
// compressed (INSERT ... SELECT from a table that stores it compressed) is
// measured uncompressed.
func TestContractRefusesOversizedEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	role := writerRole(t, pool)
	var limit int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT readside.readside_max_event_bytes()`).Scan(&limit))
	require.EqualValues(t, 1<<20, limit)

	insert := func(agg string, data, meta string) error {
		return asWriter(ctx, pool, role, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, metadata, version)
				VALUES ('Order', $1, 'OrderPlaced', $2, $3, 1)`, agg, data, meta)
			return err
		})
	}
	pad := func(n int) string { return fmt.Sprintf(`{"pad":"%s"}`, strings.Repeat("a", n)) }

	requirePgError(t, insert("o-data", pad(1<<20), `{}`), "54000", "readside_event_max_bytes")
	requirePgError(t, insert("o-meta", `{}`, pad(1<<20)), "54000", "readside_event_max_bytes")
	requirePgError(t, insert("o-both", pad(600<<10), pad(600<<10)), "54000", "readside_event_max_bytes")
	require.NoError(t, insert("o-under", pad(1000<<10), `{}`))
	// Compressed on the way in: 3 MB of "a" stored in 35 kB.
	err := asWriter(ctx, pool, role, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `CREATE TEMP TABLE big ON COMMIT DROP AS SELECT jsonb_build_object('pad', repeat('a', 3000000)) AS d`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
			SELECT 'Order', 'o-compressed', 'OrderPlaced', d, 1 FROM big`)
		return err
	})
	requirePgError(t, err, "54000", "readside_event_max_bytes")
	// Append (the Go writer) is refused the same way.
	err = asWriter(ctx, pool, role, func(tx pgx.Tx) error {
		_, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: "Order", ID: "o-append"}, 0,
			[]outbox.NewEvent{{Type: "OrderPlaced", Data: []byte(pad(2 << 20))}})
		return err
	})
	requirePgError(t, err, "54000", "readside_event_max_bytes")

	// The owner changes the limit; a writer cannot.
	err = asWriter(ctx, pool, role, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `SELECT readside.readside_set_max_event_bytes(1 << 30)`)
		return err
	})
	requirePgError(t, err, "42501", "")
	_, err = pool.Exec(ctx, `SELECT readside.readside_set_max_event_bytes(4 << 20)`)
	require.NoError(t, err)
	require.NoError(t, insert("o-data", pad(3<<20), `{}`))
	requirePgError(t, insert("o-bigger", pad(4<<20), `{}`), "54000", "readside_event_max_bytes")
	_, err = pool.Exec(ctx, `SELECT readside.readside_set_max_event_bytes(100)`)
	requirePgError(t, err, "22023", "")
}
