package control

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/projectors"
)

// ErrDependents refuses a rebuild of a projection whose tables other
// objects depend on (a view over them, a foreign key to them, a function
// with a SQL-standard body naming them): the switch retires the tables and
// drops them, and those objects would go with them.
var ErrDependents = errors.New("other objects depend on the projection's tables")

// dependentsSQL names what depends on a table ($1) apart from its own
// parts (its constraints, column defaults and generated columns, triggers,
// policies, statistics, rules; indexes and its row type depend on it
// automatically): a view's rule, another table's foreign key, a function
// with a SQL-standard body.
const dependentsSQL = `
SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)
  FROM pg_catalog.pg_depend d
 WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.refobjid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass
   AND d.deptype OPERATOR(pg_catalog.=) 'n'
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint x WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_constraint'::pg_catalog.regclass
                      AND x.oid OPERATOR(pg_catalog.=) d.objid AND x.conrelid OPERATOR(pg_catalog.=) d.refobjid)
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_attrdef x WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                      AND x.oid OPERATOR(pg_catalog.=) d.objid AND x.adrelid OPERATOR(pg_catalog.=) d.refobjid)
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger x WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_trigger'::pg_catalog.regclass
                      AND x.oid OPERATOR(pg_catalog.=) d.objid AND x.tgrelid OPERATOR(pg_catalog.=) d.refobjid)
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_policy x WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_policy'::pg_catalog.regclass
                      AND x.oid OPERATOR(pg_catalog.=) d.objid AND x.polrelid OPERATOR(pg_catalog.=) d.refobjid)
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_statistic_ext x WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass
                      AND x.oid OPERATOR(pg_catalog.=) d.objid AND x.stxrelid OPERATOR(pg_catalog.=) d.refobjid)
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_rewrite x WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                      AND x.oid OPERATOR(pg_catalog.=) d.objid AND x.ev_class OPERATOR(pg_catalog.=) d.refobjid)
 ORDER BY 1`

// checkDependents refuses tables (qualified names, by table) that other
// objects depend on.
func checkDependents(ctx context.Context, tx pgx.Tx, spec projectors.Spec, tables map[string]string) error {
	var found []string
	for _, t := range spec.Tables {
		rows, err := tx.Query(ctx, dependentsSQL, pgx.Identifier{tables[t], t}.Sanitize())
		if err != nil {
			return fmt.Errorf("rebuild %s: %w", spec.Name, err)
		}
		deps, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("rebuild %s: %w", spec.Name, err)
		}
		for _, d := range deps {
			found = append(found, d+" (on "+tables[t]+"."+t+")")
		}
	}
	if len(found) > 0 {
		return fmt.Errorf("rebuild %s: %w: %s; the switch would drop them with the old tables: drop them first (and recreate them after), or reset the projection instead",
			spec.Name, ErrDependents, strings.Join(found, ", "))
	}
	return nil
}

// grantsSQL lists a table's privileges ($1) as GRANT statements for
// another table ($2): the copy a rebuild switches in gets the live table's
// grants, and its owner.
const grantsSQL = `
SELECT pg_catalog.format('GRANT %s ON TABLE %s TO %s%s', a.privilege_type, $2::pg_catalog.text,
         CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END,
         CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
  FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
  LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee
 WHERE c.oid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass
   AND a.grantee OPERATOR(pg_catalog.<>) c.relowner
UNION ALL
SELECT pg_catalog.format('ALTER TABLE %s OWNER TO %s', $2::pg_catalog.text, pg_catalog.quote_ident(r.rolname))
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) c.relowner
 WHERE c.oid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass
   AND r.oid OPERATOR(pg_catalog.<>) (SELECT c2.relowner FROM pg_catalog.pg_class c2 WHERE c2.oid OPERATOR(pg_catalog.=) $2::pg_catalog.regclass)`

// carryGrants gives the copy (to) the live table's (from) grants and owner.
func carryGrants(ctx context.Context, tx pgx.Tx, from, to string) error {
	rows, err := tx.Query(ctx, grantsSQL, from, to)
	if err != nil {
		return err
	}
	stmts, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}
