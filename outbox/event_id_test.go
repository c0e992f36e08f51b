package outbox_test

import (
	"context"
	"fmt"
	"math"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

// Issue 22, item 2: a writer that chooses events.id (OVERRIDING SYSTEM
// VALUE, or COPY with an id column) squats the ids the identity gives next,
// and every later append fails on events_pkey. The contract refuses any id
// not drawn from the identity for its own row (428C9,
// readside_events_id_generated); the writer paths that leave id to its
// default still work.
func TestContractRefusesChosenEventIDs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	role := writerRole(t, pool)
	_, err := pool.Exec(ctx, valuesSQL([]row{{"o-first", 1}}))
	require.NoError(t, err)
	var maxID int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT max(id) FROM readside.events`).Scan(&maxID))

	squat := func(first, last int64) string {
		return fmt.Sprintf(`INSERT INTO readside.events (id, aggregate_type, aggregate_id, event_type, event_data, version)
			OVERRIDING SYSTEM VALUE
			SELECT g, 'Order', 'o-squat-' || g, 'OrderPlaced', '{}', 1 FROM generate_series(%d::bigint, %d::bigint) g`, first, last)
	}
	for _, tc := range []struct {
		name string
		sql  func(maxID int64) string // maxID: the largest id drawn so far
	}{
		{"the next 40 ids", func(m int64) string { return squat(m+1, m+40) }},
		{"a negative id", func(int64) string { return squat(-5, -5) }},
		{"the largest id", func(int64) string { return squat(math.MaxInt64, math.MaxInt64) }},
		{"a chosen id after a drawn one", func(m int64) string {
			return fmt.Sprintf(`INSERT INTO readside.events (id, aggregate_type, aggregate_id, event_type, event_data, version)
			OVERRIDING SYSTEM VALUE VALUES (DEFAULT, 'Order', 'o-mixed-1', 'OrderPlaced', '{}', 1),
			(%d, 'Order', 'o-mixed-2', 'OrderPlaced', '{}', 1)`, m+50)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// In a fresh session (no id drawn yet), and in one that has
			// just drawn one.
			conn, err := pgx.Connect(ctx, pool.Config().ConnString())
			require.NoError(t, err)
			defer conn.Close(ctx)
			err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `SET LOCAL ROLE `+role); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, tc.sql(maxID))
				return err
			})
			requirePgError(t, err, "428C9", "readside_events_id_generated")
			err = asWriter(ctx, pool, role, func(tx pgx.Tx) error {
				var drawn int64
				if err := tx.QueryRow(ctx, valuesSQL([]row{{"o-drawn-" + tc.name, 1}})+` RETURNING id`).Scan(&drawn); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, tc.sql(drawn))
				return err
			})
			requirePgError(t, err, "428C9", "readside_events_id_generated")
		})
	}
	// COPY with an id column writes the ids given, as OVERRIDING SYSTEM
	// VALUE does.
	_, err = pool.CopyFrom(ctx, pgx.Identifier{"readside", "events"},
		[]string{"id", "aggregate_type", "aggregate_id", "event_type", "event_data", "version"},
		pgx.CopyFromRows([][]any{{maxID + 100, "Order", "o-copy-id", "OrderPlaced", "{}", 1}}))
	requirePgError(t, err, "428C9", "readside_events_id_generated")

	// Nothing was written, and the ids the identity gives next are free:
	// Append, a multi-row INSERT and a COPY without id still work.
	var squatted int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.events WHERE id > $1 OR id < 1`, maxID).Scan(&squatted))
	require.Zero(t, squatted)
	for i := range 40 {
		require.NoError(t, asWriter(ctx, pool, role, func(tx pgx.Tx) error {
			_, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: "Order", ID: fmt.Sprint("o-after-", i)}, 0, []outbox.NewEvent{ev("OrderPlaced", 1)})
			return err
		}))
	}
	require.NoError(t, asWriter(ctx, pool, role, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, valuesSQL([]row{{"o-multi", 1}, {"o-multi", 2}, {"o-multi-b", 1}}))
		return err
	}))
	n, err := pool.CopyFrom(ctx, pgx.Identifier{"readside", "events"},
		[]string{"aggregate_type", "aggregate_id", "event_type", "event_data", "version"},
		pgx.CopyFromRows([][]any{{"Order", "o-copy", "OrderPlaced", "{}", 1}, {"Order", "o-copy", "OrderConfirmed", "{}", 2}}))
	require.NoError(t, err)
	require.EqualValues(t, 2, n)
	e, o := countEvents(t, pool, "o-copy")
	require.Equal(t, [2]int{2, 2}, [2]int{e, o})
}
