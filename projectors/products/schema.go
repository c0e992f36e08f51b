package products

import _ "embed"

//go:embed schema.sql
var schemaSQL string

// Schema implements projectors.Schema: the projection's tables, which
// `projector migrate` creates in readside's schema.
func (*Projection) Schema() string { return schemaSQL }
