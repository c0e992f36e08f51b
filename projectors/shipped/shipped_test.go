package shipped_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors/shipped"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestByName(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for _, p := range shipped.All() {
		spec := p.Spec()
		require.False(t, seen[spec.Name], "duplicate name %s", spec.Name)
		seen[spec.Name] = true
		q, ok := shipped.ByName(spec.Name)
		require.True(t, ok)
		require.Equal(t, spec.Name, q.Spec().Name)
		require.True(t, len(spec.EventTypes) > 0 || len(spec.AggregateTypes) > 0, "%s subscribes to something", spec.Name)
	}
	for _, p := range shipped.ReadModels() {
		require.NotEmpty(t, p.Spec().Tables, p.Spec().Name)
	}
	require.Equal(t, map[string]bool{"order_summary": true, "order_details": true, "products": true, "order_statistics": true,
		"order_notifications": true}, seen)
	_, ok := shipped.ByName("nope")
	require.False(t, ok)
}

// TestTablesExist: every table a shipped projection names is created by
// its Schema, in readside's schema.
func TestTablesExist(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	for _, p := range shipped.All() {
		for _, table := range p.Spec().Tables {
			var ok bool
			require.NoError(t, pool.QueryRow(t.Context(), `SELECT to_regclass('readside.' || $1) IS NOT NULL`, table).Scan(&ok))
			require.True(t, ok, "%s: table %s", p.Spec().Name, table)
		}
	}
}
