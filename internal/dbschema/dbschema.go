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
	"math"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Default is the schema readside lives in unless configured otherwise.
const Default Name = "readside"

// Name is a schema name that Parse accepted. The zero value means Default.
type Name string

var nameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,31}$`)

// Parse validates s as a schema for readside's objects. Empty means
// Default. It refuses what would need quoting (upper case, spaces,
// quotes), names longer than 32 bytes (River appends its notification
// topics to the schema name, and a rebuild its copy's projection name,
// within PostgreSQL's 63), and the system schemas.
func Parse(s string) (Name, error) {
	if s == "" {
		return Default, nil
	}
	switch {
	case !nameRE.MatchString(s):
		return "", fmt.Errorf("schema %q: use lower-case letters, digits and underscores, starting with a letter or underscore, at most 32 characters", Clip(s, 64))
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

// rewritten caches rewritten statements; dynamic SQL beyond its size is
// rewritten on every use instead of growing it.
var rewritten struct {
	sync.Mutex
	m map[string]string
}

const rewrittenMax = 4096

// SQL rewrites sql's `readside.` qualifiers to n.
func (n Name) SQL(sql string) string {
	if n.IsDefault() || !strings.Contains(sql, "readside.") {
		return sql
	}
	key := string(n) + "\x00" + sql
	rewritten.Lock()
	s, ok := rewritten.m[key]
	rewritten.Unlock()
	if ok {
		return s
	}
	s = qualifierRE.ReplaceAllString(sql, "${1}"+string(n)+".")
	rewritten.Lock()
	if rewritten.m == nil {
		rewritten.m = map[string]string{}
	}
	if len(rewritten.m) < rewrittenMax {
		rewritten.m[key] = s
	}
	rewritten.Unlock()
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

// Pinning. A name that readside's SQL leaves unqualified (a function such
// as cardinality or unnest, an operator, a type such as text or xid8) is
// looked up on the session's search_path, which readside does not choose:
// a database or role setting, another client's SET on a PgBouncer server
// connection, a function in public whose exact signature beats pg_catalog's
// polymorphic one, a temporary table. So every statement readside sends
// runs with a search_path it sets itself, transaction-local: pg_catalog,
// readside's schema, pg_temp. Outside a transaction the statement is sent
// in one pipeline (an implicit transaction) behind the setting; inside one,
// the first statement is, and the setting holds until the transaction ends
// or a projection's code runs (Projection), after which the next statement
// pins it again. No round trip is added and no session state is left
// behind.

// pinSQL sets the transaction's search_path to $1. Qualified: it is
// resolved before any search_path is trusted.
const pinSQL = `SELECT pg_catalog.set_config('search_path', $1, true)`

// StrictPath is the search_path readside's own statements run with:
// pg_catalog, n, pg_temp (also for a caller that pins it in a pipeline of
// its own).
func (n Name) StrictPath() string { return "pg_catalog, " + n.Ident() + ", pg_temp" }

// noPin are statements that cannot run inside a transaction block, which
// an implicit one is; they name only qualified tables.
func noPin(sql string) bool {
	s := strings.TrimSpace(sql)
	return len(s) >= 6 && strings.EqualFold(s[:6], "VACUUM")
}

// sender is what pinned statements go through: a pool, a connection or a
// transaction.
type sender interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

func (n Name) pinnedExec(ctx context.Context, s sender, sql string, args []any) (pgconn.CommandTag, error) {
	sql = n.SQL(sql)
	if noPin(sql) {
		return s.Exec(ctx, sql, args...)
	}
	if len(args) == 0 {
		// pgx sends an Exec without arguments with the simple protocol,
		// which takes several statements (DDL scripts do): the setting
		// goes first in the same string. The path is identifiers Parse
		// accepted, with no quote of its own.
		return s.Exec(ctx, "SELECT pg_catalog.set_config('search_path', '"+n.StrictPath()+"', true);\n"+sql)
	}
	b := &pgx.Batch{}
	b.Queue(pinSQL, n.StrictPath())
	b.Queue(sql, args...)
	br := s.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		return pgconn.CommandTag{}, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

func (n Name) pinnedQuery(ctx context.Context, s sender, sql string, args []any) (pgx.Rows, error) {
	return n.pinnedQueryWith(ctx, s, pinSQL, sql, args)
}

// genericPinSQL is pinSQL that also has the statement behind it planned
// generically from its first execution (see QueryGeneric).
const genericPinSQL = `SELECT pg_catalog.set_config('search_path', $1, true),
       pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', true)`

