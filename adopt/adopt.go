package adopt

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/migrations"
)

// Defaults of Config.
const (
	ChunkRowsDefault   = 1000
	LockTimeoutDefault = 2 * time.Second
)

// lockAttempts bounds how often adopt asks again for a lock on the
// application's table that it could not get within LockTimeout.
const lockAttempts = 30

// Config says which table to adopt and how its columns and names map to
// readside's.
type Config struct {
	// Table is the application's events table, "schema.table" or "table"
	// (then the one table of that name outside readside's schema).
	Table string
	// Columns maps readside's names (Keys) to a column of the table or an
	// immutable SQL expression over its columns, evaluated by PostgreSQL
	// as the role that inserts ("split_part(stream, '-', 1)"). A missing
	// key means a column of the same name.
	Columns map[string]string
	// Renames map stored event and aggregate type names to readside's.
	Renames []Rename
	// Schema is readside's schema. "" means "readside".
	Schema string
	// ChunkRows is how many rows of history one backfill transaction
	// copies (a chunk ends at an aggregate's last row). 0 means
	// ChunkRowsDefault.
	ChunkRows int
	// LockTimeout bounds each wait for a lock on the application's table
	// (installing or removing the trigger, starting the backfill's read);
	// the application's inserts queue behind such a wait, so one that
	// times out is given up and tried again after a pause. 0 means
	// LockTimeoutDefault.
	LockTimeout time.Duration
	// Progress, when set, is called as the backfill goes.
	Progress func(Progress)
}

// Progress is how far a backfill has come.
type Progress struct {
	// Read is the rows of Total read, or left to an INSERT that copied
	// their aggregate first; it ends equal to Total.
	Read int64
	// Total is the rows of history the backfill has to read: the table's
	// rows when it starts reading, but those of the aggregates whose
	// history an INSERT of the application's has already copied.
	Total  int64
	Copied int64 // rows copied into readside's log (the others were there)
}

// Result says what Adopt or Remove did (or, for a dry run, would do).
type Result struct {
	Table    string   // the table, schema-qualified
	SQL      string   // the statements run (dry run: to run); empty when there was nothing to do
	Changed  bool     // false when the table was already adopted this way (or, Remove, not adopted)
	History  int64    // rows copied as history by this call
	Rows     int64    // rows of the table checked against readside's rules
	Warnings []string // what the table admits that readside refuses (its INSERTs then fail)
	Granted  []string // roles given EXECUTE on the table's functions (those that may insert)
}

// errNoTable: the table to adopt does not exist.
var errNoTable = errors.New("adopt: no such table")

// ErrInvalid is wrapped by the errors of an adoption the table's rows or
// the mapping do not fit.
var ErrInvalid = errors.New("adopt: the table does not fit readside's rules")

func (c *Config) defaults() {
	c.ChunkRows = cmp.Or(c.ChunkRows, ChunkRowsDefault)
	c.LockTimeout = cmp.Or(c.LockTimeout, LockTimeoutDefault)
}

// plan is an adoption worked out: the table, each key's source, renames.
type plan struct {
	t       *table
	m       mapping
	cols    map[string]*column
	renames []Rename
	mapJSON string // as stored in readside_adoptions.columns
	renJSON string
}

// stored is a table's row in readside_adoptions.
type stored struct {
	columns, renames string
	state            string
	install          string // install_txid
}

