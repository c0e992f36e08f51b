package cli

import "github.com/readside/readside/internal/dbschema"

// SchemaHelp describes --schema.
const SchemaHelp = "PostgreSQL schema of readside's tables, functions and River's tables"

// Schema defines --schema (env READSIDE_SCHEMA), readside's schema.
func (f *Flags) Schema(p *string) {
	f.String(p, "schema", "READSIDE_SCHEMA", string(dbschema.Default), SchemaHelp)
}
