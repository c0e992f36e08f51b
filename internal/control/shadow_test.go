package control_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/dbschema"
)

// The longest schema name Parse accepts still leaves a rebuild's schemas
// a name within PostgreSQL's 63 bytes, distinct per projection.
func TestShadowSchemaOfTheLongestSchema(t *testing.T) {
	schema := strings.Repeat("s", 32)
	_, err := dbschema.Parse(schema)
	require.NoError(t, err)
	_, err = dbschema.Parse(schema + "s")
	require.Error(t, err)
	a := control.ShadowSchema(schema, "order_details_with_a_rather_long_projection_name")
	b := control.ShadowSchema(schema, "order_details_with_a_rather_long_projection_name_2")
	require.LessOrEqual(t, len(a), 63)
	require.NotEqual(t, a, b)
	require.LessOrEqual(t, len(control.ShadowName(strings.Repeat("p", 63))), 63)
}