// Adopt points readside at cfg.Table:
//
//  1. it checks the mapping (expressions by PostgreSQL itself) and the
//     table's rows against readside's rules, and names the rows and
//     columns that do not fit;
//  2. in a short transaction under the migration lock, it installs the
//     trigger (waiting at most LockTimeout at a time for the table's
//     lock) and grants the table's functions to the roles that may insert;
//  3. it copies the rows already in the table (the history) in chunks of
//     ChunkRows while the application goes on writing: each aggregate's
//     history is copied once, whole and in version order, by the backfill
//     or by the first INSERT that touches the aggregate, before its new
//     rows.
//
// Adopting again with the same mapping does nothing (or finishes a
// backfill that was interrupted); with another mapping it replaces the
// functions and copies what readside's log lacks. With dryRun nothing
// changes: the rows are checked and Result.SQL is what would run.
func Adopt(ctx context.Context, pool *pgxpool.Pool, cfg Config, dryRun bool) (*Result, error) {
	cfg.defaults()
	n, err := dbschema.Parse(cfg.Schema)
	if err != nil {
		return nil, fmt.Errorf("adopt: %w", err)
	}
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("adopt: connect: %w", err)
	}
	defer pc.Release()
	conn := pc.Conn()
	if err := migrations.Check(ctx, n.Conn(conn), n.String()); err != nil {
		return nil, fmt.Errorf("adopt: %w", err)
	}
	p, st, err := makePlan(ctx, conn, n, cfg)
	if err != nil {
		return nil, err
	}
	res := &Result{Table: p.t.name}
	same := st != nil && jsonEqual(st.columns, p.mapJSON) && jsonEqual(st.renames, p.renJSON)
	var roles, missing []string
	err = inTx(ctx, conn, cfg.LockTimeout, func(tx pgx.Tx) error {
		var err error
		if same {
			if same, err = hasTriggers(ctx, tx, p.t); err != nil {
				return err
			}
		}
		if roles, err = p.inserters(ctx, tx); err != nil {
			return err
		}
		if same {
			missing, err = p.ungranted(ctx, tx, roles)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	switch {
	case !same:
		if res.Rows, res.Warnings, err = p.validate(ctx, conn, cfg.LockTimeout); err != nil {
			return nil, err
		}
		res.SQL, res.Changed, res.Granted = p.installScript(roles), true, roles
		if dryRun {
			return res, nil
		}
		if err := p.install(ctx, conn, cfg.LockTimeout, roles); err != nil {
			return nil, err
		}
	default:
		if len(missing) > 0 {
			res.SQL, res.Changed, res.Granted = p.grantSQL(missing), true, missing
			if !dryRun {
				if err := inTx(ctx, conn, cfg.LockTimeout, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctx, res.SQL)
					return err
				}); err != nil {
					return nil, fmt.Errorf("adopt %s: grant: %w", p.t.name, err)
				}
			}
		}
		if st.state == "adopted" || dryRun {
			if dryRun && st.state != "adopted" {
				res.SQL += "-- the backfill of " + p.t.name + " would resume\n"
				res.Changed = true
			}
			return res, nil
		}
		res.Changed = true
	}
	pc.Release()
	copied, err := p.backfill(ctx, pool, cfg)
	res.History = copied
	if err != nil {
		return res, err
	}
	return res, nil
}

