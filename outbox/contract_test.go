package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

// requirePgError asserts err is a PostgreSQL error with this SQLSTATE and,
// when constraint is not empty, this constraint name.
func requirePgError(t *testing.T, err error, code, constraint string) {
	t.Helper()
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "want SQLSTATE %s, got %v", code, err)
	require.Equal(t, code, pgErr.Code, "%v", err)
	if constraint != "" {
		require.Equal(t, constraint, pgErr.ConstraintName, "%v", err)
	}
}

func countEvents(t *testing.T, pool *pgxpool.Pool, aggID string) (events, outboxRows int) {
	t.Helper()
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT
		(SELECT count(*) FROM readside.events WHERE aggregate_id = $1),
		(SELECT count(*) FROM readside.outbox WHERE aggregate_id = $1)`, aggID).Scan(&events, &outboxRows))
	return events, outboxRows
}

// row is one event row of a multi-row statement.
type row struct {
	agg     string
	version int
}

func valuesSQL(rows []row) string {
	s := `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version) VALUES `
	for i, r := range rows {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf(`('Order', '%s', 'E%d', '{"v":%d}', %d)`, r.agg, r.version, r.version, r.version)
	}
	return s
}

// Hole 1 of issue 10: within one statement the reader delivers rows in id
// order, which is the statement's row order; an aggregate's versions must
// not be reversed by it. Several aggregates interleaved in version order
// are fine.
func TestContractRefusesReorderInOneStatement(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	// o-existing already has version 1.
	_, err := pool.Exec(ctx, valuesSQL([]row{{"o-existing", 1}}))
	require.NoError(t, err)

	for _, tc := range []struct {
		name string
		rows []row
		ok   bool
	}{
		{"reversed", []row{{"o-rev", 3}, {"o-rev", 2}, {"o-rev", 1}}, false},
		{"shuffled", []row{{"o-shuf", 2}, {"o-shuf", 1}, {"o-shuf", 3}}, false},
		{"shuffled tail", []row{{"o-tail", 1}, {"o-tail", 3}, {"o-tail", 2}}, false},
		{"after existing, reversed", []row{{"o-existing", 3}, {"o-existing", 2}}, false},
		{"interleaved, one reversed", []row{{"o-a", 1}, {"o-b", 2}, {"o-a", 2}, {"o-b", 1}}, false},
		{"interleaved in order", []row{{"o-c", 1}, {"o-d", 1}, {"o-c", 2}, {"o-e", 1}, {"o-d", 2}, {"o-c", 3}}, true},
	} {
		_, err := pool.Exec(ctx, valuesSQL(tc.rows))
		if tc.ok {
			require.NoError(t, err, tc.name)
			continue
		}
		requirePgError(t, err, "23514", "readside_aggregate_version_order")
		require.ErrorContains(t, err, "version order", tc.name)
	}
	// Nothing of a refused statement was written.
	for _, id := range []string{"o-rev", "o-shuf", "o-tail", "o-a", "o-b"} {
		e, o := countEvents(t, pool, id)
		require.Zero(t, e+o, id)
	}
	e, o := countEvents(t, pool, "o-c")
	require.Equal(t, [2]int{3, 3}, [2]int{e, o})
	// The reader then delivers every aggregate in version order.
	waitWindow(t, pool)
	b, err := outbox.Fetch(ctx, pool, outbox.Start, 100, outbox.Filter{})
	require.NoError(t, err)
	last := map[string]int{}
	for _, ev := range b.Events {
		require.Equal(t, last[ev.AggregateID]+1, ev.Version, "%s", ev.AggregateID)
		last[ev.AggregateID] = ev.Version
	}
	require.Equal(t, map[string]int{"o-existing": 1, "o-c": 3, "o-d": 2, "o-e": 1}, last)
}

// COPY fires the same statement trigger.
func TestContractRefusesReorderThroughCopy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	copyRows := func(rows []row) error {
		src := make([][]any, len(rows))
		for i, r := range rows {
			src[i] = []any{"Order", r.agg, fmt.Sprintf("E%d", r.version), fmt.Sprintf(`{"v":%d}`, r.version), int32(r.version)}
		}
		_, err := pool.CopyFrom(ctx, pgx.Identifier{"readside", "events"},
			[]string{"aggregate_type", "aggregate_id", "event_type", "event_data", "version"}, pgx.CopyFromRows(src))
		return err
	}
	err := copyRows([]row{{"o-1", 1}, {"o-1", 3}, {"o-1", 2}})
	requirePgError(t, err, "23514", "readside_aggregate_version_order")
	e, o := countEvents(t, pool, "o-1")
	require.Zero(t, e+o)

	require.NoError(t, copyRows([]row{{"o-1", 1}, {"o-2", 1}, {"o-1", 2}, {"o-2", 2}, {"o-1", 3}}))
	e, o = countEvents(t, pool, "o-1")
	require.Equal(t, [2]int{3, 3}, [2]int{e, o})
}

// Hole 2 of issue 10: the transaction id is the reader's order; a writer
// that supplies it could sort its event behind every checkpoint (skipped
// for ever) or far ahead (every projector refuses to start).
func TestContractRefusesForgedTxid(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	for _, txid := range []string{"1", "9000000000000"} {
		_, err := pool.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version, txid)
			VALUES ('Order', 'o-forged', 'OrderPlaced', '{}', 1, $1::xid8)`, txid)
		requirePgError(t, err, "23514", "readside_events_txid_current")
		require.ErrorContains(t, err, "txid")
	}
	e, o := countEvents(t, pool, "o-forged")
	require.Zero(t, e+o)
	// Naming the transaction's own id is not forging it.
	_, err := pool.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version, txid)
		VALUES ('Order', 'o-forged', 'OrderPlaced', '{}', 1, pg_current_xact_id())`)
	require.NoError(t, err)
	require.NoError(t, outbox.CheckXIDs(ctx, pool))
}

// The log is append-only whoever the writer is, the table's owner included.
func TestContractEventsAreAppendOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := appendTx(ctx, pool, outbox.Aggregate{Type: "Order", ID: "o-1"}, 0, ev("OrderPlaced", 1))
	require.NoError(t, err)
	for _, stmt := range []string{
		`UPDATE readside.events SET aggregate_id = 'o-2'`,
		`UPDATE readside.events SET event_data = '{}' WHERE false`, // refused per statement, even when it touches nothing
		`DELETE FROM readside.events`,
		`TRUNCATE readside.events`,
		`TRUNCATE readside.events CASCADE`,
	} {
		_, err := pool.Exec(ctx, stmt)
		requirePgError(t, err, "55000", "readside_events_append_only")
		require.ErrorContains(t, err, "append-only", stmt)
	}
	// A session cannot grant itself the erasure's permission.
	_, err = pool.Exec(ctx, `SELECT set_config('readside.erasing', 'on', false)`)
	require.NoError(t, err)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	_, err = tx.Exec(ctx, `SET LOCAL readside.erasing = 'on'; UPDATE readside.events SET aggregate_id = 'o-2'`)
	requirePgError(t, err, "55000", "readside_events_append_only")
	require.NoError(t, tx.Rollback(ctx))

	var id, o int
	require.NoError(t, pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM readside.events WHERE aggregate_id = 'o-1'), (SELECT count(*) FROM readside.outbox)`).Scan(&id, &o))
	require.Equal(t, [2]int{1, 1}, [2]int{id, o})
}

