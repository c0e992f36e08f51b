package adopt

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Built-in types by oid (pg_type.dat): adopt reads only these, and only
// the casts and operators PostgreSQL itself defines on them, so nothing a
// table's owner defines (a type, a cast, an operator) is ever evaluated
// by readside.
const (
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidText        = 25
	oidJSON        = 114
	oidBpchar      = 1042
	oidVarchar     = 1043
	oidTimestamp   = 1114
	oidTimestamptz = 1184
	oidUUID        = 2950
	oidJSONB       = 3802

	// firstNormalOid: objects below it were created by initdb (built in);
	// every object a user creates has an oid at or above it.
	firstNormalOid = 16384
)

var (
	textTypes = []uint32{oidText, oidVarchar, oidBpchar}
	intTypes  = []uint32{oidInt2, oidInt4, oidInt8}
)

// accepted are the types adopt reads for each key.
var accepted = map[string][]uint32{
	"id":             intTypes,
	"version":        intTypes,
	"aggregate_type": textTypes,
	"event_type":     textTypes,
	"aggregate_id":   append(append([]uint32{oidUUID}, textTypes...), intTypes...),
	"event_data":     {oidJSONB, oidJSON},
	"metadata":       {oidJSONB, oidJSON},
	"occurred_at":    {oidTimestamptz, oidTimestamp},
}

var typeNames = map[uint32]string{oidInt8: "int8", oidInt2: "int2", oidInt4: "int4", oidText: "text", oidJSON: "json",
	oidBpchar: "bpchar", oidVarchar: "varchar", oidTimestamp: "timestamp", oidTimestamptz: "timestamptz", oidUUID: "uuid", oidJSONB: "jsonb"}

func typeList(oids []uint32) string {
	var names []string
	for _, o := range oids {
		names = append(names, typeNames[o])
	}
	return strings.Join(names, ", ")
}

// column is one of the table's columns.
type column struct {
	name    string
	typ     uint32
	typname string
	notNull bool
	attnum  int16
}

// source is where one key's value comes from: a column, or an expression
// over columns.
type source struct {
	key     string
	given   string   // as configured ("" when the key's own name was taken)
	expr    string   // SQL over the table's columns, unqualified
	column  string   // the column, when the source is one
	typ     uint32   // the type expr yields
	typname string   // its name
	cols    []string // the columns expr reads
}

// describe names the source in messages: column "seq", or the expression.
func (s *source) describe() string {
	if s.column != "" {
		return fmt.Sprintf("column %q", s.column)
	}
	return "expression " + s.expr
}

// mapping is a table's sources, by key.
type mapping map[string]*source