// pinnedQueryWith sends sql behind pin, the setting statement taking the
// strict path as $1.
func (n Name) pinnedQueryWith(ctx context.Context, s sender, pin, sql string, args []any) (pgx.Rows, error) {
	b := &pgx.Batch{}
	b.Queue(pin, n.StrictPath())
	b.Queue(n.SQL(sql), args...)
	br := s.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		_ = br.Close()
		return nil, err
	}
	return &batchRows{Rows: rows, br: br}, nil
}

func (n Name) pinnedQueryRow(ctx context.Context, s sender, sql string, args []any) pgx.Row {
	rows, err := n.pinnedQuery(ctx, s, sql, args)
	return &row{rows: rows, err: err}
}

func (n Name) pinnedBatch(ctx context.Context, s sender, b *pgx.Batch) pgx.BatchResults {
	b = n.batch(b)
	pin := &pgx.QueuedQuery{SQL: pinSQL, Arguments: []any{n.StrictPath()}}
	b.QueuedQueries = append([]*pgx.QueuedQuery{pin}, b.QueuedQueries...)
	return &pinnedResults{BatchResults: s.SendBatch(ctx, b)}
}

// batchRows are a query's rows sent behind the setting: closing them ends
// the pipeline.
type batchRows struct {
	pgx.Rows
	br     pgx.BatchResults
	closed bool
}

func (r *batchRows) Close() {
	r.Rows.Close()
	if !r.closed {
		r.closed = true
		_ = r.br.Close()
	}
}

func (r *batchRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.Close()
	return false
}

// row is QueryRow's answer over batchRows, as pgx's own: ErrNoRows when
// there is none.
type row struct {
	rows pgx.Rows
	err  error
}

func (r *row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	defer r.rows.Close()
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}

// pinnedResults skips the results of the statements readside put before
// the caller's (the setting; in BeginBatch, the BEGIN too) before the
// caller's first.
type pinnedResults struct {
	pgx.BatchResults
	skipped bool
	extra   int // statements before the setting
	err     error
}

func (r *pinnedResults) skip() error {
	if !r.skipped {
		r.skipped = true
		for range r.extra + 1 {
			if _, r.err = r.BatchResults.Exec(); r.err != nil {
				break
			}
		}
	}
	return r.err
}

func (r *pinnedResults) Exec() (pgconn.CommandTag, error) {
	if err := r.skip(); err != nil {
		return pgconn.CommandTag{}, err
	}
	return r.BatchResults.Exec()
}

func (r *pinnedResults) Query() (pgx.Rows, error) {
	if err := r.skip(); err != nil {
		return nil, err
	}
	return r.BatchResults.Query()
}

func (r *pinnedResults) QueryRow() pgx.Row {
	if err := r.skip(); err != nil {
		return &row{err: err}
	}
	return r.BatchResults.QueryRow()
}

// QueryGeneric is h.Query, with the statement planned generically from its
// first execution where that can be set for it alone: on a pool or a
// connection, in the same implicit transaction as readside's search_path.
// In a caller's transaction (a pgx.Tx) it is h.Query: the transaction
// keeps its own settings.
//
// For a statement every connection prepares and that PostgreSQL would
// otherwise plan for its parameters on each connection's first five
// executions, when the generic plan is the one it settles on anyway
// (outbox.Fetch: a many-branch UNION, about 10 ms to plan).
func QueryGeneric(ctx context.Context, h interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}, sql string, args ...any) (pgx.Rows, error) {
	switch h := h.(type) {
	case pgx.Tx:
		return h.Query(ctx, sql, args...)
	case *Pool:
		return h.n.pinnedQueryWith(ctx, h.Pool, genericPinSQL, sql, args)
	case *Conn:
		return h.n.pinnedQueryWith(ctx, h.Conn, genericPinSQL, sql, args)
	case sender:
		return Default.pinnedQueryWith(ctx, h, genericPinSQL, sql, args)
	}
	return h.Query(ctx, sql, args...)
}

