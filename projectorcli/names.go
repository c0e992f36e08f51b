package projectorcli

import (
	"context"
	"fmt"
	"strings"

	"github.com/readside/readside"
	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/projectors"
)

// carried returns the projection of this binary called name.
func (a *app) carried(name string) (projectors.Projection, error) {
	if p, ok := a.byName[name]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("unknown projection %q (this binary carries: %s)", name, strings.Join(a.names(), ", "))
}

// operator is an operator command's connection: a readside.Client for the
// binary's projections in --schema, on a small pool, on a database
// migrated to this binary's version. close closes the pool.
func (a *app) operator(ctx context.Context, url string) (*readside.Client, func(), error) {
	pool, err := cli.Connect(ctx, url, 4)
	if err != nil {
		return nil, nil, err
	}
	c, err := a.newClient(readside.Config{Pool: pool})
	if err == nil {
		err = c.CheckSchema(ctx)
	}
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return c, pool.Close, nil
}

// newClient completes cfg with the binary's projections and --schema.
func (a *app) newClient(cfg readside.Config) (*readside.Client, error) {
	cfg.Schema = a.schema.String()
	if cfg.Projections == nil {
		cfg.Projections = a.projs
	}
	return readside.NewClient(cfg)
}
