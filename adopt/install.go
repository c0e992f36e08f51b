package adopt

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// The triggers adopt puts on the application's table, all named readside_*.
const (
	// TriggerName copies each new row (AFTER INSERT, per statement).
	TriggerName = "readside_adopted"

	triggerUpdate    = "readside_adopted_update"    // records UPDATEs (not mirrored)
	triggerDelete    = "readside_adopted_delete"    // records DELETEs (not mirrored)
	triggerTruncate  = "readside_adopted_truncate"  // records TRUNCATEs (not mirrored)
	triggerRoute     = "readside_adopted_route"     // partitioned: marks a statement on the table
	triggerRouteEnd  = "readside_adopted_route_end" // partitioned: clears the mark
	triggerPartition = "readside_adopted_partition" // partitioned: refuses rows inserted straight into a partition
)

// triggerNames are every trigger adopt may have put on a table.
var triggerNames = []string{TriggerName, triggerUpdate, triggerDelete, triggerTruncate, triggerRoute, triggerRouteEnd, triggerPartition}

// functionName is the trigger function's name in readside's schema: one per
// adopted table, short whatever the table's name. Its _append and _claim
// siblings are the table's SECURITY DEFINER functions.
func functionName(table string) string {
	h := sha256.Sum256([]byte(table))
	return "readside_adopt_" + hex.EncodeToString(h[:])[:12]
}

// functions names a table's three functions, qualified and quoted.
type functions struct {
	copier, append, claim string // "schema"."name"
	appendSig, claimSig   string // with argument types, for GRANT and DROP
}

func functionsOf(t *table) functions {
	base := functionName(t.name)
	q := func(n string) string { return pgx.Identifier{t.readside, n}.Sanitize() }
	f := functions{copier: q(base), append: q(base + "_append"), claim: q(base + "_claim")}
	f.appendSig = f.append + "(bigint[], text[], text[], text[], jsonb[], jsonb[], integer[], timestamptz[])"
	f.claimSig = f.claim + "(text[], text[])"
	return f
}

// values are the SQL expressions, over the table's columns unqualified,
// that yield readside's values: row_id (the row's id, bigint), t
// (aggregate type, renamed), st (as stored), a (aggregate id), et (event
// type, renamed), set (as stored), d (payload), md (metadata), v (version,
// bigint, checked before it becomes an integer), o (occurred_at).
type values map[string]string

func (p *plan) values() values {
	m := p.m
	text := func(k string) string { return "(" + m[k].expr + ")::text" }
	v := values{
		"row_id": "(" + m["id"].expr + ")::bigint",
		"st":     text("aggregate_type"),
		"a":      text("aggregate_id"),
		"set":    text("event_type"),
		"d":      "(" + m["event_data"].expr + ")::jsonb",
		"md":     "'{}'::jsonb",
		"v":      "(" + m["version"].expr + ")::bigint",
		"o":      "now()",
	}
	v["t"] = renameSQL(v["st"], p.renames)
	v["et"] = renameSQL(v["set"], p.renames)
	if s := m["metadata"]; s != nil {
		v["md"] = "coalesce((" + s.expr + ")::jsonb, '{}'::jsonb)"
	}
	if s := m["occurred_at"]; s != nil {
		if s.typ == oidTimestamp { // Rails stores UTC in timestamp without time zone
			v["o"] = "coalesce((" + s.expr + ") AT TIME ZONE 'UTC', now())"
		} else {
			v["o"] = "coalesce(" + s.expr + ", now())"
		}
	}
	return v
}

// selectList is the mapped row: row_id, t, a, et, d, md, v, o.
func (v values) selectList() string {
	return fmt.Sprintf("%s AS row_id, %s AS t, %s AS a, %s AS et, %s AS d, %s AS md, %s AS v, %s AS o",
		v["row_id"], v["t"], v["a"], v["et"], v["d"], v["md"], v["v"], v["o"])
}

