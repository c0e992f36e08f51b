package adopt

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/migrations"
)

// TriggerName is the trigger adopt creates on the application's table.
const TriggerName = "readside_adopted"

// Config says which table to adopt and how its columns and names map to
// readside's.
type Config struct {
	// Table is the application's events table, "schema.table" or "table"
	// (then the one table of that name outside readside's schema).
	Table string
	// Columns maps readside's names (Keys) to the table's columns; a
	// missing key means a column of the same name.
	Columns map[string]string
	// Renames map stored event and aggregate type names to readside's.
	Renames []Rename
	// Schema is readside's schema. "" means "readside".
	Schema string
}

// Result says what Adopt or Remove did (or, for a dry run, would do).
type Result struct {
	Table   string // the table, schema-qualified
	SQL     string // the statements run (dry run: to run); empty when there was nothing to do
	Changed bool   // false when the table was already adopted this way (or, Remove, not adopted)
	History int64  // rows copied as history by this call (first adoption only)
}

// errNoTable: the table to adopt does not exist.
var errNoTable = errors.New("adopt: no such table")

// Adopt installs, under the migration lock and in one transaction, a
// trigger on cfg.Table that copies each new row (mapped and renamed) into
// readside's events table, and copies the rows already there as history in
// id order. Adopting again with the same mapping does nothing; with another
// mapping it replaces the trigger's function and keeps the history. With
// dryRun nothing changes and Result.SQL is what would run.
func Adopt(ctx context.Context, pool *pgxpool.Pool, cfg Config, dryRun bool) (*Result, error) {
	var res *Result
	err := locked(ctx, pool, cfg.Schema, func(tx pgx.Tx) error {
		t, err := resolve(ctx, tx, cfg.Table)
		if err != nil {
			return err
		}
		exprs, mapping, err := columns(ctx, tx, t, cfg.Columns)
		if err != nil {
			return err
		}
		renames := cfg.Renames
		if renames == nil {
			renames = []Rename{}
		}
		mapJSON, _ := json.Marshal(mapping)
		renJSON, _ := json.Marshal(renames)
		res = &Result{Table: t.name}
		found, same, err := adoptedAs(ctx, tx, t, string(mapJSON), string(renJSON))
		if err != nil || same {
			return err // same: already adopted this way
		}
		script := adoptSQL(t, exprs, renames, string(mapJSON), string(renJSON), !found)
		if err := apply(ctx, tx, res, script, dryRun, "adopt"); err != nil || dryRun || found {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT history_events FROM readside.readside_adoptions WHERE table_name = $1`, t.name).Scan(&res.History); err != nil {
			return fmt.Errorf("adopt %s: %w", t.name, err)
		}
		return nil
	}, dryRun)
	if err != nil {
		return nil, err
	}
	return res, nil
}

// adoptedAs says whether t has a stored mapping (found) and whether it is
// adopted with exactly this one, its trigger in place (same).
func adoptedAs(ctx context.Context, tx pgx.Tx, t *table, mapJSON, renJSON string) (found, same bool, err error) {
	var columns, renames string
	err = tx.QueryRow(ctx, `SELECT columns::text, renames::text FROM readside.readside_adoptions WHERE table_name = $1`, t.name).
		Scan(&columns, &renames)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return false, false, fmt.Errorf("adopt: read stored mapping: %w", err)
	default:
		found = true
	}
	var hasTrigger bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1 AND tgname = $2)`, t.oid, TriggerName).Scan(&hasTrigger); err != nil {
		return false, false, fmt.Errorf("adopt: %w", err)
	}
	return found, found && hasTrigger && jsonEqual(columns, mapJSON) && jsonEqual(renames, renJSON), nil
}

// adoptSQL is the script that (re)installs the trigger on t and stores the
// mapping; with history, it also copies the rows already in t.
func adoptSQL(t *table, exprs map[string]string, renames []Rename, mapJSON, renJSON string, history bool) string {
	fn := pgx.Identifier{t.readside, functionName(t.name)}.Sanitize()
	target := pgx.Identifier{t.readside, "events"}.Sanitize()
	sel := fmt.Sprintf(`SELECT %s, %s, %s, %s, %s, %s, %s`,
		renameSQL(exprs["aggregate_type"], renames), exprs["aggregate_id"], renameSQL(exprs["event_type"], renames),
		exprs["event_data"], exprs["metadata"], exprs["version"], exprs["occurred_at"])
	insert := `INSERT INTO ` + target + ` (aggregate_type, aggregate_id, event_type, event_data, metadata, version, occurred_at)`
	var b strings.Builder
	fmt.Fprintf(&b, "-- readside adopt %s: copy each new row into %s\n", t.name, target)
	fmt.Fprintf(&b, "LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE;\n", t.ident)
	fmt.Fprintf(&b, `CREATE OR REPLACE FUNCTION %s() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, %s, pg_temp AS $readside$
BEGIN
    %s
    %s
      FROM readside_new_rows n
     ORDER BY %s;
    RETURN NULL;
END
$readside$;
`, fn, pgx.Identifier{t.readside}.Sanitize(), insert, sel, exprs["id"])
	fmt.Fprintf(&b, "DROP TRIGGER IF EXISTS %s ON %s;\n", TriggerName, t.ident)
	fmt.Fprintf(&b, "CREATE TRIGGER %s AFTER INSERT ON %s REFERENCING NEW TABLE AS readside_new_rows\n    FOR EACH STATEMENT EXECUTE FUNCTION %s();\n",
		TriggerName, t.ident, fn)
	if history {
		fmt.Fprintf(&b, "-- history: the rows written before adoption, in id order\n%s\n%s\n  FROM %s n\n ORDER BY %s;\n",
			insert, sel, t.ident, exprs["id"])
	}
	fmt.Fprintf(&b, `INSERT INTO %s (table_name, columns, renames, function_name, history_events)
VALUES (%s, %s, %s, %s, (SELECT count(*) FROM %s))
ON CONFLICT (table_name) DO UPDATE
   SET columns = excluded.columns, renames = excluded.renames, function_name = excluded.function_name, updated_at = now();
`, pgx.Identifier{t.readside, "readside_adoptions"}.Sanitize(), literal(t.name), literal(mapJSON), literal(renJSON), literal(fn), t.ident)
	return b.String()
}

// apply records script as what res changes and, unless dryRun, runs it.
func apply(ctx context.Context, tx pgx.Tx, res *Result, script string, dryRun bool, what string) error {
	res.SQL, res.Changed = script, true
	if dryRun {
		return nil
	}
	if _, err := tx.Exec(ctx, script); err != nil {
		return fmt.Errorf("%s %s: %w", what, res.Table, err)
	}
	return nil
}

// Remove drops the trigger and its function from an adopted table and
// forgets the mapping. Events already copied stay in readside's log (it is
// append-only).
func Remove(ctx context.Context, pool *pgxpool.Pool, schema, table string, dryRun bool) (*Result, error) {
	var res *Result
	err := locked(ctx, pool, schema, func(tx pgx.Tx) error {
		t, err := resolve(ctx, tx, table)
		if err != nil {
			return err
		}
		res = &Result{Table: t.name}
		var fn string
		err = tx.QueryRow(ctx, `SELECT function_name FROM readside.readside_adoptions WHERE table_name = $1`, t.name).Scan(&fn)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		} else if err != nil {
			return fmt.Errorf("adopt --remove: %w", err)
		}
		return apply(ctx, tx, res, fmt.Sprintf("DROP TRIGGER IF EXISTS %s ON %s;\nDROP FUNCTION IF EXISTS %s();\nDELETE FROM %s WHERE table_name = %s;\n",
			TriggerName, t.ident, fn, pgx.Identifier{t.readside, "readside_adoptions"}.Sanitize(), literal(t.name)), dryRun, "adopt --remove")
	}, dryRun)
	if err != nil {
		return nil, err
	}
	return res, nil
}

// locked runs f in a transaction in readside's schema under the migration
// lock, on a migrated database; a dry run rolls back.
func locked(ctx context.Context, pool *pgxpool.Pool, schema string, f func(pgx.Tx) error, dryRun bool) error {
	n, err := dbschema.Parse(schema)
	if err != nil {
		return fmt.Errorf("adopt: %w", err)
	}
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("adopt: connect: %w", err)
	}
	defer pc.Release()
	conn := n.Conn(pc.Conn())
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(migrations.LockKey)); err != nil {
		return fmt.Errorf("adopt: lock: %w", err)
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(migrations.LockKey)); err != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	if err := migrations.Check(ctx, conn, n.String()); err != nil {
		return fmt.Errorf("adopt: %w", err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("adopt: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := f(tx); err != nil {
		return err
	}
	if dryRun {
		return nil
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("adopt: commit: %w", err)
	}
	return nil
}

type table struct {
	oid      uint32
	name     string // schema.table as given by the catalog
	ident    string // quoted
	readside string // readside's schema
}

func resolve(ctx context.Context, tx pgx.Tx, name string) (*table, error) {
	if name == "" {
		return nil, errors.New("adopt: --table is required")
	}
	schema, rel, qualified := strings.Cut(name, ".")
	if !qualified {
		schema, rel = "", name
	}
	readside := dbschema.Of(tx).String()
	rows, err := tx.Query(ctx, `
SELECT c.oid, n.nspname, c.relname, c.relispartition, n.nspname = $3
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relname = $1 AND c.relkind IN ('r', 'p')
   AND ($2 = '' OR n.nspname = $2)
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
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
		if err := rows.Scan(&c.oid, &nsp, &relname, &c.partition, &c.own); err != nil {
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

// typeClass groups the column types adopt accepts.
var (
	textTypes = []string{"text", "varchar", "bpchar"}
	intTypes  = []string{"int2", "int4", "int8"}
	jsonTypes = []string{"jsonb", "json"}
)

// columns validates the mapping against the table and returns, per key,
// the SQL expression over alias n that yields readside's value, and the
// mapping as stored (key -> column, absent optional keys left out).
func columns(ctx context.Context, tx pgx.Tx, t *table, given map[string]string) (map[string]string, map[string]string, error) {
	types, err := columnTypes(ctx, tx, t)
	if err != nil {
		return nil, nil, err
	}
	exprs, mapping := map[string]string{}, map[string]string{}
	for _, k := range Keys {
		col := cmp.Or(given[k], k)
		typ, ok := types[col]
		if !ok {
			if optional[k] && given[k] == "" {
				continue
			}
			return nil, nil, fmt.Errorf("adopt: table %s has no column %q (for %s); map it with --columns %s=COLUMN", t.name, col, k, k)
		}
		if want := accepted[k]; !slices.Contains(want, typ) {
			return nil, nil, fmt.Errorf("adopt: column %s.%s (for %s) is %s, want one of %s", t.name, col, k, typ, strings.Join(want, ", "))
		}
		mapping[k] = col
		exprs[k] = valueSQL(k, "n."+pgx.Identifier{col}.Sanitize(), typ)
	}
	if _, ok := exprs["metadata"]; !ok {
		exprs["metadata"] = "'{}'::jsonb"
	}
	if _, ok := exprs["occurred_at"]; !ok {
		exprs["occurred_at"] = "now()"
	}
	return exprs, mapping, nil
}

// columnTypes maps the columns of t to their type names.
func columnTypes(ctx context.Context, tx pgx.Tx, t *table) (map[string]string, error) {
	rows, err := tx.Query(ctx, `SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped`, t.oid)
	if err != nil {
		return nil, fmt.Errorf("adopt: columns of %s: %w", t.name, err)
	}
	types := map[string]string{}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, err
		}
		types[name] = typ
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("adopt: columns of %s: %w", t.name, err)
	}
	return types, nil
}

// accepted are the column types adopt takes for each key.
var accepted = map[string][]string{
	"id":             intTypes,
	"version":        intTypes,
	"aggregate_type": textTypes,
	"event_type":     textTypes,
	"aggregate_id":   append(append([]string{"uuid"}, textTypes...), intTypes...),
	"event_data":     jsonTypes,
	"metadata":       jsonTypes,
	"occurred_at":    {"timestamptz", "timestamp"},
}

// valueSQL converts column c of type typ to readside's value for key k.
func valueSQL(k, c, typ string) string {
	switch k {
	case "aggregate_type", "aggregate_id", "event_type":
		return c + "::text"
	case "event_data":
		return c + "::jsonb"
	case "metadata":
		return "coalesce(" + c + "::jsonb, '{}')"
	case "version":
		return c + "::int"
	case "occurred_at":
		if typ == "timestamp" { // Rails stores UTC in timestamp without time zone
			return "coalesce(" + c + " AT TIME ZONE 'UTC', now())"
		}
		return "coalesce(" + c + ", now())"
	}
	return c
}

// functionName is the trigger function's name in readside's schema: one per
// adopted table, short whatever the table's name.
func functionName(table string) string {
	h := sha256.Sum256([]byte(table))
	return "readside_adopt_" + hex.EncodeToString(h[:])[:12]
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
