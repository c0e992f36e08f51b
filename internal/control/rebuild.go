package control

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/projectors"
)

// RebuildArgs rebuilds a projection without downtime (blue/green): a copy of
// its tables is built from the start in its own schema by the fleet, next to
// the live one, which keeps serving; once the copy has caught up, the tables
// are swapped in one transaction and the old ones dropped. Readers never see
// an empty or half-built model. The copy never reads past the live
// projection's checkpoints and applies everything as a replay
// (projectors.Batch.Replay), consulting the live projection's side-effect
// ledger: side effects fire once, for history and for the events the live
// projection applies while the rebuild runs alike; the copy fires only
// those of events the live projection parked and never applied.
type RebuildArgs struct {
	Projection string `json:"projection" river:"unique"`
}

// Kind implements river.JobArgs.
func (RebuildArgs) Kind() string { return "readside_rebuild" }

// InsertOpts implements river.JobArgsWithInsertOpts.
func (RebuildArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: Queue, UniqueOpts: uniqueByProjection()}
}

// ShadowName is the name of a projection's rebuild in progress.
func ShadowName(projection string) string { return short(projection, 50) + "__rebuild" }

// ShadowSchema is the schema a rebuild of projection builds its tables in,
// beside readside's schema (named after it): unqualified names in the
// copy's transactions mean its tables there.
func ShadowSchema(schema, projection string) string {
	return schema + "_rebuild_" + short(projection, 63-len(schema)-len("_rebuild_"))
}

// retiredSchema holds the live tables a switch replaced until they are
// dropped.
func retiredSchema(schema, projection string) string {
	return schema + "_retired_" + short(projection, 63-len(schema)-len("_retired_"))
}

func short(name string, n int) string {
	if len(name) <= n {
		return name
	}
	sum := hex.EncodeToString(func() []byte { s := sha256.Sum256([]byte(name)); return s[:4] }())
	if n <= len(sum) {
		return sum[:max(n, 1)]
	}
	return name[:n-len(sum)-1] + "_" + sum
}

type rebuildWorker struct {
	river.WorkerDefaults[RebuildArgs]
	c *Control
}

// Timeout: a rebuild job runs once per check; the build itself happens in
// the fleet between checks.
func (w *rebuildWorker) Timeout(*river.Job[RebuildArgs]) time.Duration { return time.Minute }

func (w *rebuildWorker) Work(ctx context.Context, job *river.Job[RebuildArgs]) error {
	p, err := w.c.projection(job.Args.Projection, job.CreatedAt)
	if err != nil {
		return err
	}
	spec := p.Spec()
	if len(spec.Tables) == 0 {
		return river.JobCancel(fmt.Errorf("rebuild %s: the projection lists no Tables, so it cannot be built in a copy", spec.Name))
	}
	pool := w.c.db
	exists, err := checkpoint.Registered(ctx, pool, ShadowName(spec.Name))
	if err != nil {
		return err
	}
	if !exists {
		if err := StartRebuild(ctx, pool, p); err != nil {
			if errors.Is(err, checkpoint.ErrUnknownProjection) || errors.Is(err, ErrDependents) {
				return river.JobCancel(err)
			}
			return err
		}
		w.c.log.Info("control: rebuild started", "projection", spec.Name, "schema", ShadowSchema(pool.Schema().String(), spec.Name))
		return river.JobSnooze(w.c.cfg.RebuildCheck)
	}
	switched, err := w.c.trySwitch(ctx, p)
	if err != nil {
		return err
	}
	if !switched {
		return river.JobSnooze(w.c.cfg.RebuildCheck)
	}
	w.c.log.Info("control: rebuild switched in", "projection", spec.Name, "job", job.ID)
	return nil
}

// StartRebuild creates the copy of p's tables in the shadow schema, empties
// it with p.Reset, and registers the shadow projection (same segments, from
// the start, inheriting the live segments' high-water marks). Workers pick it
// up at their next renewal.
func StartRebuild(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, p projectors.Projection) error {
	spec := p.Spec()
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		shadow, schema := ShadowName(spec.Name), ShadowSchema(dbschema.Of(tx).String(), spec.Name)
		if err := checkpoint.Exists(ctx, tx, spec.Name); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE SCHEMA `+pgx.Identifier{schema}.Sanitize()); err != nil {
			return fmt.Errorf("rebuild %s: %w", spec.Name, err)
		}
		tables, err := liveTables(ctx, tx, spec)
		if err != nil {
			return err
		}
		if err := checkDependents(ctx, tx, spec, tables); err != nil {
			return err
		}
		for _, t := range spec.Tables {
			if _, err := tx.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s (LIKE %s INCLUDING ALL)`,
				pgx.Identifier{schema, t}.Sanitize(), pgx.Identifier{tables[t], t}.Sanitize())); err != nil {
				return fmt.Errorf("rebuild %s: copy table %s: %w", spec.Name, t, err)
			}
		}
		ptx, err := dbschema.Projection(ctx, tx, schema)
		if err != nil {
			return err
		}
		if err := p.Reset(ctx, ptx); err != nil {
			return fmt.Errorf("rebuild %s: reset the copy: %w", spec.Name, err)
		}
		if err := checkpoint.RegisterShadow(ctx, tx, shadow, spec.Name, schema); err != nil {
			return fmt.Errorf("rebuild %s: %w", spec.Name, err)
		}
		return nil
	})
}

// liveTables finds the schema of each of the projection's tables as its
// code does (dbschema.Projection): readside's schema first, then the
// database's search_path (a projection's tables may be the application's).
func liveTables(ctx context.Context, tx pgx.Tx, spec projectors.Spec) (map[string]string, error) {
	ptx, err := dbschema.Projection(ctx, tx, "")
	if err != nil {
		return nil, err
	}
	// Under the projection's search_path: every name here is qualified.
	rows, err := ptx.Query(ctx, `
SELECT t, (SELECT n.nspname::pg_catalog.text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
            WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.quote_ident(t)))
  FROM pg_catalog.unnest($1::pg_catalog.text[]) t`, spec.Tables)
	if err != nil {
		return nil, fmt.Errorf("rebuild %s: find its tables: %w", spec.Name, err)
	}
	out := map[string]string{}
	for rows.Next() {
		var t string
		var nsp *string
		if err := rows.Scan(&t, &nsp); err != nil {
			return nil, err
		}
		if nsp == nil {
			rows.Close()
			return nil, fmt.Errorf("rebuild %s: table %s does not exist (in schema %s or on the search_path)", spec.Name, t, dbschema.Of(tx))
		}
		out[t] = *nsp
	}
	return out, rows.Err()
}

// CheckRebuild refuses, before a rebuild is queued, a projection whose
// tables are missing or have dependents (ErrDependents).
func CheckRebuild(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, p projectors.Projection) error {
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		tables, err := liveTables(ctx, tx, p.Spec())
		if err != nil {
			return err
		}
		return checkDependents(ctx, tx, p.Spec(), tables)
	})
}
