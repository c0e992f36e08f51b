// Package dbschema puts readside's SQL into the schema the user named.
//
// readside's statements name its objects qualified by the default schema,
// `readside.events`, `readside.checkpoints`, so that no statement depends
// on the caller's search_path (an application's own `events` table, a URL's
// `?search_path=`, a PgBouncer server connection left with another
// client's setting). A Name other than Default rewrites those qualifiers on
// the way to the server: the handles returned by Pool, Tx and Conn do it for
// every statement they send (as River's driver templates its schema), and
// do nothing at all for the default. Names are restricted to lower-case
// SQL identifiers, so a rewritten name never needs quoting, also inside a
// string literal such as to_regclass('readside.events').
package dbschema

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Default is the schema readside lives in unless configured otherwise.
const Default Name = "readside"

// Name is a schema name that Parse accepted. The zero value means Default.
type Name string

var nameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,47}$`)

// Parse validates s as a schema for readside's objects. Empty means
// Default. It refuses what would need quoting (upper case, spaces,
// quotes), names longer than 48 bytes (River appends its notification
// topics to the schema name within PostgreSQL's 63), and the system
// schemas.
func Parse(s string) (Name, error) {
	if s == "" {
		return Default, nil
	}
	switch {
	case !nameRE.MatchString(s):
		return "", fmt.Errorf("schema %q: use lower-case letters, digits and underscores, starting with a letter or underscore, at most 48 characters", Clip(s, 64))
	case strings.HasPrefix(s, "pg_") || s == "information_schema":
		return "", fmt.Errorf("schema %q is a system schema", s)
	}
	return Name(s), nil
}

// String is the schema's name, Default for the zero value.
func (n Name) String() string {
	if n == "" {
		return string(Default)
	}
	return string(n)
}

// Ident is the name as an SQL identifier.
func (n Name) Ident() string { return pgx.Identifier{n.String()}.Sanitize() }

// IsDefault reports whether statements need no rewriting.
func (n Name) IsDefault() bool { return n == "" || n == Default }

// qualifierRE finds the default schema's qualifier where an identifier may
// start: not inside another identifier (my_readside.x) and not a setting
// name's tail (x.readside.y).
var qualifierRE = regexp.MustCompile(`(^|[^A-Za-z0-9_$."])readside\.`)

var rewritten sync.Map // Name + "\x00" + sql → rewritten sql

// SQL rewrites sql's `readside.` qualifiers to n.
func (n Name) SQL(sql string) string {
	if n.IsDefault() || !strings.Contains(sql, "readside.") {
		return sql
	}
	key := string(n) + "\x00" + sql
	if s, ok := rewritten.Load(key); ok {
		return s.(string)
	}
	s := qualifierRE.ReplaceAllString(sql, "${1}"+string(n)+".")
	rewritten.Store(key, s)
	return s
}

func (n Name) batch(b *pgx.Batch) *pgx.Batch {
	if n.IsDefault() || b == nil {
		return b
	}
	for _, q := range b.QueuedQueries {
		q.SQL = n.SQL(q.SQL)
	}
	return b
}

func (n Name) ident(id pgx.Identifier) pgx.Identifier {
	if n.IsDefault() || len(id) != 2 || id[0] != string(Default) {
		return id
	}
	return pgx.Identifier{string(n), id[1]}
}

// Pool is a pool whose statements run in n. It is the pool itself for the
// default schema, so Pool(p) costs nothing there.
type Pool struct {
	*pgxpool.Pool
	n Name
}

// Pool wraps p so that its statements and transactions run in n.
func (n Name) Pool(p *pgxpool.Pool) *Pool { return &Pool{Pool: p, n: n} }

// Schema is the pool's schema.
func (p *Pool) Schema() Name { return p.n }

func (p *Pool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return p.Pool.Exec(ctx, p.n.SQL(sql), args...)
}

func (p *Pool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return p.Pool.Query(ctx, p.n.SQL(sql), args...)
}

func (p *Pool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return p.Pool.QueryRow(ctx, p.n.SQL(sql), args...)
}

func (p *Pool) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return p.Pool.SendBatch(ctx, p.n.batch(b))
}

func (p *Pool) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	return p.Pool.CopyFrom(ctx, p.n.ident(table), cols, src)
}