// identityCols are the columns the aggregate's identity is computed from:
// rows of one aggregate normally share their values, so the trigger looks
// its history up by them first (an index of the application's serves).
func (p *plan) identityCols() []string {
	seen := map[string]bool{}
	var out []string
	for _, k := range []string{"aggregate_type", "aggregate_id"} {
		for _, c := range p.m[k].cols {
			if !seen[c] && p.cols[c].typ != oidJSON { // json has no equality
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	return out
}

// arrays are the copier's variables that hold rows, with their types.
var arrays = []struct{ name, col, typ string }{
	{"rows", "row_id", "bigint"}, {"types", "t", "text"}, {"ids", "a", "text"}, {"events", "et", "text"},
	{"data", "d", "jsonb"}, {"meta", "md", "jsonb"}, {"versions", "v", "bigint"}, {"at", "o", "timestamptz"},
}

// aggInto is "array_agg(col ORDER BY order), ..." for every array.
func aggInto(order string) string {
	var parts []string
	for _, a := range arrays {
		parts = append(parts, fmt.Sprintf("coalesce(array_agg(%s ORDER BY %s), '{}')", a.col, order))
	}
	return strings.Join(parts, ", ")
}

func vars(prefix string) string {
	var parts []string
	for _, a := range arrays {
		parts = append(parts, prefix+a.name)
	}
	return strings.Join(parts, ", ")
}

// copierSQL is the trigger function on the application's table. It runs
// as the role that inserts (SECURITY INVOKER, search_path pg_catalog): it
// evaluates the mapping over the new rows, refuses those readside cannot
// take (naming the row), while backfilling copies the history of each
// aggregate the statement is the first to touch, and hands plain arrays to
// the table's _append function.
func (p *plan) copierSQL(backfilling bool) string {
	t, f, v := p.t, functionsOf(p.t), p.values()
	var b strings.Builder
	fmt.Fprintf(&b, `CREATE OR REPLACE FUNCTION %s() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $readside$
#variable_conflict use_column
DECLARE
    v_bad record;
    v_claim record;
    v_first bigint;
    x_n bigint;
`, f.copier)
	for _, prefix := range []string{"v_", "h_", "x_"} {
		for _, a := range arrays {
			fmt.Fprintf(&b, "    %s%s %s[] := '{}';\n", prefix, a.name, a.typ)
		}
	}
	b.WriteString("BEGIN\n")

	// The columns read have the types they had at adoption.
	var pairs []string
	for _, c := range p.m.typeChecks(p.cols) {
		pairs = append(pairs, fmt.Sprintf("(%s::name, %s::oid)", literal(c[0]), c[1]))
	}
	fmt.Fprintf(&b, `    SELECT e.name, e.typ, a.atttypid AS now_typ INTO v_bad
      FROM (VALUES %s) AS e(name, typ)
      LEFT JOIN pg_attribute a ON a.attrelid = TG_RELID AND a.attname = e.name AND a.attnum > 0 AND NOT a.attisdropped
     WHERE a.atttypid IS DISTINCT FROM e.typ
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'readside refused the INSERT into %%: column %% is %%, not %% as when readside adopted the table', %s,
            v_bad.name, coalesce(format_type(v_bad.now_typ, NULL), 'dropped'), format_type(v_bad.typ, NULL)
            USING ERRCODE = '55000', CONSTRAINT = 'readside_adopt_column_type', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME,
                  COLUMN = v_bad.name, HINT = %s;
    END IF;
`, strings.Join(pairs, ", "), literal(t.name), literal("Adopt the table again (projector adopt --table "+t.name+") to check its new column types."))

	// The role may reach readside's functions.
	fmt.Fprintf(&b, `    IF NOT has_schema_privilege(%s, 'USAGE') THEN
        RAISE EXCEPTION 'readside refused the INSERT into %%: role %% may insert into the table but may not append to readside''s log', %s, current_user
            USING ERRCODE = '42501', HINT = %s;
    END IF;
`, literal(t.readside), literal(t.name), literal(fmt.Sprintf("Run projector adopt --table %s again: it grants USAGE ON SCHEMA %s and EXECUTE ON FUNCTION %s, %s to the roles that may insert into the table.",
		t.name, pgx.Identifier{t.readside}.Sanitize(), f.append, f.claim)))

	// The new rows, mapped, each aggregate's in version order.
	fmt.Fprintf(&b, `    SELECT %s
      INTO %s
      FROM (SELECT m.*, min(m.row_id) OVER (PARTITION BY m.t, m.a) AS first_id
              FROM (SELECT %s FROM readside_new_rows n) m) s;
    IF cardinality(v_rows) = 0 THEN
        RETURN NULL;
    END IF;
`, aggInto("first_id, t, a, v, row_id"), vars("v_"), v.selectList())

	if backfilling {
		b.WriteString(p.historySQL(v))
	}

	// Refuse what readside cannot take, naming the application's row.
	m := p.m
	refuse := func(cond, msg, code, constraint, hint string, args ...string) string {
		return fmt.Sprintf(`        %s
            RAISE EXCEPTION %s, %s
                USING ERRCODE = '%s', CONSTRAINT = '%s', SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, HINT = %s;
`, cond, literal(msg), strings.Join(args, ", "), code, constraint, literal(hint))
	}
	row := "readside refused the row of % with id %: "
	fmt.Fprintf(&b, `    SELECT x.* INTO v_bad
      FROM unnest(v_rows, v_types, v_ids, v_events, v_data, v_versions) WITH ORDINALITY AS x(row_id, t, a, et, d, v, ord)
     WHERE x.row_id IS NULL OR x.t IS NULL OR x.a IS NULL OR x.et IS NULL OR x.d IS NULL OR x.v IS NULL OR x.v < 1 OR x.v > 2147483647
     ORDER BY x.ord
     LIMIT 1;
    IF FOUND THEN
`)
	tbl := literal(t.name)
	b.WriteString(refuse("IF v_bad.row_id IS NULL THEN", "readside refused a row of %: its id ("+pct(m["id"].describe())+") is NULL; readside names rows by it",
		"23502", "readside_adopt_not_null", "Give every row an id.", tbl))
	for _, c := range []struct{ col, key, what string }{
		{"t", "aggregate_type", "aggregate type"}, {"a", "aggregate_id", "aggregate id"}, {"et", "event_type", "event type"},
		{"d", "event_data", "payload"}, {"v", "version", "version"},
	} {
		b.WriteString(refuse("ELSIF v_bad."+c.col+" IS NULL THEN", row+"its "+c.what+" ("+pct(m[c.key].describe())+", for "+c.key+") is NULL; readside's events all have one",
			"23502", "readside_adopt_not_null", "readside's log refuses events without "+c.what+"; fix the row or the mapping.", tbl, "v_bad.row_id"))
	}
	b.WriteString(refuse("ELSE", row+"its version ("+pct(m["version"].describe())+") is %; readside's versions run from 1 to 2147483647",
		"23514", "readside_adopt_version_range", "An aggregate's first event is version 1; map a version that starts at 0 with --column version=\"EXPR + 1\".", tbl, "v_bad.row_id", "v_bad.v"))
	b.WriteString("        END IF;\n    END IF;\n")

	fmt.Fprintf(&b, `    PERFORM %s(%s);
    RETURN NULL;
END
$readside$;
`, f.append, strings.Replace(vars("v_"), "v_versions", "v_versions::integer[]", 1))
	return b.String()
}

// pct escapes % for a RAISE format string.
func pct(s string) string { return strings.ReplaceAll(s, "%", "%%") }

// historySQL claims the aggregates the new rows belong to and, for each
// one this statement is the first to touch since the trigger was
// installed, reads the versions readside's log lacks below the new rows
// from the application's table, as the inserting role, and puts them first.
func (p *plan) historySQL(v values) string {
	t, f := p.t, functionsOf(p.t)
	from := t.ident
	if !t.partitioned {
		from = "ONLY " + t.ident
	}
	hist := func(pred string) string {
		return fmt.Sprintf(`        SELECT %s, count(DISTINCT v)
          INTO %s, x_n
          FROM (SELECT %s FROM %s n%s) m
         WHERE m.t = v_claim.aggregate_type AND m.a = v_claim.aggregate_id AND m.v > v_claim.last_version AND m.v < v_first;
`, aggInto("v, row_id"), vars("x_"), v.selectList(), from, pred)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `    FOR v_claim IN SELECT * FROM %s(v_types, v_ids) LOOP
        SELECT min(x.v) INTO v_first FROM unnest(v_types, v_ids, v_versions) AS x(t, a, v)
         WHERE x.t = v_claim.aggregate_type AND x.a = v_claim.aggregate_id;
        CONTINUE WHEN v_first IS NULL OR v_first <= v_claim.last_version + 1;
`, f.claim)
	if cols := p.identityCols(); len(cols) > 0 {
		var outer, inner []string
		for _, c := range cols {
			id := pgx.Identifier{c}.Sanitize()
			outer, inner = append(outer, "n."+id), append(inner, "r."+id)
		}
		// Inside the subquery the mapping's unqualified columns are r's.
		b.WriteString(hist(fmt.Sprintf(" WHERE (%s) IN (SELECT %s FROM readside_new_rows r WHERE %s = v_claim.aggregate_type AND %s = v_claim.aggregate_id)",
			strings.Join(outer, ", "), strings.Join(inner, ", "), v["t"], v["a"])))
		b.WriteString("        IF x_n <> v_first - v_claim.last_version - 1 THEN -- history under other values of those columns\n")
		b.WriteString(hist(""))
		b.WriteString("        END IF;\n")
	} else {
		b.WriteString(hist(""))
	}
	for _, a := range arrays {
		fmt.Fprintf(&b, "        h_%[1]s := h_%[1]s || x_%[1]s;\n", a.name)
	}
	b.WriteString("    END LOOP;\n")
	for _, a := range arrays {
		fmt.Fprintf(&b, "    v_%[1]s := h_%[1]s || v_%[1]s;\n", a.name)
	}
	return b.String()
}

// definerSQL are the table's two SECURITY DEFINER functions. They take
// plain values only: nothing the table's owner defines runs in them.
// _claim marks the aggregates whose history the caller copies (waiting
// for a backfill chunk or another transaction that holds one) and says how
// far readside's log has each; _append checks the rows against readside's
// log, naming the application's rows, and inserts them. Both refuse to run
// outside a trigger; EXECUTE is granted to the roles that may insert into
// the table, which could append those rows through it anyway.
func (p *plan) definerSQL() string {
	t, f := p.t, functionsOf(p.t)
	rs := pgx.Identifier{t.readside}.Sanitize()
	tbl := literal(t.name)
	onlyTrigger := func(fn string) string {
		return fmt.Sprintf(`    IF pg_trigger_depth() < 1 THEN
        RAISE EXCEPTION %s USING ERRCODE = '55000';
    END IF;
`, literal(fmt.Sprintf("readside: %s is called by the trigger %s on %s, nowhere else", fn, TriggerName, t.name)))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `CREATE OR REPLACE FUNCTION %s(p_types text[], p_ids text[])
RETURNS TABLE (aggregate_type text, aggregate_id text, last_version integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, %s, pg_temp AS $readside$
#variable_conflict use_column
DECLARE
    v_agg record;
    v_install xid8;
BEGIN
%s    FOR v_agg IN
        SELECT DISTINCT x.t, x.a FROM unnest(p_types, p_ids) AS x(t, a)
         WHERE NOT EXISTS (SELECT 1 FROM readside_adoption_claims c
                            WHERE c.table_name = %s AND c.aggregate_type = x.t AND c.aggregate_id = x.a)
         ORDER BY 1, 2
    LOOP
        IF v_install IS NULL THEN
            SELECT s.install_txid INTO v_install FROM readside_adoptions s WHERE s.table_name = %s;
            IF v_install IS NOT NULL AND NOT pg_visible_in_snapshot(v_install, pg_current_snapshot()) THEN
                RAISE EXCEPTION 'readside: this transaction''s snapshot is older than the adoption of %%, whose earlier rows it may not see; retry the transaction', %s
                    USING ERRCODE = '40001', CONSTRAINT = 'readside_adopt_snapshot';
            END IF;
        END IF;
        PERFORM pg_advisory_xact_lock(hashtext(%s), hashtext(v_agg.t || chr(31) || v_agg.a));
        INSERT INTO readside_adoption_claims (table_name, aggregate_type, aggregate_id)
        VALUES (%s, v_agg.t, v_agg.a) ON CONFLICT DO NOTHING;
        IF FOUND THEN
            aggregate_type := v_agg.t;
            aggregate_id := v_agg.a;
            SELECT coalesce(max(e.version), 0) INTO last_version FROM events e
             WHERE e.aggregate_type = v_agg.t AND e.aggregate_id = v_agg.a;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$readside$;
REVOKE ALL ON FUNCTION %s FROM PUBLIC;
`, f.claim, rs, onlyTrigger(f.claim), tbl, tbl, tbl, tbl, tbl, f.claimSig)

	fmt.Fprintf(&b, `CREATE OR REPLACE FUNCTION %s(p_rows bigint[], p_types text[], p_ids text[], p_events text[],
    p_data jsonb[], p_meta jsonb[], p_versions integer[], p_at timestamptz[])
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, %s, pg_temp AS $readside$
BEGIN
%s    PERFORM %s.readside_adopt_insert(%s, p_rows, p_types, p_ids, p_events, p_data, p_meta, p_versions, p_at);
END
$readside$;
REVOKE ALL ON FUNCTION %s FROM PUBLIC;
`, f.append, rs, onlyTrigger(f.append), rs, tbl, f.appendSig)
	return b.String()
}

// triggersSQL (re)creates the triggers on the table. CREATE OR REPLACE
// TRIGGER takes SHARE ROW EXCLUSIVE, as the first CREATE does.
func (p *plan) triggersSQL() string {
	t, f := p.t, functionsOf(p.t)
	rs := pgx.Identifier{t.readside}.Sanitize()
	tbl := literal(t.name)
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE OR REPLACE TRIGGER %s AFTER INSERT ON %s REFERENCING NEW TABLE AS readside_new_rows\n    FOR EACH STATEMENT EXECUTE FUNCTION %s();\n",
		TriggerName, t.ident, f.copier)
	for _, c := range []struct{ name, op string }{{triggerUpdate, "UPDATE"}, {triggerDelete, "DELETE"}} {
		fmt.Fprintf(&b, "CREATE OR REPLACE TRIGGER %s AFTER %s ON %s REFERENCING OLD TABLE AS readside_old_rows\n    FOR EACH STATEMENT EXECUTE FUNCTION %s.readside_adopt_changed(%s);\n",
			c.name, c.op, t.ident, rs, tbl)
	}
	fmt.Fprintf(&b, "CREATE OR REPLACE TRIGGER %s AFTER TRUNCATE ON %s\n    FOR EACH STATEMENT EXECUTE FUNCTION %s.readside_adopt_changed(%s);\n",
		triggerTruncate, t.ident, rs, tbl)
	if t.partitioned {
		fmt.Fprintf(&b, `CREATE OR REPLACE TRIGGER %s BEFORE INSERT OR UPDATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s.readside_adopt_route();
CREATE OR REPLACE TRIGGER %s AFTER INSERT OR UPDATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s.readside_adopt_route();
CREATE OR REPLACE TRIGGER %s BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION %s.readside_adopt_partition_guard(%s, %s);
`, triggerRoute, t.ident, rs, triggerRouteEnd, t.ident, rs, triggerPartition, t.ident, rs, literal(fmt.Sprint(t.oid)), tbl)
	}
	return b.String()
}

// grantSQL grants the table's functions to the roles that may insert into
// it (roles: quoted, or PUBLIC).
func (p *plan) grantSQL(roles []string) string {
	if len(roles) == 0 {
		return ""
	}
	f := functionsOf(p.t)
	list := strings.Join(roles, ", ")
	return fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s;\nGRANT EXECUTE ON FUNCTION %s, %s TO %s;\n",
		pgx.Identifier{p.t.readside}.Sanitize(), list, f.appendSig, f.claimSig, list)
}

// dropSQL removes everything adopt put on and for the table.
func dropSQL(t *table) string {
	f := functionsOf(t)
	var b strings.Builder
	for _, name := range triggerNames {
		fmt.Fprintf(&b, "DROP TRIGGER IF EXISTS %s ON %s;\n", name, t.ident)
	}
	fmt.Fprintf(&b, "DROP FUNCTION IF EXISTS %s();\nDROP FUNCTION IF EXISTS %s;\nDROP FUNCTION IF EXISTS %s;\n", f.copier, f.appendSig, f.claimSig)
	return b.String()
}
