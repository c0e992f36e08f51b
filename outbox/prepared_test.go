package outbox_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtemp"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/migrations"
	"github.com/readside/readside/outbox"
)

// preparedCluster starts a disposable cluster that allows prepared
// transactions (the shared test server may not: max_prepared_transactions
// is 0 by default) and returns a migrated database on it.
func preparedCluster(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	cl, err := pgtemp.Start(ctx)
	if err != nil {
		t.Fatalf("pgtemp: %v", err)
	}
	t.Cleanup(func() { _ = cl.Stop() })
	admin := pgtest.Pool(t, cl.URL)
	_, err = admin.Exec(ctx, `ALTER SYSTEM SET max_prepared_transactions = 8`)
	require.NoError(t, err)
	admin.Reset()
	require.NoError(t, cl.Restart(ctx))
	_, err = admin.Exec(ctx, `CREATE DATABASE fence`)
	require.NoError(t, err)
	pool := pgtest.Pool(t, pgtest.WithDatabase(cl.URL, "fence"))
	_, err = migrations.Migrate(ctx, pool, migrations.Config{})
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `CREATE TABLE app_rows (n int)`)
	require.NoError(t, err)
	return pool
}

// Prepared (two-phase) transactions: one that wrote events cannot be
// prepared at all (the events trigger notifies, and PostgreSQL refuses to
// PREPARE after NOTIFY), so its events never commit; one that wrote no
// event holds nothing back while prepared; one registered by
// readside_register() keeps its registration across PREPARE (the lock
// moves to the prepared transaction) and holds the window, named as a
// prepared holder, until COMMIT PREPARED.
func TestPreparedTransactions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := preparedCluster(t)
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	run := func(sql ...string) error {
		for _, s := range sql {
			if _, err := conn.Exec(ctx, s); err != nil {
				return err
			}
		}
		return nil
	}

	// An event writer cannot be prepared.
	err = run(`BEGIN`, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version) VALUES ('Thing', 'prepared', 'Touched', '{}', 1)`,
		`PREPARE TRANSACTION 'events'`)
	requirePgError(t, err, "0A000", "")
	require.NoError(t, run(`ROLLBACK`))
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.events`).Scan(&n))
	require.Zero(t, n)

	// A prepared transaction that wrote no event holds nothing.
	require.NoError(t, run(`BEGIN`, `INSERT INTO app_rows VALUES (1)`, `PREPARE TRANSACTION 'plain'`))
	defer pool.Exec(context.Background(), `ROLLBACK PREPARED 'plain'`) //nolint:errcheck
	_, err = appendTx(ctx, pool, thing("after-plain"), 0, ev("Touched", 1))
	require.NoError(t, err)
	until(t, "the event after the prepared transaction is read", func() bool { return len(readAll(t, pool, outbox.Start)) == 1 })
	holder, err := outbox.WindowHolder(ctx, pool)
	require.NoError(t, err)
	require.Nil(t, holder)
	_, err = pool.Exec(ctx, `ROLLBACK PREPARED 'plain'`)
	require.NoError(t, err)

	// A registered transaction stays registered once prepared.
	var x uint64
	require.NoError(t, run(`BEGIN`))
	require.NoError(t, conn.QueryRow(ctx, `SELECT readside.readside_register()`).Scan(&x))
	require.NoError(t, run(`INSERT INTO app_rows VALUES (2)`, `PREPARE TRANSACTION 'registered'`))
	defer pool.Exec(context.Background(), `ROLLBACK PREPARED 'registered'`) //nolint:errcheck
	younger, err := appendTx(ctx, pool, thing("after-registered"), 0, ev("Touched", 1))
	require.NoError(t, err)
	fencePast(t, pool, x)
	require.Len(t, readAll(t, pool, outbox.Start), 1, "the prepared registered transaction holds the window")
	holder, err = outbox.WindowHolder(ctx, pool)
	require.NoError(t, err)
	require.NotNil(t, holder)
	require.Equal(t, outbox.Holder{PID: 0, Database: "fence", TxID: x, Age: holder.Age, State: "prepared", Query: "registered", Prepared: true}, *holder)
	_, err = pool.Exec(ctx, `COMMIT PREPARED 'registered'`)
	require.NoError(t, err)
	until(t, "the younger event is read", func() bool { return len(readAll(t, pool, outbox.Start)) == 2 })
	require.Equal(t, younger.Cursor(), readAll(t, pool, outbox.Start)[1].Cursor)
}