// Only the events trigger writes the outbox: a forged outbox row would be
// delivered as an event that is not in the log.
func TestContractOutboxIsWrittenByTheTriggerOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := pool.Exec(ctx, `INSERT INTO readside.outbox (position, aggregate_type, aggregate_id, event_type, version)
		VALUES (1, 'Order', 'o-1', 'OrderPlaced', 1)`)
	requirePgError(t, err, "55000", "readside_outbox_trigger_only")
	// The trigger still writes it.
	_, err = appendTx(ctx, pool, outbox.Aggregate{Type: "Order", ID: "o-1"}, 0, ev("OrderPlaced", 1))
	require.NoError(t, err)
	_, o := countEvents(t, pool, "o-1")
	require.Equal(t, 1, o)
}

// writerRole is a role of this test's holding the documented writer
// grant (readside_grant_writer) in pool's database.
func writerRole(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	role := pgtest.NewRole(t, "NOLOGIN", pool)
	_, err := pool.Exec(context.Background(), `SELECT readside.readside_grant_writer($1::regrole)`, role)
	require.NoError(t, err)
	return role
}

// asWriter runs f in a transaction as role.
func asWriter(ctx context.Context, pool *pgxpool.Pool, role string, f func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL ROLE `+role); err != nil {
			return err
		}
		return f(tx)
	})
}

// Hole 10 of issue 10: a role with the documented writer grant has INSERT
// on events (and what reading its own aggregates needs) and nothing on the
// read side's tables; the trigger runs with the rights it needs.
func TestContractWriterRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	role := writerRole(t, pool)
	agg := outbox.Aggregate{Type: "Order", ID: "o-role"}

	// Append (one statement, RETURNING) and a plain INSERT both work.
	require.NoError(t, asWriter(ctx, pool, role, func(tx pgx.Tx) error {
		_, err := outbox.Append(ctx, tx, agg, 0, []outbox.NewEvent{ev("OrderPlaced", 1)})
		return err
	}))
	require.NoError(t, asWriter(ctx, pool, role, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
			VALUES ('Order', 'o-role', 'OrderConfirmed', '{}', 2), ('Order', 'o-role', 'OrderShipped', '{}', 3)`)
		return err
	}))
	e, o := countEvents(t, pool, "o-role")
	require.Equal(t, [2]int{3, 3}, [2]int{e, o})
	// The trigger's rules still hold under the role.
	err := asWriter(ctx, pool, role, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, valuesSQL([]row{{"o-x", 2}, {"o-x", 1}}))
		return err
	})
	requirePgError(t, err, "23514", "readside_aggregate_version_order")
	err = asWriter(ctx, pool, role, func(tx pgx.Tx) error {
		_, err := outbox.Append(ctx, tx, agg, 1, []outbox.NewEvent{ev("OrderShipped", 2)})
		return err
	})
	require.ErrorIs(t, err, outbox.ErrConcurrencyConflict)

	for _, stmt := range []string{
		`INSERT INTO readside.outbox (position, aggregate_type, aggregate_id, event_type, version) VALUES (1, 'Order', 'o-role', 'OrderPlaced', 1)`,
		`UPDATE readside.outbox SET version = 9`,
		`DELETE FROM readside.outbox`,
		`UPDATE readside.events SET event_data = '{}'`,
		`DELETE FROM readside.events`,
		`TRUNCATE readside.events`,
		`SELECT count(*) FROM readside.checkpoints`,
		`UPDATE readside.checkpoints SET cursor_position = 0`,
		`SELECT count(*) FROM readside.dead_letters`,
		`INSERT INTO readside.outbox_horizon (txid, position) VALUES ('1', 1)`,
		`SELECT readside.readside_erase_event_data(1, '{}', NULL, 'test')`,
	} {
		err := asWriter(ctx, pool, role, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, stmt)
			return err
		})
		requirePgError(t, err, "42501", "")
	}
	e, o = countEvents(t, pool, "o-role")
	require.Equal(t, [2]int{3, 3}, [2]int{e, o})
}