// makePlan resolves the table and the mapping and reads what is stored.
func makePlan(ctx context.Context, conn *pgx.Conn, n dbschema.Name, cfg Config) (*plan, *stored, error) {
	var p *plan
	var st *stored
	err := inTx(ctx, conn, cfg.LockTimeout, func(tx pgx.Tx) error {
		t, err := resolve(ctx, tx, cfg.Table, n.String())
		if err != nil {
			return err
		}
		p = &plan{t: t, renames: cfg.Renames}
		if p.renames == nil {
			p.renames = []Rename{}
		}
		if p.cols, err = tableColumns(ctx, tx, t); err != nil {
			return err
		}
		if p.m, err = resolveMapping(ctx, tx, t, cfg.Columns); err != nil {
			return err
		}
		given := map[string]string{}
		for _, k := range Keys {
			if s := p.m[k]; s != nil && s.given != "" {
				given[k] = s.given
			} else if s != nil && s.column != k {
				given[k] = s.column
			}
		}
		mj, _ := json.Marshal(given)
		rj, _ := json.Marshal(p.renames)
		p.mapJSON, p.renJSON = string(mj), string(rj)
		var s stored
		err = tx.QueryRow(ctx, n.SQL(`SELECT columns::text, renames::text, state, coalesce(install_txid::text, '')
			FROM readside.readside_adoptions WHERE table_name = $1`), t.name).Scan(&s.columns, &s.renames, &s.state, &s.install)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return fmt.Errorf("adopt: read stored mapping: %w", err)
		default:
			st = &s
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return p, st, nil
}

func hasTriggers(ctx context.Context, tx pgx.Tx, t *table) (bool, error) {
	var ok bool
	err := tx.QueryRow(ctx, `SELECT count(*) = $3 FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = ANY($2)`,
		t.oid, t.triggers(), len(t.triggers())).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("adopt: %w", err)
	}
	return ok, nil
}

// triggers are the triggers adopt puts on t.
func (t *table) triggers() []string {
	if t.partitioned {
		return triggerNames
	}
	return triggerNames[:4]
}

// inserters are the roles that may insert into the table (the owner unless
// it revoked itself, grantees, PUBLIC), quoted.
func (p *plan) inserters(ctx context.Context, tx pgx.Tx) ([]string, error) {
	rows, err := tx.Query(ctx, `SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END
		  FROM pg_catalog.pg_class c
		 CROSS JOIN LATERAL pg_catalog.aclexplode(coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
		  LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
		 WHERE c.oid = $1 AND a.privilege_type = 'INSERT' AND (a.grantee = 0 OR NOT r.rolsuper)
		 ORDER BY 1`, p.t.oid)
	if err != nil {
		return nil, fmt.Errorf("adopt: who may insert into %s: %w", p.t.name, err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// ungranted are the roles of roles that lack EXECUTE on the table's
// functions (a role granted INSERT after adoption).
func (p *plan) ungranted(ctx context.Context, tx pgx.Tx, roles []string) ([]string, error) {
	f := functionsOf(p.t)
	var out []string
	for _, r := range roles {
		var ok bool
		q := `SELECT pg_catalog.has_function_privilege($1::regrole, $2::regprocedure, 'EXECUTE') AND pg_catalog.has_schema_privilege($1::regrole, $3, 'USAGE')`
		args := []any{r, f.appendSig, p.t.readside}
		if r == "PUBLIC" {
			q = `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a WHERE p.oid = $1::regprocedure AND a.grantee = 0)`
			args = args[1:2]
		}
		if err := tx.QueryRow(ctx, q, args...).Scan(&ok); err != nil {
			return nil, fmt.Errorf("adopt: privileges of %s: %w", r, err)
		}
		if !ok {
			out = append(out, r)
		}
	}
	return out, nil
}

// installScript is what install runs.
func (p *plan) installScript(roles []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "-- readside adopt %s: copy each new row into %s\n", p.t.name, pgx.Identifier{p.t.readside, "events"}.Sanitize())
	fmt.Fprintf(&b, "LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE; -- waits at most the lock timeout, then tries again\n", p.t.ident)
	b.WriteString(p.definerSQL())
	b.WriteString(p.copierSQL(true))
	fmt.Fprintf(&b, "REVOKE ALL ON FUNCTION %s() FROM PUBLIC;\n", functionsOf(p.t).copier)
	b.WriteString(p.grantSQL(roles))
	b.WriteString(p.triggersSQL())
	fmt.Fprintf(&b, `INSERT INTO %s (table_name, columns, renames, function_name, history_events, state, install_txid)
VALUES (%s, %s, %s, %s, 0, 'backfilling', pg_current_xact_id())
ON CONFLICT (table_name) DO UPDATE
   SET columns = excluded.columns, renames = excluded.renames, function_name = excluded.function_name,
       state = 'backfilling', install_txid = excluded.install_txid, updated_at = now();
DELETE FROM %s WHERE table_name = %s;
-- then the history is copied in chunks (the backfill) and the trigger's function loses its claims
`, pgx.Identifier{p.t.readside, "readside_adoptions"}.Sanitize(), literal(p.t.name), literal(p.mapJSON), literal(p.renJSON),
		literal(functionsOf(p.t).copier), pgx.Identifier{p.t.readside, "readside_adoption_claims"}.Sanitize(), literal(p.t.name))
	return b.String()
}

// install runs the install script in one transaction under the migration
// lock, with the table's lock taken first.
func (p *plan) install(ctx context.Context, conn *pgx.Conn, lockTimeout time.Duration, roles []string) error {
	return migrationLocked(ctx, conn, func() error {
		return retryLock(ctx, p.t, lockTimeout, func() error {
			return inTx(ctx, conn, lockTimeout, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `LOCK TABLE `+p.t.ident+` IN SHARE ROW EXCLUSIVE MODE`); err != nil {
					return err
				}
				if err := p.checkTypes(ctx, tx); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, p.installScript(roles)); err != nil {
					return fmt.Errorf("adopt %s: %w", p.t.name, err)
				}
				return nil
			})
		})
	})
}

