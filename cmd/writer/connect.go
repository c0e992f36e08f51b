package main

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/migrations"
)

// connect opens a pool and refuses an unreachable or unmigrated database
// with a one-line reason.
func connect(ctx context.Context, url string, maxConns int) (*pgxpool.Pool, error) {
	pool, err := cli.Connect(ctx, url, maxConns)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, cli.ConnectTimeout)
	defer cancel()
	if err := migrations.Check(cctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}
