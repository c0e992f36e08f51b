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
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/readside/readside/internal/dbschema"
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

// Config says where Migrate puts readside and what else it creates.
type Config struct {
	// Schema holds every object readside and River create: tables,
	// sequences, functions, River's tables. Created when missing. "" means
	// "readside" (dbschema.Default). A database migrated before readside
	// had a schema of its own keeps working with Schema "public".
	Schema string
	// Projections are the DDL of the projections the binary carries
	// (projectors.Schema): run after readside's migrations, in the same
	// transaction, every time, so each must be idempotent (CREATE TABLE IF
	// NOT EXISTS ...). Their unqualified names are created in Schema.
	Projections []DDL
	// Logger receives River's migration log; nil discards it.
	Logger *slog.Logger
	// BesideOtherInstalls lets Migrate install readside in Schema when the
	// database has readside in another schema already. Without it that is
	// refused (ErrOtherInstall): most likely the configuration forgot that
	// schema (a database migrated before readside had a schema of its own
	// is in public).
	BesideOtherInstalls bool
}

// ErrOtherInstall refuses to install readside in a schema when the
// database has it in another one.
var ErrOtherInstall = errors.New("readside is installed in another schema")

// ErrSchemaOwner refuses a schema owned by a role the migrating role is
// not: its owner could drop readside's tables or plant functions where
// readside's code looks.
var ErrSchemaOwner = errors.New("readside's schema is owned by another role")

// DDL is a projection's own SQL.
type DDL struct {
	Projection string
	SQL        string
}

func (c *Config) schema() (dbschema.Name, error) { return dbschema.Parse(c.Schema) }

// Result says what Migrate did.
type Result struct {
	Applied     []Migration // readside migrations applied by this call
	River       []int       // River migration versions applied by this call
	Version     int         // readside schema version after the call
	Projections []string    // projections whose DDL ran
	Created     bool        // the schema was created by this call
}