// Pool is a pool whose statements run in n, each with readside's
// search_path pinned.
type Pool struct {
	*pgxpool.Pool
	n Name
}

// Pool wraps p so that its statements and transactions run in n.
func (n Name) Pool(p *pgxpool.Pool) *Pool { return &Pool{Pool: p, n: n} }

// Schema is the pool's schema.
func (p *Pool) Schema() Name { return p.n }

func (p *Pool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return p.n.pinnedExec(ctx, p.Pool, sql, args)
}

func (p *Pool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return p.n.pinnedQuery(ctx, p.Pool, sql, args)
}

func (p *Pool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return p.n.pinnedQueryRow(ctx, p.Pool, sql, args)
}

func (p *Pool) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return p.n.pinnedBatch(ctx, p.Pool, b)
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

// Tx wraps tx so that its statements run in n with readside's search_path
// pinned (see Projection for handing tx to a projection).
func (n Name) Tx(tx pgx.Tx) pgx.Tx {
	if tx == nil {
		return nil
	}
	if t, ok := tx.(*schemaTx); ok {
		if t.n == n {
			return t
		}
		return &schemaTx{Tx: t.Tx, n: n, st: t.st}
	}
	return &schemaTx{Tx: tx, n: n, st: &txState{}}
}

// txState is shared by a transaction and its savepoints.
type txState struct {
	pinned    bool   // readside's search_path is set
	projected bool   // a projection's search_path is set, with first
	first     string // (see Projection)
}

type schemaTx struct {
	pgx.Tx
	n  Name
	st *txState
}

func (t *schemaTx) Schema() Name { return t.n }

func (t *schemaTx) Begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := t.Tx.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &schemaTx{Tx: tx, n: t.n, st: t.st}, nil
}

// Rollback of a savepoint undoes a setting made inside it.
func (t *schemaTx) Rollback(ctx context.Context) error {
	t.st.pinned, t.st.projected = false, false
	return t.Tx.Rollback(ctx)
}

func (t *schemaTx) pin() bool {
	if t.st.pinned {
		return false
	}
	t.st.pinned, t.st.projected = true, false
	return true
}

func (t *schemaTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if t.pin() {
		return t.n.pinnedExec(ctx, t.Tx, sql, args)
	}
	return t.Tx.Exec(ctx, t.n.SQL(sql), args...)
}

func (t *schemaTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if t.pin() {
		return t.n.pinnedQuery(ctx, t.Tx, sql, args)
	}
	return t.Tx.Query(ctx, t.n.SQL(sql), args...)
}

func (t *schemaTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if t.pin() {
		return t.n.pinnedQueryRow(ctx, t.Tx, sql, args)
	}
	return t.Tx.QueryRow(ctx, t.n.SQL(sql), args...)
}

func (t *schemaTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if t.pin() {
		return t.n.pinnedBatch(ctx, t.Tx, b)
	}
	return t.Tx.SendBatch(ctx, t.n.batch(b))
}

func (t *schemaTx) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	return t.Tx.CopyFrom(ctx, t.n.ident(table), cols, src)
}

func (t *schemaTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	return t.Tx.Prepare(ctx, name, t.n.SQL(sql))
}