// columns reads the table's columns.
func tableColumns(ctx context.Context, tx pgx.Tx, t *table) (map[string]*column, error) {
	rows, err := tx.Query(ctx, `SELECT a.attname, a.atttypid, t.typname, a.attnotnull, a.attnum
		FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, t.oid)
	if err != nil {
		return nil, fmt.Errorf("adopt: columns of %s: %w", t.name, err)
	}
	cols := map[string]*column{}
	for rows.Next() {
		c := &column{}
		if err := rows.Scan(&c.name, &c.typ, &c.typname, &c.notNull, &c.attnum); err != nil {
			return nil, err
		}
		cols[c.name] = c
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("adopt: columns of %s: %w", t.name, err)
	}
	return cols, nil
}

// resolve checks the configured mapping against t and returns each key's
// source. Expressions are checked by PostgreSQL itself in a savepoint: they
// must parse over the table's built-in-typed columns with search_path
// pg_catalog, be immutable (an index on them in a temporary table must be
// possible) and use nothing but what PostgreSQL has built in.
func resolveMapping(ctx context.Context, tx pgx.Tx, t *table, given map[string]string) (mapping, error) {
	for k := range given {
		if !knownKey(k) {
			return nil, fmt.Errorf("adopt: unknown key %q (keys: %s)", k, strings.Join(Keys, ", "))
		}
	}
	cols, err := tableColumns(ctx, tx, t)
	if err != nil {
		return nil, err
	}
	m := mapping{}
	var probe *probeTable
	for _, k := range Keys {
		g := strings.TrimSpace(given[k])
		name := g
		if name == "" {
			name = k
		}
		if c, ok := cols[name]; ok {
			if !slices.Contains(accepted[k], c.typ) {
				return nil, fmt.Errorf("adopt: column %s.%s (for %s) is %s, want one of %s", t.name, c.name, k, c.typname, typeList(accepted[k]))
			}
			m[k] = &source{key: k, given: g, expr: pgx.Identifier{c.name}.Sanitize(), column: c.name, typ: c.typ, typname: c.typname, cols: []string{c.name}}
			continue
		}
		switch {
		case g == "" && optional[k]:
			continue
		case g == "":
			return nil, fmt.Errorf("adopt: table %s has no column %q (for %s); map it with --column %s=COLUMN_OR_EXPRESSION", t.name, name, k, k)
		case identRE.MatchString(g):
			return nil, fmt.Errorf("adopt: table %s has no column %q (for %s)", t.name, g, k)
		}
		if probe == nil {
			if probe, err = newProbe(ctx, tx, t, cols); err != nil {
				return nil, err
			}
		}
		s, err := probe.check(ctx, k, g)
		if err != nil {
			return nil, err
		}
		m[k] = s
	}
	return m, nil
}

// probeTable is a temporary table with the adopted table's built-in-typed
// columns, where expressions are checked.
type probeTable struct {
	tx       pgx.Tx
	t        *table
	excluded []string // columns of types not built in: no expression may read them
}

func newProbe(ctx context.Context, tx pgx.Tx, t *table, cols map[string]*column) (*probeTable, error) {
	p := &probeTable{tx: tx, t: t}
	var defs []string
	var list []*column
	for _, c := range cols {
		list = append(list, c)
	}
	slices.SortFunc(list, func(a, b *column) int { return int(a.attnum) - int(b.attnum) })
	for _, c := range list {
		if c.typ >= firstNormalOid {
			p.excluded = append(p.excluded, fmt.Sprintf("%s (%s)", c.name, c.typname))
			continue
		}
		var typ string
		if err := tx.QueryRow(ctx, `SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a
			WHERE a.attrelid = $1 AND a.attname = $2`, t.oid, c.name).Scan(&typ); err != nil {
			return nil, fmt.Errorf("adopt: type of %s.%s: %w", t.name, c.name, err)
		}
		defs = append(defs, pgx.Identifier{c.name}.Sanitize()+" "+typ)
	}
	if _, err := tx.Exec(ctx, `SET LOCAL search_path = pg_catalog, pg_temp`); err != nil {
		return nil, fmt.Errorf("adopt: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TEMPORARY TABLE readside_adopt_probe (`+strings.Join(defs, ", ")+`) ON COMMIT DROP`); err != nil {
		return nil, fmt.Errorf("adopt: a temporary table to check expressions in: %w", err)
	}
	return p, nil
}