// setLocal fixes, for the rest of the transaction, its lock and statement
// timeouts (0: none) and its search_path (pg_catalog, pg_temp: adopt's SQL
// names readside's tables qualified, and a name it leaves unqualified, a
// function or an operator, must not resolve to one a database or role
// setting puts first) rather than inheriting the session's. Call it first.
func setLocal(ctx context.Context, tx pgx.Tx, lockTimeout, statementTimeout time.Duration) error {
	_, err := tx.Exec(ctx, `SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true),
		pg_catalog.set_config('lock_timeout', $1, true), pg_catalog.set_config('statement_timeout', $2, true),
		pg_catalog.set_config('idle_in_transaction_session_timeout', '0', true)`,
		fmt.Sprintf("%dms", lockTimeout.Milliseconds()), fmt.Sprintf("%dms", statementTimeout.Milliseconds()))
	if err != nil {
		return fmt.Errorf("adopt: %w", err)
	}
	return nil
}

// statementTimeout bounds each statement of adopt's short transactions
// (install, a chunk, bookkeeping); the backfill's read of the whole history
// has none.
const statementTimeout = time.Minute

// inTx runs f in a READ COMMITTED transaction of conn that setLocal set up.
func inTx(ctx context.Context, conn *pgx.Conn, lockTimeout time.Duration, f func(pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		if err := setLocal(ctx, tx, lockTimeout, statementTimeout); err != nil {
			return err
		}
		return f(tx)
	})
}

// checkTypes refuses when a column the mapping reads changed type since
// the mapping was resolved (call it holding a lock on the table).
func (p *plan) checkTypes(ctx context.Context, tx pgx.Tx) error {
	var names, typs []string
	for _, c := range p.m.typeChecks(p.cols) {
		names, typs = append(names, c[0]), append(typs, c[1])
	}
	var name string
	err := tx.QueryRow(ctx, `SELECT e.name FROM unnest($2::text[], $3::oid[]) AS e(name, typ)
		LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = $1 AND a.attname = e.name AND a.attnum > 0 AND NOT a.attisdropped
		WHERE a.atttypid IS DISTINCT FROM e.typ LIMIT 1`, p.t.oid, names, typs).Scan(&name)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("adopt: %w", err)
	}
	return fmt.Errorf("adopt: column %s.%s changed type while adopting; run adopt again", p.t.name, name)
}

// isLockTimeout: the statement gave up waiting for a lock (55P03).
func isLockTimeout(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55P03"
}

// retryLock runs f again while it fails for want of the table's lock,
// pausing in between so that the application's queued statements run.
func retryLock(ctx context.Context, t *table, lockTimeout time.Duration, f func() error) error {
	for attempt := 1; ; attempt++ {
		err := f()
		if !isLockTimeout(err) {
			return err
		}
		if attempt == lockAttempts {
			return fmt.Errorf("adopt: could not lock %s within %s in %d attempts (a long transaction holds it; see pg_locks): %w", t.name, lockTimeout, attempt, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(time.Duration(attempt)*250*time.Millisecond, 5*time.Second)):
		}
	}
}