// BeginBatch begins a transaction on c in the round trip of its first
// batch, b (pgx's Batch.BeginTx): BEGIN, readside's search_path, b's
// statements and, when project, the search_path under which a
// projection's code runs (first as in Projection) go in one pipeline.
// The results returned are b's, then (when project) the setting's, read
// with ReadProjection; close them before using the transaction. The
// transaction runs in n, and gives c back to its pool when it commits or
// rolls back (also when the BEGIN failed: then it is closed, and Rollback
// returns an error wrapping pgx.ErrTxClosed).
//
// settings are set for the transaction in the statement that sets
// readside's search_path: one statement fewer than a set_config of their
// own in b.
func (n Name) BeginBatch(ctx context.Context, c *pgxpool.Conn, b *pgx.Batch, project bool, first string, settings ...Setting) (pgx.Tx, pgx.BatchResults) {
	nb := &pgx.Batch{}
	nb.BeginTx(pgx.TxOptions{})
	pin, args := pinWith(n.StrictPath(), settings)
	nb.Queue(pin, args...)
	nb.QueuedQueries = append(nb.QueuedQueries, n.batch(b).QueuedQueries...)
	st := &txState{pinned: true}
	if project {
		sql, args := projectionSetting(c.Conn(), n, first)
		nb.Queue(sql, args...)
		st = &txState{projected: true, first: first}
	}
	br := c.SendBatch(ctx, nb)
	tx := &connTx{Tx: br.Tx(), c: c}
	return &schemaTx{Tx: tx, n: n, st: st}, &pinnedResults{BatchResults: br, extra: 1}
}

// ReadBegin reads the results of what BeginBatch sends before b's
// statements (the BEGIN, readside's search_path and the settings) and
// returns their error as it is, before the caller reads b's first result
// (which would otherwise carry it, labelled as that statement's).
func ReadBegin(res pgx.BatchResults) error {
	if r, ok := res.(*pinnedResults); ok {
		return r.skip()
	}
	return nil
}

// MaxTimeout is the longest timeout setting PostgreSQL takes
// (lock_timeout, statement_timeout, idle_in_transaction_session_timeout):
// 2^31-1 ms, about 24.8 days. A longer one makes every transaction that
// sets it fail.
const MaxTimeout = math.MaxInt32 * time.Millisecond

// Setting is a setting BeginBatch makes for its transaction alone.
type Setting struct{ Name, Value string }

// pinWith is pinSQL that also makes settings, and its arguments.
func pinWith(path string, settings []Setting) (string, []any) {
	if len(settings) == 0 {
		return pinSQL, []any{path}
	}
	var sql strings.Builder
	sql.WriteString(pinSQL)
	args := []any{path}
	for _, st := range settings {
		fmt.Fprintf(&sql, ", pg_catalog.set_config($%d, $%d, true)", len(args)+1, len(args)+2)
		args = append(args, st.Name, st.Value)
	}
	return sql.String(), args
}

// connTx is a transaction that gives its pool connection back when it
// ends.
type connTx struct {
	pgx.Tx
	c *pgxpool.Conn
}

func (t *connTx) Commit(ctx context.Context) error {
	defer t.release()
	return t.Tx.Commit(ctx)
}

func (t *connTx) Rollback(ctx context.Context) error {
	defer t.release()
	return t.Tx.Rollback(ctx)
}

func (t *connTx) release() {
	if t.c != nil {
		t.c.Release()
		t.c = nil
	}
}

// Conn is a connection whose statements run in n, each with readside's
// search_path pinned.
type Conn struct {
	*pgx.Conn
	n Name
}

// Conn wraps c so that its statements and transactions run in n.
func (n Name) Conn(c *pgx.Conn) *Conn { return &Conn{Conn: c, n: n} }

// Schema is the connection's schema.
func (c *Conn) Schema() Name { return c.n }

func (c *Conn) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return c.n.pinnedExec(ctx, c.Conn, sql, args)
}

func (c *Conn) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return c.n.pinnedQuery(ctx, c.Conn, sql, args)
}

func (c *Conn) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return c.n.pinnedQueryRow(ctx, c.Conn, sql, args)
}

func (c *Conn) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return c.n.pinnedBatch(ctx, c.Conn, b)
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

// projectionPathSQL sets the search_path of a projection's code: pg_catalog,
// readside's schema (after a rebuild's copy's, when given), then the
// session's default search_path (the database's or role's setting, not a
// SET another client left on a pooled connection), then pg_temp. Every
// name in it is qualified. It returns the default too: pg_settings builds
// every setting of the server to show one (0.7 ms a call, measured in
// pg_stat_statements at 1000 events/s), so a connection reads it once and
// keeps it (resetPathKey) for projectionSetSQL.
const projectionPathSQL = `SELECT pg_catalog.set_config('search_path', pg_catalog.concat_ws(', ', 'pg_catalog', $1::pg_catalog.text,
    CASE WHEN r.v OPERATOR(pg_catalog.=) '' THEN NULL ELSE r.v END, 'pg_temp'), true), r.v
  FROM (SELECT (SELECT s.reset_val FROM pg_catalog.pg_settings s WHERE s.name OPERATOR(pg_catalog.=) 'search_path') AS v) r`

