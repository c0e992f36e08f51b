package aggregate_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

// Issue 22, item 3: a role with the writer grant inserted snapshots of its
// own making. One marking a pending order confirmed let ShipOrder succeed
// (every read model then parked the event); one at version 999 made every
// later command on the order a concurrency conflict (409) forever. A
// snapshot is now refused unless its transaction appended its version
// (23514, readside_snapshot_own_append), and Load ignores a snapshot whose
// version the log does not hold.
func TestWriterCannotForgeSnapshots(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	role := pgtest.NewRole(t, "LOGIN", pool)
	_, err := pool.Exec(ctx, `SELECT readside.readside_grant_writer($1::regrole)`, role)
	require.NoError(t, err)
	asWriter := pgtest.Pool(t, pgtest.AsRole(pool.Config().ConnString(), role))
	repo := newRepo(t, asWriter, aggregate.Config{SnapshotEvery: -1})
	meta := outbox.Metadata{}

	place := func(id string) {
		t.Helper()
		_, err := aggregate.Execute(ctx, repo, id, meta, func(o *domain.Order) ([]domain.Event, error) {
			return o.Place(domain.PlaceOrder{OrderID: id, CustomerName: "Alice",
				Items: []domain.OrderItem{{ProductName: "W", Quantity: 1, UnitPrice: 250}}}, now)
		})
		require.NoError(t, err)
	}
	forge := func(id string, version int, edit func(o *domain.Order)) error {
		t.Helper()
		l, err := aggregate.Load[domain.Order](ctx, asWriter, id)
		require.NoError(t, err)
		edit(l.State)
		state, err := json.Marshal(l.State)
		require.NoError(t, err)
		_, err = asWriter.Exec(ctx, `INSERT INTO readside.snapshots (aggregate_type, aggregate_id, version, state) VALUES ('Order', $1, $2, $3)`,
			id, version, string(state))
		return err
	}
	requireRefused := func(err error) {
		t.Helper()
		var pgErr *pgconn.PgError
		require.True(t, errors.As(err, &pgErr), "the forged snapshot was accepted: %v", err)
		require.Equal(t, "23514", pgErr.Code, "%v", err)
		require.Equal(t, "readside_snapshot_own_append", pgErr.ConstraintName, "%v", err)
	}

	// A pending order forged confirmed: ShipOrder is still refused.
	place("o-confirmed")
	requireRefused(forge("o-confirmed", 1, func(o *domain.Order) { o.Status = domain.OrderStatusConfirmed }))
	_, err = aggregate.Execute(ctx, repo, "o-confirmed", meta, func(o *domain.Order) ([]domain.Event, error) {
		return o.Ship(domain.ShipOrder{OrderID: "o-confirmed"}, now)
	})
	require.ErrorIs(t, err, domain.ErrInvalidTransition)

	// A snapshot at version 999: the order still takes commands.
	place("o-999")
	requireRefused(forge("o-999", 999, func(*domain.Order) {}))
	confirm := func(id string) (*aggregate.Result, error) {
		return aggregate.Execute(ctx, repo, id, meta, func(o *domain.Order) ([]domain.Event, error) {
			return o.Confirm(domain.ConfirmOrder{OrderID: id}, now)
		})
	}
	res, err := confirm("o-999")
	require.NoError(t, err)
	require.Equal(t, 2, res.Version)

	// A snapshot beyond the log that got in anyway (written by the owner,
	// or before the rule existed) is ignored by Load.
	place("o-owner")
	_, err = pool.Exec(ctx, `INSERT INTO readside.snapshots (aggregate_type, aggregate_id, version, state) VALUES ('Order', 'o-owner', 999, '{"id":"o-owner","status":"confirmed"}')`)
	require.NoError(t, err)
	l, err := aggregate.Load[domain.Order](ctx, asWriter, "o-owner")
	require.NoError(t, err)
	require.Equal(t, 1, l.Version)
	require.Zero(t, l.SnapshotVersion)
	res, err = confirm("o-owner")
	require.NoError(t, err)
	require.Equal(t, 2, res.Version)

	// The writer's own snapshots, in the transaction that appends their
	// version, are written and used.
	snap := newRepo(t, asWriter, aggregate.Config{SnapshotEvery: 1})
	place("o-snap")
	res, err = aggregate.Execute(ctx, snap, "o-snap", meta, func(o *domain.Order) ([]domain.Event, error) {
		return o.Confirm(domain.ConfirmOrder{OrderID: "o-snap"}, now)
	})
	require.NoError(t, err)
	require.True(t, res.Snapshot)
	l, err = aggregate.Load[domain.Order](ctx, asWriter, "o-snap")
	require.NoError(t, err)
	require.Equal(t, 2, l.SnapshotVersion)
	require.Equal(t, domain.OrderStatusConfirmed, l.State.Status)
	// A plain INSERT in the transaction that appended the version, as a
	// writer outside Go does, is accepted too.
	require.NoError(t, pgx.BeginFunc(ctx, asWriter, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
			VALUES ('Order', 'o-snap', 'OrderShipped', '{"order_id":"o-snap","tracking_number":"","shipped_at":"2025-01-02T03:04:05Z"}', 3)`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO readside.snapshots (aggregate_type, aggregate_id, version, state) VALUES ('Order', 'o-snap', 3, '{}')`)
		return err
	}))
}
