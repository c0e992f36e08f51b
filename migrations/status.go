package migrations

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/readside/readside/internal/dbschema"
)

// Plan is what Migrate would apply, with its SQL.
type Plan struct {
	River    []Migration // River's pending migrations
	Readside []Migration // readside's pending migrations
}

// Pending returns what Migrate would apply now, without applying it.
func Pending(ctx context.Context, pool *pgxpool.Pool, cfg Config) (*Plan, error) {
	n, err := cfg.schema()
	if err != nil {
		return nil, err
	}
	current, err := appliedVersion(ctx, pool, n)
	if err != nil {
		return nil, err
	}
	all := All()
	if current > len(all) {
		return nil, fmt.Errorf("migrate: %w: database is at version %d, this binary knows up to %d; upgrade the binary", ErrSchemaTooNew, current, len(all))
	}
	plan := &Plan{Readside: all[current:]}
	migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: n.String()})
	if err != nil {
		return nil, fmt.Errorf("migrate: river: %w", err)
	}
	res, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, &rivermigrate.MigrateOpts{DryRun: true})
	if err != nil {
		return nil, fmt.Errorf("migrate: river: %w", err)
	}
	for _, v := range res.Versions {
		plan.River = append(plan.River, Migration{Version: v.Version, Name: v.Name, SQL: v.SQL})
	}
	return plan, nil
}

// MigrationStatus is one readside migration, applied or pending.
type MigrationStatus struct {
	Version   int        `json:"version"`
	Name      string     `json:"name"`
	AppliedAt *time.Time `json:"applied_at"` // nil when pending
}

// SchemaStatus is the database's schema against this binary's.
type SchemaStatus struct {
	Version      int               `json:"version"` // the database's readside version
	Latest       int               `json:"latest"`  // this binary's
	Migrations   []MigrationStatus `json:"migrations"`
	RiverPending int               `json:"river_pending"`
}

// Status lists readside's migrations, applied ones with their time, and
// counts River's pending ones.
func Status(ctx context.Context, pool *pgxpool.Pool, cfg Config) (*SchemaStatus, error) {
	n, err := cfg.schema()
	if err != nil {
		return nil, err
	}
	plan, err := Pending(ctx, pool, cfg)
	if err != nil {
		return nil, err
	}
	st := &SchemaStatus{Latest: Latest(), RiverPending: len(plan.River), Migrations: []MigrationStatus{}}
	applied := map[int]time.Time{}
	var exists bool
	if err := pool.QueryRow(ctx, n.SQL(`SELECT to_regclass('readside.readside_migrations') IS NOT NULL`)).Scan(&exists); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	if exists {
		rows, err := pool.Query(ctx, n.SQL(`SELECT version, applied_at FROM readside.readside_migrations ORDER BY version`))
		if err != nil {
			return nil, fmt.Errorf("migrate: %w", err)
		}
		for rows.Next() {
			var v int
			var at time.Time
			if err := rows.Scan(&v, &at); err != nil {
				return nil, err
			}
			applied[v] = at
			st.Version = max(st.Version, v)
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	for _, m := range All() {
		ms := MigrationStatus{Version: m.Version, Name: m.Name}
		if at, ok := applied[m.Version]; ok {
			ms.AppliedAt = &at
		}
		st.Migrations = append(st.Migrations, ms)
	}
	return st, nil
}

// appliedVersion is version() that also answers 0 for a database that has
// never been migrated.
func appliedVersion(ctx context.Context, q Querier, n dbschema.Name) (int, error) {
	var exists bool
	if err := q.QueryRow(ctx, n.SQL(`SELECT to_regclass('readside.readside_migrations') IS NOT NULL`)).Scan(&exists); err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	if !exists {
		return 0, nil
	}
	return version(ctx, q, n)
}
