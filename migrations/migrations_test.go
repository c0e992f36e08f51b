package migrations_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/migrations"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Fleet members all run `projector migrate` at start: three at once on an
// empty database, then again, must leave one schema at the latest version.
func TestMigrateConcurrentlyAndAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, pgtest.NewEmptyDatabaseURL(t))
	require.ErrorIs(t, migrations.Check(ctx, pool), migrations.ErrNotMigrated)

	var wg sync.WaitGroup
	errs := make([]error, 3)
	results := make([]*migrations.Result, 3)
	for i := range 3 {
		wg.Go(func() { results[i], errs[i] = migrations.Migrate(ctx, pool, nil) })
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	applied := 0
	for _, r := range results {
		applied += len(r.Applied)
		require.Equal(t, migrations.Latest(), r.Version)
	}
	require.Equal(t, migrations.Latest(), applied, "each migration applied exactly once")
	require.NoError(t, migrations.Check(ctx, pool))

	again, err := migrations.Migrate(ctx, pool, nil)
	require.NoError(t, err)
	require.Empty(t, again.Applied)
	require.Empty(t, again.River)

	// A newer binary's migration: this one refuses to touch the schema.
	_, err = pool.Exec(ctx, `INSERT INTO readside_migrations (version, name) VALUES ($1, 'future')`, migrations.Latest()+1)
	require.NoError(t, err)
	_, err = migrations.Migrate(ctx, pool, nil)
	require.ErrorIs(t, err, migrations.ErrSchemaTooNew)
	require.ErrorIs(t, migrations.Check(ctx, pool), migrations.ErrSchemaTooNew)
}