// check has PostgreSQL parse, type and vet expr for key k.
func (p *probeTable) check(ctx context.Context, k, expr string) (s *source, err error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("adopt: --column %s=%s: %s", k, expr, fmt.Sprintf(format, args...))
	}
	if _, err := p.tx.Exec(ctx, `SAVEPOINT readside_adopt_probe`); err != nil {
		return nil, err
	}
	defer func() {
		if _, rerr := p.tx.Exec(ctx, `ROLLBACK TO SAVEPOINT readside_adopt_probe`); rerr != nil && err == nil {
			err = rerr
		}
	}()
	// An index expression must be immutable and holds no subquery,
	// aggregate, window or set-returning function.
	if _, err := p.tx.Exec(ctx, `CREATE INDEX readside_adopt_probe_expr ON pg_temp.readside_adopt_probe ((`+expr+`))`); err != nil {
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr) && pgErr.Code == "42703" && len(p.excluded) > 0:
			return nil, bad("%s (readside reads only columns of built-in types; not: %s)", pgErr.Message, strings.Join(p.excluded, ", "))
		case errors.As(err, &pgErr) && strings.Contains(pgErr.Message, "IMMUTABLE"):
			return nil, bad("not immutable: an expression may use only functions and operators whose result depends on their arguments alone (%s)", pgErr.Message)
		case errors.As(err, &pgErr):
			return nil, bad("%s", pgErr.Message)
		}
		return nil, bad("%v", err)
	}
	rows, err := p.tx.Query(ctx, `SELECT d.refclassid::regclass::text, d.refobjid::int8, d.refobjsubid,
			CASE d.refclassid WHEN 'pg_catalog.pg_proc'::regclass THEN d.refobjid::regprocedure::text
			                  WHEN 'pg_catalog.pg_operator'::regclass THEN d.refobjid::regoperator::text
			                  WHEN 'pg_catalog.pg_type'::regclass THEN d.refobjid::regtype::text
			                  ELSE pg_catalog.pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) END
		   FROM pg_catalog.pg_depend d
		  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = 'pg_temp.readside_adopt_probe_expr'::regclass`)
	if err != nil {
		return nil, err
	}
	var used []int16
	var foreign []string
	for rows.Next() {
		var class, what string
		var oid int64
		var sub int16
		if err := rows.Scan(&class, &oid, &sub, &what); err != nil {
			return nil, err
		}
		switch {
		case class == "pg_class": // the probe table (an index expression reads no other)
			if sub > 0 {
				used = append(used, sub)
			}
		case oid >= firstNormalOid:
			foreign = append(foreign, what)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(foreign) > 0 {
		return nil, bad("uses %s, not built into PostgreSQL: readside evaluates only what PostgreSQL defines", strings.Join(foreign, ", "))
	}
	s = &source{key: k, given: expr}
	if err := p.tx.QueryRow(ctx, `SELECT pg_catalog.pg_get_indexdef('pg_temp.readside_adopt_probe_expr'::regclass, 1, false)`).Scan(&s.expr); err != nil {
		return nil, err
	}
	for _, attnum := range used {
		var name string
		if err := p.tx.QueryRow(ctx, `SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = 'pg_temp.readside_adopt_probe'::regclass AND attnum = $1`, attnum).Scan(&name); err != nil {
			return nil, err
		}
		s.cols = append(s.cols, name)
	}
	slices.Sort(s.cols)
	if len(s.cols) == 0 {
		return nil, bad("reads no column of %s", p.t.name)
	}
	// The type the expression yields.
	r, err := p.tx.Query(ctx, `SELECT (`+s.expr+`) FROM pg_temp.readside_adopt_probe LIMIT 0`)
	if err != nil {
		return nil, bad("%v", err)
	}
	s.typ = r.FieldDescriptions()[0].DataTypeOID
	r.Close()
	if !slices.Contains(accepted[k], s.typ) {
		var name string
		_ = p.tx.QueryRow(ctx, `SELECT pg_catalog.format_type($1, NULL)`, s.typ).Scan(&name)
		return nil, bad("yields %s, want one of %s", name, typeList(accepted[k]))
	}
	s.typname = typeNames[s.typ]
	return s, nil
}

// typeChecks are the (column, type oid) pairs the mapping reads: checked
// again under every lock adopt takes and by the trigger at every INSERT.
func (m mapping) typeChecks(cols map[string]*column) [][2]string {
	seen := map[string]bool{}
	var out [][2]string
	for _, k := range Keys {
		s := m[k]
		if s == nil {
			continue
		}
		for _, c := range s.cols {
			if seen[c] {
				continue
			}
			seen[c] = true
			out = append(out, [2]string{c, fmt.Sprint(cols[c].typ)})
		}
	}
	slices.SortFunc(out, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return out
}