// migrationLocked runs f holding the migration lock (a session lock on
// conn), taken by every schema change.
func migrationLocked(ctx context.Context, conn *pgx.Conn, f func() error) error {
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_advisory_lock($1)`, int64(migrations.LockKey)); err != nil {
		return fmt.Errorf("adopt: lock: %w", err)
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), `SELECT pg_catalog.pg_advisory_unlock($1)`, int64(migrations.LockKey)); err != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	return f()
}

// Remove drops the triggers and functions from an adopted table and
// forgets the mapping. Events already copied stay in readside's log (it is
// append-only). Adopting the table again later copies what the log lacks.
func Remove(ctx context.Context, pool *pgxpool.Pool, schema, name string, dryRun bool) (*Result, error) {
	n, err := dbschema.Parse(schema)
	if err != nil {
		return nil, fmt.Errorf("adopt: %w", err)
	}
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("adopt: connect: %w", err)
	}
	defer pc.Release()
	conn := pc.Conn()
	if err := migrations.Check(ctx, n.Conn(conn), n.String()); err != nil {
		return nil, fmt.Errorf("adopt: %w", err)
	}
	var res *Result
	err = migrationLocked(ctx, conn, func() error {
		return retryLock(ctx, &table{name: name}, LockTimeoutDefault, func() error {
			return inTx(ctx, conn, LockTimeoutDefault, func(tx pgx.Tx) error {
				t, err := resolve(ctx, tx, name, n.String())
				if err != nil {
					return err
				}
				res = &Result{Table: t.name}
				var adopted bool
				if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+pgx.Identifier{t.readside, "readside_adoptions"}.Sanitize()+` WHERE table_name = $1)
					OR EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $2 AND tgname = ANY($3))`, t.name, t.oid, triggerNames).Scan(&adopted); err != nil {
					return fmt.Errorf("adopt --remove: %w", err)
				}
				if !adopted {
					return nil
				}
				var b strings.Builder
				fmt.Fprintf(&b, "LOCK TABLE %s IN ACCESS EXCLUSIVE MODE; -- DROP TRIGGER's lock, waited for at most the lock timeout at a time\n", t.ident)
				b.WriteString(dropSQL(t))
				for _, tbl := range []string{"readside_adoptions", "readside_adoption_claims", "readside_adoption_changes"} {
					fmt.Fprintf(&b, "DELETE FROM %s WHERE table_name = %s;\n", pgx.Identifier{t.readside, tbl}.Sanitize(), literal(t.name))
				}
				res.SQL, res.Changed = b.String(), true
				if dryRun {
					return nil
				}
				if _, err := tx.Exec(ctx, res.SQL); err != nil {
					if isLockTimeout(err) {
						return err
					}
					return fmt.Errorf("adopt --remove %s: %w", t.name, err)
				}
				return nil
			})
		})
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

type table struct {
	oid         uint32
	name        string // schema.table as given by the catalog
	ident       string // quoted
	readside    string // readside's schema
	partitioned bool
}

func resolve(ctx context.Context, tx pgx.Tx, name, readside string) (*table, error) {
	if name == "" {
		return nil, errors.New("adopt: --table is required")
	}
	schema, rel, qualified := strings.Cut(name, ".")
	if !qualified {
		schema, rel = "", name
	}
	rows, err := tx.Query(ctx, `
SELECT c.oid, n.nspname, c.relname, c.relispartition, n.nspname = $3, c.relkind = 'p'
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relname = $1 AND c.relkind IN ('r', 'p')
   AND ($2 = '' OR n.nspname = $2)
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_temp%'
 ORDER BY n.nspname`, rel, schema, readside)
	if err != nil {
		return nil, fmt.Errorf("adopt: find %s: %w", name, err)
	}
	type cand struct {
		table
		partition, own bool
	}
	var cands []cand
	for rows.Next() {
		var c cand
		var nsp, relname string
		if err := rows.Scan(&c.oid, &nsp, &relname, &c.partition, &c.own, &c.partitioned); err != nil {
			return nil, err
		}
		c.readside = readside
		c.ident = pgx.Identifier{nsp, relname}.Sanitize()
		c.name = nsp + "." + relname
		cands = append(cands, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("adopt: find %s: %w", name, err)
	}
	if !qualified { // readside's own tables are never the ones meant
		cands = slices.DeleteFunc(cands, func(c cand) bool { return c.own })
	}
	switch {
	case len(cands) == 0:
		return nil, fmt.Errorf("%w: %s", errNoTable, name)
	case len(cands) > 1:
		var names []string
		for _, c := range cands {
			names = append(names, c.name)
		}
		return nil, fmt.Errorf("adopt: %s is ambiguous (%s): give schema.table", name, strings.Join(names, ", "))
	case cands[0].own:
		return nil, fmt.Errorf("adopt: %s is in readside's own schema; adopt the application's table (schema.table)", cands[0].name)
	case cands[0].partition:
		return nil, fmt.Errorf("adopt: %s is a partition: adopt its partitioned table", cands[0].name)
	}
	return &cands[0].table, nil
}

func jsonEqual(a, b string) bool {
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return string(xb) == string(yb)
}