func (p *Pool) Begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := p.Pool.Begin(ctx)
	return p.n.Tx(tx), err
}

func (p *Pool) BeginTx(ctx context.Context, o pgx.TxOptions) (pgx.Tx, error) {
	tx, err := p.Pool.BeginTx(ctx, o)
	return p.n.Tx(tx), err
}

// Tx wraps tx so that its statements run in n; for the default schema it is
// tx itself.
func (n Name) Tx(tx pgx.Tx) pgx.Tx {
	if tx == nil || n.IsDefault() {
		return tx
	}
	if t, ok := tx.(*schemaTx); ok {
		tx = t.Tx
	}
	return &schemaTx{Tx: tx, n: n}
}

type schemaTx struct {
	pgx.Tx
	n Name
}

func (t *schemaTx) Schema() Name { return t.n }

func (t *schemaTx) Begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := t.Tx.Begin(ctx)
	return t.n.Tx(tx), err
}

func (t *schemaTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return t.Tx.Exec(ctx, t.n.SQL(sql), args...)
}

func (t *schemaTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return t.Tx.Query(ctx, t.n.SQL(sql), args...)
}

func (t *schemaTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return t.Tx.QueryRow(ctx, t.n.SQL(sql), args...)
}

func (t *schemaTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return t.Tx.SendBatch(ctx, t.n.batch(b))
}

func (t *schemaTx) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	return t.Tx.CopyFrom(ctx, t.n.ident(table), cols, src)
}

func (t *schemaTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	return t.Tx.Prepare(ctx, name, t.n.SQL(sql))
}

// Conn is a connection whose statements run in n.
type Conn struct {
	*pgx.Conn
	n Name
}

// Conn wraps c so that its statements and transactions run in n.
func (n Name) Conn(c *pgx.Conn) *Conn { return &Conn{Conn: c, n: n} }

// Schema is the connection's schema.
func (c *Conn) Schema() Name { return c.n }

func (c *Conn) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return c.Conn.Exec(ctx, c.n.SQL(sql), args...)
}

func (c *Conn) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return c.Conn.Query(ctx, c.n.SQL(sql), args...)
}

func (c *Conn) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return c.Conn.QueryRow(ctx, c.n.SQL(sql), args...)
}

func (c *Conn) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return c.Conn.SendBatch(ctx, c.n.batch(b))
}

func (c *Conn) Begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := c.Conn.Begin(ctx)
	return c.n.Tx(tx), err
}

func (c *Conn) BeginTx(ctx context.Context, o pgx.TxOptions) (pgx.Tx, error) {
	tx, err := c.Conn.BeginTx(ctx, o)
	return c.n.Tx(tx), err
}

// DB is the handle shape readside's packages take (outbox.DB).
type DB interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// SearchPath is what readside puts first on the search_path (SET LOCAL) of
// the transactions that run projections' SQL, whose unqualified names then
// mean their tables in n (a rebuild's copies in first, when given), and
// otherwise what the connection's own search_path finds (a projection's
// tables in the application's schema). SetSearchPath applies it.
func (n Name) SearchPath(first string) string {
	p := n.Ident()
	if first != "" {
		p = pgx.Identifier{first}.Sanitize() + ", " + p
	}
	return p
}

// SearchPathSQL sets, for the rest of the transaction, the search_path
// that SearchPath ($1) begins.
const SearchPathSQL = `SELECT set_config('search_path', concat_ws(', ', $1::text, nullif(current_setting('search_path'), '')), true)`

// Of is the schema of a handle that Pool, Tx, Conn or Handle made, and
// Default for any other handle (whose statements run unchanged).
func Of(h any) Name {
	if s, ok := h.(interface{ Schema() Name }); ok {
		return s.Schema()
	}
	return Default
}

// SetSearchPath puts, for the rest of tx, tx's schema (after first, a
// rebuild's copy, when given) before the search_path, so that a
// projection's unqualified names mean its tables.
func SetSearchPath(ctx context.Context, tx DB, first string) error {
	_, err := tx.Exec(ctx, SearchPathSQL, Of(tx).SearchPath(first))
	return err
}

// Clip shortens s to at most n bytes for an error message, marking the cut.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