// Migrate creates cfg.Schema when missing, then applies River's migrations
// and readside's pending migrations in it, then the projections' DDL, under
// an advisory lock. It is idempotent; concurrent callers wait for each
// other and the later ones find nothing to do. A database whose schema is
// newer than this binary is refused with ErrSchemaTooNew. Nothing is
// created outside cfg.Schema, whatever the connection's search_path.
func Migrate(ctx context.Context, pool *pgxpool.Pool, cfg Config) (*Result, error) {
	n, err := cfg.schema()
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	// A session-level lock on a dedicated connection: River's migrations
	// cannot all run in one transaction (enum values must commit before use).
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: connect: %w", err)
	}
	defer pc.Release()
	conn := n.Conn(pc.Conn()) // readside's statements pin their search_path
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(LockKey)); err != nil {
		return nil, fmt.Errorf("migrate: lock: %w", err)
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(LockKey)); err != nil {
			conn.Close(context.WithoutCancel(ctx)) // closing the session releases the lock
		}
	}()

	res := &Result{}
	if res.Created, err = createSchema(ctx, conn, n); err != nil {
		return nil, err
	}
	if err := checkOwner(ctx, conn, n); err != nil {
		return nil, err
	}
	if !cfg.BesideOtherInstalls {
		if err := checkOtherInstalls(ctx, conn, n); err != nil {
			return nil, err
		}
	}
	if _, err := conn.Exec(ctx, n.SQL(`CREATE TABLE IF NOT EXISTS readside.readside_migrations (
		version    integer     PRIMARY KEY,
		name       text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`)); err != nil {
		return nil, fmt.Errorf("migrate: create %s.readside_migrations: %w", n, err)
	}
	current, err := version(ctx, conn, n)
	if err != nil {
		return nil, err
	}
	all := All()
	if current > len(all) {
		return nil, fmt.Errorf("migrate: %w: database is at version %d, this binary knows up to %d; upgrade the binary", ErrSchemaTooNew, current, len(all))
	}

	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Logger: logger, Schema: n.String()})
	if err != nil {
		return nil, fmt.Errorf("migrate: river: %w", err)
	}
	rres, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil)
	if err != nil {
		return nil, fmt.Errorf("migrate: river: %w", err)
	}
	res.Version = current
	for _, v := range rres.Versions {
		res.River = append(res.River, v.Version)
	}

	tx, err := conn.Conn.Begin(ctx) // the migrations' own SQL, unwrapped
	if err != nil {
		return nil, fmt.Errorf("migrate: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// Migrations and projections' DDL name their objects unqualified: they
	// are created in the first schema of this transaction's search_path.
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.set_config('search_path', $1, true)`, n.Ident()); err != nil {
		return nil, fmt.Errorf("migrate: search_path: %w", err)
	}
	for _, m := range all[current:] {
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return nil, fmt.Errorf("migrate: %03d_%s: %w", m.Version, m.Name, err)
		}
		if _, err := tx.Exec(ctx, n.SQL(`INSERT INTO readside.readside_migrations (version, name) VALUES ($1, $2)`), m.Version, m.Name); err != nil {
			return nil, fmt.Errorf("migrate: record %03d: %w", m.Version, err)
		}
		res.Applied = append(res.Applied, m)
		res.Version = m.Version
	}
	for _, d := range cfg.Projections {
		if _, err := tx.Exec(ctx, d.SQL); err != nil {
			return nil, fmt.Errorf("migrate: schema of projection %s: %w", d.Projection, err)
		}
		res.Projections = append(res.Projections, d.Projection)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("migrate: commit: %w", err)
	}
	return res, nil
}

// checkOwner refuses a schema that the migrating role neither owns nor is
// a member of the owner of (pg_database_owner, public's owner, stands for
// the database's owner).
func checkOwner(ctx context.Context, conn *dbschema.Conn, n dbschema.Name) error {
	var owner string
	var ok bool
	// Membership by pg_auth_members only: a superuser is a member of every
	// role for pg_has_role, yet a schema's owner may drop what is in it
	// whoever created it.
	err := conn.QueryRow(ctx, `WITH RECURSIVE mine(role) AS (
		    SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user
		    UNION SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN mine ON m.member = mine.role)
		SELECT r.rolname::text, s.nspowner IN (SELECT role FROM mine)
		       OR (r.rolname = 'pg_database_owner'
		           AND (SELECT d.datdba FROM pg_catalog.pg_database d WHERE d.datname = current_database()) IN (SELECT role FROM mine))
		  FROM pg_catalog.pg_namespace s JOIN pg_catalog.pg_roles r ON r.oid = s.nspowner WHERE s.nspname = $1`, n.String()).Scan(&owner, &ok)
	if err != nil {
		return fmt.Errorf("migrate: owner of schema %s: %w", n, err)
	}
	if !ok {
		return fmt.Errorf("migrate: %w: schema %s is owned by %s, which this role is not a member of; have the schema owned by the role that migrates and runs readside (ALTER SCHEMA %s OWNER TO ...)",
			ErrSchemaOwner, n, owner, n.Ident())
	}
	return nil
}

// otherInstalls are the schemas other than n that hold readside.
func otherInstalls(ctx context.Context, q Querier, n dbschema.Name) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT s.nspname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
		WHERE c.relname = 'readside_migrations' AND c.relkind = 'r' AND s.nspname <> $1 ORDER BY 1`, n.String())
	if err != nil {
		return nil, fmt.Errorf("migrate: find other installs: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// checkOtherInstalls refuses a first install in n beside one in another
// schema.
func checkOtherInstalls(ctx context.Context, conn *dbschema.Conn, n dbschema.Name) error {
	var here bool
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.to_regclass('readside.readside_migrations') IS NOT NULL`).Scan(&here); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if here {
		return nil
	}
	other, err := otherInstalls(ctx, conn, n)
	if err != nil || len(other) == 0 {
		return err
	}
	return fmt.Errorf("migrate: %w: schema %s (not %s); use it with --schema %s (READSIDE_SCHEMA), or install a second readside in %s with --beside-other-installs",
		ErrOtherInstall, strings.Join(other, ", "), n, other[0], n)
}

// createSchema creates n unless it exists (a DBA may have created it and
// granted it to the migrating role, which then needs no CREATE on the
// database).
func createSchema(ctx context.Context, conn *dbschema.Conn, n dbschema.Name) (bool, error) {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)`, n.String()).Scan(&exists); err != nil {
		return false, fmt.Errorf("migrate: %w", err)
	}
	if exists {
		return false, nil
	}
	if _, err := conn.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+n.Ident()); err != nil {
		return false, fmt.Errorf("migrate: create schema %s (or have it created and granted to this role): %w", n, err)
	}
	return true, nil
}

// Querier is the part of pgx used to read the schema version.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func version(ctx context.Context, q Querier, n dbschema.Name) (int, error) {
	var v int
	if err := q.QueryRow(ctx, n.SQL(`SELECT coalesce(max(version), 0) FROM readside.readside_migrations`)).Scan(&v); err != nil {
		return 0, fmt.Errorf("migrate: read version: %w", err)
	}
	return v, nil
}

// Check returns nil when the database is at exactly this binary's schema
// version, ErrNotMigrated (wrapped) when it is behind, and ErrSchemaTooNew
// (wrapped) when it is ahead. Long-running processes call it at start.
// schema is readside's ("" means the default).
func Check(ctx context.Context, q Querier, schema string) error {
	n, err := dbschema.Parse(schema)
	if err != nil {
		return err
	}
	var exists bool
	if err := q.QueryRow(ctx, n.SQL(`SELECT to_regclass('readside.readside_migrations') IS NOT NULL`)).Scan(&exists); err != nil {
		return fmt.Errorf("check schema: %w", err)
	}
	if !exists {
		if other, err := otherInstalls(ctx, q, n); err == nil && len(other) > 0 {
			return fmt.Errorf("%w: readside is not in schema %s but in schema %s: use --schema %s (READSIDE_SCHEMA)", ErrNotMigrated, n, strings.Join(other, ", "), other[0])
		}
		return fmt.Errorf("%w: no readside_migrations table in schema %s; run `projector migrate` (or name the schema readside was installed in: --schema, READSIDE_SCHEMA)", ErrNotMigrated, n)
	}
	v, err := version(ctx, q, n)
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
