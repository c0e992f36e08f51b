package main

import (
	"context"
	"fmt"

	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/migrations"
)

// connect opens a pool and refuses an unreachable or unmigrated database
// with a one-line reason.
// The pool's statements run in --schema.
func connect(ctx context.Context, c cli.ConnectConfig, schema string) (*dbschema.Pool, error) {
	n, err := dbschema.Parse(schema)
	if err != nil {
		return nil, fmt.Errorf("--schema: %w", err)
	}
	pool, err := c.Connect(ctx)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, cli.ConnectTimeout)
	defer cancel()
	if err := migrations.Check(cctx, pool, n.String()); err != nil {
		pool.Close()
		return nil, err
	}
	return n.Pool(pool), nil
}
