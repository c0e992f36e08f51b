// Package migrations holds readside's schema as ordered SQL files and applies
// them, together with River's own migrations, under an advisory lock so that
// any number of fleet members can run it at once.
package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"regexp"
	"sort"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

//go:embed *.up.sql
var files embed.FS

// LockKey is the advisory lock taken while migrating ("readside" in ASCII);
// other schema changes (projector adopt) take it too.
const LockKey = 0x7265616473696465

// ErrSchemaTooNew is returned when the database was migrated by a newer
// binary than this one.
var ErrSchemaTooNew = errors.New("database schema is newer than this binary")

// ErrNotMigrated is returned by Check when migrations are missing.
var ErrNotMigrated = errors.New("database schema is not migrated")

// Migration is one numbered SQL file.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

var fileRE = regexp.MustCompile(`^(\d{3})_([a-z0-9_]+)\.up\.sql$`)

// All returns the embedded migrations in order.
func All() []Migration {
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		panic(err)
	}
	var out []Migration
	for _, e := range entries {
		m := fileRE.FindStringSubmatch(e.Name())
		if m == nil {
			panic("migrations: bad file name " + e.Name())
		}
		v, _ := strconv.Atoi(m[1])
		b, err := files.ReadFile(e.Name())
		if err != nil {
			panic(err)
		}
		out = append(out, Migration{Version: v, Name: m[2], SQL: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i, m := range out {
		if m.Version != i+1 {
			panic(fmt.Sprintf("migrations: version %d out of sequence", m.Version))
		}
	}
	return out
}

// Latest is the schema version this binary expects.
func Latest() int { return len(All()) }

// Result says what Migrate did.
type Result struct {
	Applied []Migration // readside migrations applied by this call
	River   []int       // River migration versions applied by this call
	Version int         // readside schema version after the call
}

// Migrate applies River's migrations and readside's pending migrations in one
// transaction under an advisory lock. It is idempotent; concurrent callers
// wait for each other and the later ones find nothing to do. A database whose
// schema is newer than this binary is refused with ErrSchemaTooNew.
func Migrate(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger) (*Result, error) {
	// A session-level lock on a dedicated connection: River's migrations
	// cannot all run in one transaction (enum values must commit before use).
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: connect: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(LockKey)); err != nil {
		return nil, fmt.Errorf("migrate: lock: %w", err)
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(LockKey)); err != nil {
			conn.Conn().Close(context.WithoutCancel(ctx)) // closing the session releases the lock
		}
	}()

	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS readside_migrations (
		version    integer     PRIMARY KEY,
		name       text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, fmt.Errorf("migrate: create readside_migrations: %w", err)
	}
	current, err := version(ctx, conn)
	if err != nil {
		return nil, err
	}
	all := All()
	if current > len(all) {
		return nil, fmt.Errorf("migrate: %w: database is at version %d, this binary knows up to %d; upgrade the binary", ErrSchemaTooNew, current, len(all))
	}

	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("migrate: river: %w", err)
	}
	rres, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil)
	if err != nil {
		return nil, fmt.Errorf("migrate: river: %w", err)
	}
	res := &Result{Version: current}
	for _, v := range rres.Versions {
		res.River = append(res.River, v.Version)
	}

	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	for _, m := range all[current:] {
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return nil, fmt.Errorf("migrate: %03d_%s: %w", m.Version, m.Name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO readside_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
			return nil, fmt.Errorf("migrate: record %03d: %w", m.Version, err)
		}
		res.Applied = append(res.Applied, m)
		res.Version = m.Version
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("migrate: commit: %w", err)
	}
	return res, nil
}

// Querier is the part of pgx used to read the schema version.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func version(ctx context.Context, q Querier) (int, error) {
	var v int
	if err := q.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM readside_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("migrate: read version: %w", err)
	}
	return v, nil
}

// Check returns nil when the database is at exactly this binary's schema
// version, ErrNotMigrated (wrapped) when it is behind, and ErrSchemaTooNew
// (wrapped) when it is ahead. Long-running processes call it at start.
func Check(ctx context.Context, q Querier) error {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass('readside_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return fmt.Errorf("check schema: %w", err)
	}
	if !exists {
		return fmt.Errorf("%w: no readside_migrations table; run `projector migrate`", ErrNotMigrated)
	}
	v, err := version(ctx, q)
	if err != nil {
		return err
	}
	switch latest := Latest(); {
	case v < latest:
		return fmt.Errorf("%w: database is at version %d, this binary needs %d; run `projector migrate`", ErrNotMigrated, v, latest)
	case v > latest:
		return fmt.Errorf("%w: database is at version %d, this binary knows up to %d; upgrade the binary", ErrSchemaTooNew, v, latest)
	}
	return nil
}
