package dbschema_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/dbschema"
)

func TestParse(t *testing.T) {
	for _, ok := range []string{"", "readside", "public", "rs_2", "_x"} {
		_, err := dbschema.Parse(ok)
		require.NoError(t, err, ok)
	}
	for _, bad := range []string{"Readside", "read side", `rs"; drop`, "rs'", "2rs", "pg_temp", "information_schema",
		"a234567890123456789012345678901x3"} {
		_, err := dbschema.Parse(bad)
		require.Error(t, err, bad)
	}
	n, err := dbschema.Parse("")
	require.NoError(t, err)
	require.Equal(t, dbschema.Default, n)
}

// The rewrite touches readside's qualifier wherever an identifier starts,
// also in a string literal, and nothing else: not a longer identifier,
// not a setting's dotted name, not the unqualified function names.
func TestSQL(t *testing.T) {
	n := dbschema.Name("app_rs")
	for in, want := range map[string]string{
		`SELECT * FROM readside.events e JOIN readside.outbox o ON o.position = e.id`: `SELECT * FROM app_rs.events e JOIN app_rs.outbox o ON o.position = e.id`,
		`SELECT to_regclass('readside.readside_migrations')`:                          `SELECT to_regclass('app_rs.readside_migrations')`,
		`SELECT readside.readside_segment(x, 4),(readside.f())`:                       `SELECT app_rs.readside_segment(x, 4),(app_rs.f())`,
		"readside.events":                      "app_rs.events",
		`SELECT my_readside.t, x.readside.y`:   `SELECT my_readside.t, x.readside.y`,
		`SELECT readside_segment(a, 2)`:        `SELECT readside_segment(a, 2)`,
		`SELECT "readside".events, $readside.`: `SELECT "readside".events, $readside.`,
	} {
		require.Equal(t, want, n.SQL(in), in)
		require.Equal(t, want, n.SQL(in), "cached: "+in)
		require.Equal(t, in, dbschema.Default.SQL(in), "the default schema rewrites nothing")
	}
}