// Writer rights are per database (issue 21): the grant given in database A
// lets the role write A's readside and not B's, though CONNECT is PUBLIC's;
// the cluster-wide role readside_writer that release 10 created holds no
// rights in a migrated database.
func TestContractWriterRightsPerDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	aURL, bURL := pgtest.NewDatabaseURL(t), pgtest.NewDatabaseURL(t)
	a, b := pgtest.Pool(t, aURL), pgtest.Pool(t, bURL)
	role := pgtest.NewRole(t, "LOGIN", a, b)
	_, err := a.Exec(ctx, `SELECT readside.readside_grant_writer($1::regrole)`, role)
	require.NoError(t, err)

	insert := `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version) VALUES ('Order', 'o-1', 'OrderPlaced', '{}', 1)`
	asA, asB := pgtest.Pool(t, pgtest.AsRole(aURL, role)), pgtest.Pool(t, pgtest.AsRole(bURL, role))
	_, err = asA.Exec(ctx, insert)
	require.NoError(t, err)
	_, err = asB.Exec(ctx, insert)
	requirePgError(t, err, "42501", "")

	for _, db := range []*pgxpool.Pool{a, b} {
		var rights bool
		require.NoError(t, db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'readside_writer')
			AND (has_table_privilege('readside_writer', 'readside.events', 'INSERT') OR has_schema_privilege('readside_writer', 'readside', 'USAGE'))`).Scan(&rights))
		require.False(t, rights, "the cluster-wide readside_writer holds no rights")
	}

	// Revoked, the role writes nothing more.
	_, err = a.Exec(ctx, `SELECT readside.readside_revoke_writer($1::regrole)`, role)
	require.NoError(t, err)
	asA.Reset()
	_, err = asA.Exec(ctx, insert)
	requirePgError(t, err, "42501", "")
}

// The escape hatch for erasure (GDPR): readside_erase_event_data redacts one
// event's payload in place, records it, and drops the aggregate's snapshots
// (they hold state derived from the erased data). Everything the reader
// orders by stays as it was, so a replay reads the redacted event in its
// place.
func TestContractEraseEventData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	agg := outbox.Aggregate{Type: "Order", ID: "o-gdpr"}
	res, err := appendTx(ctx, pool, agg, 0,
		outbox.NewEvent{Type: "OrderPlaced", Data: json.RawMessage(`{"order_id":"o-gdpr","customer_name":"Ada Lovelace"}`), Metadata: outbox.Metadata{UserID: "ada"}},
		ev("OrderConfirmed", 2))
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO readside.snapshots (aggregate_type, aggregate_id, version, state) VALUES ('Order', 'o-gdpr', 2, '{"customer_name":"Ada Lovelace"}')`)
	require.NoError(t, err)
	id := res.Positions[0]
	var before [2]string
	require.NoError(t, pool.QueryRow(ctx, `SELECT txid::text, version::text FROM readside.events WHERE id = $1`, id).Scan(&before[0], &before[1]))

	_, err = pool.Exec(ctx, `SELECT readside.readside_erase_event_data($1, '{"order_id":"o-gdpr","customer_name":"[erased]"}', '{}', 'request 42')`, id)
	require.NoError(t, err)

	var after [2]string
	var data, meta string
	require.NoError(t, pool.QueryRow(ctx, `SELECT txid::text, version::text, event_data::text, metadata::text FROM readside.events WHERE id = $1`, id).
		Scan(&after[0], &after[1], &data, &meta))
	require.Equal(t, before, after)
	require.JSONEq(t, `{"order_id":"o-gdpr","customer_name":"[erased]"}`, data)
	require.JSONEq(t, `{}`, meta)
	var erasures, snapshots int
	var reason string
	require.NoError(t, pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM readside.event_erasures WHERE event_id = $1),
		(SELECT max(reason) FROM readside.event_erasures), (SELECT count(*) FROM readside.snapshots)`, id).Scan(&erasures, &reason, &snapshots))
	require.Equal(t, 1, erasures)
	require.Equal(t, "request 42", reason)
	require.Zero(t, snapshots)

	waitWindow(t, pool)
	b, err := outbox.Fetch(ctx, pool, outbox.Start, 10, outbox.Filter{})
	require.NoError(t, err)
	require.Len(t, b.Events, 2)
	require.JSONEq(t, data, string(b.Events[0].Data))
	require.Equal(t, 1, b.Events[0].Version)

	// NULL metadata keeps it; the payload must stay a JSON object; the event
	// must exist.
	_, err = pool.Exec(ctx, `SELECT readside.readside_erase_event_data($1, '{"n":2}', NULL, '')`, res.Positions[1])
	require.NoError(t, err)
	require.NoError(t, pool.QueryRow(ctx, `SELECT metadata->>'correlation_id' FROM readside.events WHERE id = $1`, res.Positions[1]).Scan(&meta))
	require.Equal(t, "c1", meta)
	_, err = pool.Exec(ctx, `SELECT readside.readside_erase_event_data($1, '"x"', NULL, '')`, id)
	requirePgError(t, err, "22023", "")
	_, err = pool.Exec(ctx, `SELECT readside.readside_erase_event_data(-5, '{}', NULL, '')`)
	requirePgError(t, err, "P0002", "")
}