// projectionSetSQL sets the path projectionPathSQL would, from the default
// the connection read before ($1 is the whole path).
const projectionSetSQL = `SELECT pg_catalog.set_config('search_path', $1, true), NULL::pg_catalog.text`

// resetPathKey holds, in a connection's CustomData, the session's default
// search_path that projectionPathSQL read on it. A session's default
// changes only when the server's configuration file is reloaded with a
// new search_path; a new ALTER ROLE or ALTER DATABASE ... SET search_path
// reaches new sessions only, and through PgBouncer a client connection's
// later server sessions are new ones. Either way a connection keeps the
// default it read until it is replaced (pgxpool's MaxConnLifetime, an
// hour by default): projection code that relies on the default part of
// its path sees such a change within the hour, not at once.
const resetPathKey = "readside/dbschema.resetPath"

// projectionSetting is the statement that sets a projection's search_path
// on tx's connection, with its arguments.
func projectionSetting(c *pgx.Conn, n Name, first string) (string, []any) {
	p := n.Ident()
	if first != "" {
		p = pgx.Identifier{first}.Sanitize() + ", " + p
	}
	if c != nil {
		if reset, ok := c.PgConn().CustomData()[resetPathKey].(string); ok {
			parts := []string{"pg_catalog", p}
			if reset != "" {
				parts = append(parts, reset)
			}
			return projectionSetSQL, []any{strings.Join(append(parts, "pg_temp"), ", ")}
		}
	}
	return projectionPathSQL, []any{p}
}

// readProjectionSetting reads what projectionSetting's statement returned
// and keeps the default it read, if it read one, on c.
func readProjectionSetting(c *pgx.Conn, row pgx.Row) error {
	var path string
	var reset *string
	if err := row.Scan(&path, &reset); err != nil {
		return err
	}
	if reset != nil && c != nil {
		c.PgConn().CustomData()[resetPathKey] = *reset
	}
	return nil
}

// ReadProjection reads, from the results of a BeginBatch that set a
// projection's search_path, the setting's result.
func ReadProjection(res pgx.BatchResults, tx pgx.Tx) error {
	return readProjectionSetting(wrapped(tx).Tx.Conn(), res.QueryRow())
}

// wrapped is tx as a schemaTx (Default's when readside did not wrap it).
func wrapped(tx pgx.Tx) *schemaTx {
	if t, ok := tx.(*schemaTx); ok {
		return t
	}
	return Default.Tx(tx).(*schemaTx)
}

// Projection sets tx's search_path for a projection's code, under which
// its unqualified names mean its tables in readside's schema (first, a
// rebuild's copy, before it), else what the database's own search_path
// finds, and returns the transaction to hand the projection: tx
// unwrapped, so that its SQL is its own. readside's next statement on tx
// pins readside's search_path again. A setting already in place
// (BeginBatch, an earlier call) is not sent again.
func Projection(ctx context.Context, tx pgx.Tx, first string) (pgx.Tx, error) {
	t := wrapped(tx)
	if t.st.projected && t.st.first == first {
		return t.Tx, nil
	}
	t.st.pinned, t.st.projected = false, false
	sql, args := projectionSetting(t.Tx.Conn(), t.n, first)
	if err := readProjectionSetting(t.Tx.Conn(), t.Tx.QueryRow(ctx, sql, args...)); err != nil {
		return nil, err
	}
	t.st.projected, t.st.first = true, first
	return t.Tx, nil
}

// Of is the schema of a handle that Pool, Tx, Conn or Handle made, and
// Default for any other handle (whose statements run unchanged).
func Of(h any) Name {
	if s, ok := h.(interface{ Schema() Name }); ok {
		return s.Schema()
	}
	return Default
}

// Clip shortens s to at most n bytes for an error message, marking the cut.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
