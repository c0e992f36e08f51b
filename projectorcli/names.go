package projectorcli

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/readside/readside/checkpoint"
	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/migrations"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/control"
)

// carried returns the projection of this binary called name.
func (a *app) carried(name string) (projectors.Projection, error) {
	if p, ok := a.byName[name]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("unknown projection %q (this binary carries: %s)", name, strings.Join(a.names(), ", "))
}

// registered returns the projections registered in the database (by a
// worker that ran them), shadows of rebuilds included.
func registered(ctx context.Context, pool *dbschema.Pool) ([]string, error) {
	regs, err := checkpoint.Registry(ctx, pool)
	if err != nil {
		return nil, fmt.Errorf("list %w", err)
	}
	var out []string
	for _, r := range regs {
		out = append(out, r.Name)
	}
	return out, nil
}

// known checks a name for the commands that only touch database state
// (pause, resume, dead letters): the binary carries it, or a worker has
// registered it in the database (a projection of another binary, a shadow).
func (a *app) known(ctx context.Context, pool *dbschema.Pool, name string) error {
	if _, ok := a.byName[name]; ok {
		return nil
	}
	reg, err := registered(ctx, pool)
	if err != nil {
		return err
	}
	if slices.Contains(reg, name) {
		return nil
	}
	return fmt.Errorf("unknown projection %q (this binary carries: %s; registered in the database: %s)",
		name, strings.Join(a.names(), ", "), orNone(reg))
}

func orNone(list []string) string {
	if len(list) == 0 {
		return "none"
	}
	return strings.Join(list, ", ")
}

// connectChecked connects and checks the schema, for operator commands.
func (a *app) connectChecked(ctx context.Context, url string) (*dbschema.Pool, error) {
	pool, err := cli.Connect(ctx, url, 4)
	if err != nil {
		return nil, err
	}
	if err := migrations.Check(ctx, pool, a.schema.String()); err != nil {
		pool.Close()
		return nil, err
	}
	return a.schema.Pool(pool), nil
}

// openForControl connects for a reset or rebuild of projection name, which
// must be carried by this binary (its workers execute the job), registered
// in the database and not being rebuilt.
func (a *app) openForControl(ctx context.Context, url, name string) (*dbschema.Pool, error) {
	pool, err := a.connectChecked(ctx, url)
	if err != nil {
		return nil, err
	}
	var rebuilding bool
	err = checkpoint.Exists(ctx, pool, name)
	if err != nil {
		err = fmt.Errorf("%w (has a projector run it yet?)", err)
	} else if rebuilding, err = checkpoint.Rebuilding(ctx, pool, name); err == nil && rebuilding {
		err = fmt.Errorf("%s: %w; wait for it to switch (%s status shows %s)", name, control.ErrRebuildRunning, a.name, control.ShadowName(name))
	}
	if err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}
