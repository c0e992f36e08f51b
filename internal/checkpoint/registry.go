package checkpoint

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Registration is a projection's row in the registry.
type Registration struct {
	Name     string
	Segments int
	OnError  string // park or halt
	// RebuildOf is, for the shadow of a rebuild in progress, the live
	// projection it rebuilds; empty otherwise.
	RebuildOf string
	// Schema is the schema a shadow's tables are built in; empty for a live
	// projection.
	Schema string
}

// Register creates the projection with segments checkpoints at the start
// of the log, unless it is registered: then its segment count stays what
// it is: segments is only the first count, Scale changes it.
func Register(ctx context.Context, db DB, name string, segments int, onError string) error {
	var got int
	err := db.QueryRow(ctx, `
WITH p AS (
    INSERT INTO readside.projections (name, segments, on_error) VALUES ($1, $2, $3)
    ON CONFLICT (name) DO UPDATE SET on_error = excluded.on_error, updated_at = now()
    RETURNING segments
), c AS (
    INSERT INTO readside.checkpoints (projection, segment)
    SELECT $1, s FROM p, generate_series(0, p.segments - 1) s
    ON CONFLICT DO NOTHING
)
SELECT segments FROM p`, name, segments, onError).Scan(&got)
	if err != nil {
		return fmt.Errorf("register %s: %w", name, err)
	}
	return nil
}

// RegisterShadow registers shadow, the copy a rebuild of live builds in
// schema: same segments and error policy as live, every segment at the
// start of the log but inheriting live's high-water mark, so that the copy
// knows everything it applies is a replay. The caller runs it in the
// transaction that creates the copy's tables. It holds live's registry row
// (FOR SHARE) until then, so that a scale (LockProjection) either comes
// first or sees the rebuild and refuses.
func RegisterShadow(ctx context.Context, tx DB, shadow, live, schema string) error {
	if _, err := tx.Exec(ctx, `INSERT INTO readside.projections (name, segments, on_error, rebuild_of, schema_name)
		SELECT $1, segments, on_error, name, $3 FROM readside.projections WHERE name = $2 FOR SHARE`, shadow, live, schema); err != nil {
		return fmt.Errorf("register %s: %w", shadow, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO readside.checkpoints (projection, segment, high_txid, high_position)
		SELECT $1, segment, high_txid, high_position FROM readside.checkpoints WHERE projection = $2`, shadow, live); err != nil {
		return fmt.Errorf("register %s: %w", shadow, err)
	}
	return nil
}

// Unregister deletes a projection and, by cascade, its checkpoints and
// dead letters: the end of a rebuild's shadow once it switched in.
func Unregister(ctx context.Context, tx DB, name string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM readside.projections WHERE name = $1`, name); err != nil {
		return fmt.Errorf("unregister %s: %w", name, err)
	}
	return nil
}

// Registry returns every registered projection, shadows of rebuilds
// included, ordered by name.
func Registry(ctx context.Context, db DB) ([]Registration, error) {
	rows, err := db.Query(ctx, `SELECT name, segments, on_error, coalesce(rebuild_of, ''), coalesce(schema_name, '')
		FROM readside.projections ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("projections: %w", err)
	}
	regs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Registration, error) {
		var g Registration
		return g, r.Scan(&g.Name, &g.Segments, &g.OnError, &g.RebuildOf, &g.Schema)
	})
	if err != nil {
		return nil, fmt.Errorf("projections: %w", err)
	}
	return regs, nil
}

// Registered reports whether name is registered.
func Registered(ctx context.Context, db DB, name string) (bool, error) {
	var ok bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM readside.projections WHERE name = $1)`, name).Scan(&ok); err != nil {
		return false, fmt.Errorf("projection %s: %w", name, err)
	}
	return ok, nil
}

// Exists returns ErrUnknownProjection (wrapped) unless name is registered.
func Exists(ctx context.Context, db DB, name string) error {
	ok, err := Registered(ctx, db, name)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownProjection, name)
	}
	return nil
}

// Rebuilding reports whether a rebuild of projection is in progress (a
// shadow of it is registered).
func Rebuilding(ctx context.Context, db DB, projection string) (bool, error) {
	var ok bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM readside.projections WHERE rebuild_of = $1)`, projection).Scan(&ok); err != nil {
		return false, fmt.Errorf("projection %s: %w", projection, err)
	}
	return ok, nil
}
