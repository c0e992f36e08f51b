package adopt

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// reading begins a transaction that reads the application's table as
// readside may: REPEATABLE READ (one snapshot, taken after the lock),
// search_path pg_catalog, row_security off (a policy, code of the table's
// owner, would fail the read instead of running), the table locked in
// ACCESS SHARE (its columns cannot change type while it reads) and the
// mapping's column types checked again. The caller ends the transaction.
func (p *plan) reading(ctx context.Context, conn *pgx.Conn, lockTimeout time.Duration) (pgx.Tx, error) {
	var tx pgx.Tx
	err := retryLock(ctx, p.t, lockTimeout, func() error {
		var err error
		tx, err = conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		if err != nil {
			return fmt.Errorf("adopt: begin: %w", err)
		}
		// The snapshot is taken by the transaction's first statement that
		// needs one, a SELECT of set_config included; SET and LOCK (simple
		// protocol, no parameters) take none, nor resolve a name through
		// search_path. So the table is locked first: a snapshot taken
		// while the lock waits for a table-rewriting ALTER TABLE would
		// see the rewritten table empty once the ALTER commits.
		_, err = tx.Exec(ctx, fmt.Sprintf(`SET LOCAL lock_timeout = %d; SET LOCAL statement_timeout = 0; LOCK TABLE %s IN ACCESS SHARE MODE`,
			lockTimeout.Milliseconds(), p.t.ident))
		if err == nil {
			err = setLocal(ctx, tx, lockTimeout, 0)
		}
		if err == nil {
			_, err = tx.Exec(ctx, `SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true), pg_catalog.set_config('row_security', 'off', true)`)
		}
		if err == nil {
			err = p.checkTypes(ctx, tx)
		}
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return tx, nil
}

// from is the table in a FROM clause: a plain table without its
// inheritance children (the trigger does not see their rows), a
// partitioned one with its partitions.
func (t *table) from() string {
	if t.partitioned {
		return t.ident
	}
	return "ONLY " + t.ident
}

// mappedSQL selects the table's rows mapped, with the stored names (st,
// set) beside the renamed ones.
func (p *plan) mappedSQL() string {
	v := p.values()
	return fmt.Sprintf("SELECT %s, %s AS st, %s AS set FROM %s n", v.selectList(), v["st"], v["set"], p.t.from())
}

// maxProblems is how many rows or aggregates a refusal names.
const maxProblems = 5

// validate checks the rows in the table against readside's rules (every
// value present, versions from 1 without gaps or doubles per aggregate,
// stored names not merged by renames) and the table's definition against
// what it may later admit. It returns the rows checked and the warnings,
// or an error (wrapping ErrInvalid) naming the rows and columns.
func (p *plan) validate(ctx context.Context, conn *pgx.Conn, lockTimeout time.Duration) (int64, []string, error) {
	tx, err := p.reading(ctx, conn, lockTimeout)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var rows int64
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+p.t.from()).Scan(&rows); err != nil {
		return 0, nil, fmt.Errorf("adopt: count %s: %w", p.t.name, err)
	}
	var problems []string
	for _, check := range []func(context.Context, pgx.Tx) ([]string, error){p.badRows, p.merges, p.sequences} {
		found, err := check(ctx, tx)
		if err != nil {
			return 0, nil, err
		}
		if problems = append(problems, found...); len(problems) > 0 {
			break // later checks assume earlier ones passed
		}
	}
	if len(problems) > 0 {
		return rows, nil, fmt.Errorf("%w: %s:\n  %s", ErrInvalid, p.t.name, strings.Join(problems, "\n  "))
	}
	warnings, err := p.warnings(ctx, tx)
	return rows, warnings, err
}

// badRows are rows with a value readside's events cannot do without, or a
// version out of readside's range.
func (p *plan) badRows(ctx context.Context, tx pgx.Tx) ([]string, error) {
	rows, err := tx.Query(ctx, fmt.Sprintf(`SELECT row_id, t IS NULL, a IS NULL, et IS NULL, d IS NULL, v FROM (%s) m
		WHERE row_id IS NULL OR t IS NULL OR a IS NULL OR et IS NULL OR d IS NULL OR v IS NULL OR v < 1 OR v > 2147483647
		ORDER BY row_id NULLS FIRST LIMIT %d`, p.mappedSQL(), maxProblems))
	if err != nil {
		return nil, fmt.Errorf("adopt: check %s: %w", p.t.name, err)
	}
	var out []string
	for rows.Next() {
		var id, v *int64
		var noT, noA, noET, noD bool
		if err := rows.Scan(&id, &noT, &noA, &noET, &noD, &v); err != nil {
			return nil, err
		}
		row := "a row"
		if id != nil {
			row = fmt.Sprintf("row id %d", *id)
		}
		what := func(k string) string { return p.m[k].describe() + " (for " + k + ")" }
		switch {
		case id == nil:
			out = append(out, fmt.Sprintf("%s: its %s is NULL; readside names rows by it", row, what("id")))
		case noT:
			out = append(out, fmt.Sprintf("%s: %s is NULL", row, what("aggregate_type")))
		case noA:
			out = append(out, fmt.Sprintf("%s: %s is NULL", row, what("aggregate_id")))
		case noET:
			out = append(out, fmt.Sprintf("%s: %s is NULL", row, what("event_type")))
		case noD:
			out = append(out, fmt.Sprintf("%s: %s is NULL; readside's events all have a payload", row, what("event_data")))
		case v == nil:
			out = append(out, fmt.Sprintf("%s: %s is NULL", row, what("version")))
		default:
			out = append(out, fmt.Sprintf("%s: %s is %d; readside's versions run from 1 to 2147483647 (a version that starts at 0: --column \"version=EXPR + 1\")", row, what("version"), *v))
		}
	}
	return out, rows.Err()
}

// merges are renames that would make two stored names one. Aggregate
// types never merge (two aggregates would become one, their versions
// colliding or interleaving); event types merge only where an exact rule
// names the stored name (a deliberate "OldName=NewName"), never through a
// prefix rule or a name that is readside's already.
func (p *plan) merges(ctx context.Context, tx pgx.Tx) ([]string, error) {
	if len(p.renames) == 0 {
		return nil, nil
	}
	var out []string
	for _, c := range []struct{ renamed, stored, what string }{{"t", "st", "aggregate type"}, {"et", "set", "event type"}} {
		rows, err := tx.Query(ctx, fmt.Sprintf(`SELECT %[1]s, array_agg(DISTINCT %[2]s ORDER BY %[2]s) FROM (%[3]s) m
			WHERE %[1]s IS NOT NULL GROUP BY %[1]s HAVING count(DISTINCT %[2]s) > 1 ORDER BY 1 LIMIT 100`, c.renamed, c.stored, p.mappedSQL()))
		if err != nil {
			return nil, fmt.Errorf("adopt: check renames on %s: %w", p.t.name, err)
		}
		for rows.Next() {
			var name string
			var storedNames []string
			if err := rows.Scan(&name, &storedNames); err != nil {
				return nil, err
			}
			var implicit []string
			for _, s := range storedNames {
				if _, exact := apply(p.renames, s); !exact {
					implicit = append(implicit, s)
				}
			}
			if c.what == "event type" && len(implicit) < 2 {
				continue
			}
			quoted := make([]string, len(storedNames))
			for i, s := range storedNames {
				quoted[i] = fmt.Sprintf("%q", s)
			}
			out = append(out, fmt.Sprintf("the %ss %s would all be %q in readside's log (--rename): readside refuses to merge stored %ss into one%s",
				c.what, strings.Join(quoted, ", "), name, c.what, map[bool]string{true: " (an exact rule OLD=NEW merges event types on purpose)", false: ""}[c.what == "event type"]))
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
		if len(out) >= maxProblems {
			break
		}
	}
	return out, nil
}

// sequences are aggregates whose versions have a double or a gap, or do
// not continue what readside's log has of them.
func (p *plan) sequences(ctx context.Context, tx pgx.Tx) ([]string, error) {
	events := pgx.Identifier{p.t.readside, "events"}.Sanitize()
	rows, err := tx.Query(ctx, fmt.Sprintf(`SELECT t, a, count(*), count(DISTINCT v), min(v), max(v),
			(array_agg(row_id ORDER BY v, row_id))[1:12], (array_agg(v ORDER BY v, row_id))[1:12],
			(SELECT coalesce(max(e.version), 0) FROM %[1]s e WHERE e.aggregate_type = m.t AND e.aggregate_id = m.a)
		  FROM (%[2]s) m
		 GROUP BY t, a
		HAVING count(*) <> count(DISTINCT v) OR max(v) - min(v) + 1 <> count(*)
		    OR (min(v) > 1 AND NOT EXISTS (SELECT 1 FROM %[1]s e WHERE e.aggregate_type = m.t AND e.aggregate_id = m.a AND e.version = min(m.v) - 1))
		 ORDER BY min(row_id)
		 LIMIT %[3]d`, events, p.mappedSQL(), maxProblems))
	if err != nil {
		return nil, fmt.Errorf("adopt: check versions in %s: %w", p.t.name, err)
	}
	var out []string
	for rows.Next() {
		var t, a string
		var n, distinct, lo, hi, have int64
		var ids, versions []int64
		if err := rows.Scan(&t, &a, &n, &distinct, &lo, &hi, &ids, &versions, &have); err != nil {
			return nil, err
		}
		agg := fmt.Sprintf("%s %s", t, a)
		listed := func() string {
			var parts []string
			for i := range ids {
				parts = append(parts, fmt.Sprintf("v%d id %d", versions[i], ids[i]))
			}
			if int64(len(ids)) < n {
				parts = append(parts, "…")
			}
			return strings.Join(parts, ", ")
		}
		switch {
		case n != distinct:
			var dup int64
			for i := 1; i < len(versions); i++ {
				if versions[i] == versions[i-1] {
					dup = versions[i]
					break
				}
			}
			out = append(out, fmt.Sprintf("%s: version %d is in two rows (%s); readside keeps one event per aggregate version", agg, dup, listed()))
		case hi-lo+1 != n:
			missing := lo
			for i, v := range versions {
				if v != lo+int64(i) {
					missing = lo + int64(i)
					break
				}
			}
			out = append(out, fmt.Sprintf("%s: version %d is missing (%s); readside needs every version of an aggregate", agg, missing, listed()))
		default:
			out = append(out, fmt.Sprintf("%s starts at version %d (%s) but readside's log has it up to version %d; readside needs every version, from 1", agg, lo, listed(), have))
		}
	}
	return out, rows.Err()
}

// warnings are what the table's definition admits that readside refuses:
// such an INSERT of the application's then fails, naming readside's rule.
func (p *plan) warnings(ctx context.Context, tx pgx.Tx) ([]string, error) {
	var out []string
	for _, k := range []string{"id", "aggregate_type", "aggregate_id", "event_type", "event_data", "version"} {
		if s := p.m[k]; s.column != "" && !p.cols[s.column].notNull {
			out = append(out, fmt.Sprintf("column %s.%s (for %s) admits NULL: readside refuses such a row (23502 readside_adopt_not_null)", p.t.name, s.column, k))
		}
	}
	if s := p.m["version"]; s.typ == oidInt8 {
		out = append(out, fmt.Sprintf("%s (for version) is bigint: readside refuses versions above 2147483647 (23514 readside_adopt_version_range)", s.describe()))
	}
	vcol := p.m["version"].column
	if vcol == "" {
		return out, nil
	}
	attnum := p.cols[vcol].attnum
	var checked bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND contype = 'c' AND $2 = ANY(conkey))`,
		p.t.oid, attnum).Scan(&checked); err != nil {
		return nil, fmt.Errorf("adopt: constraints of %s: %w", p.t.name, err)
	}
	if !checked {
		out = append(out, fmt.Sprintf("no CHECK constraint of %s reads column %s (for version): a version below 1 is refused by readside (23514 readside_adopt_version_range)", p.t.name, vcol))
	}
	// One row per aggregate version: a unique index over the identity's
	// columns, the version and (partitioned) the partition key, that
	// includes the version and the aggregate id.
	var allowed []int16
	for _, k := range []string{"aggregate_type", "aggregate_id", "version"} {
		for _, c := range p.m[k].cols {
			allowed = append(allowed, p.cols[c].attnum)
		}
	}
	var unique bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (
		SELECT 1 FROM pg_catalog.pg_index i
		 WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
		   AND $3 = ANY(i.indkey::int2[])
		   AND (i.indkey::int2[])[0:i.indnkeyatts - 1] <@ ($2::int2[] || coalesce((SELECT pt.partattrs::int2[] FROM pg_catalog.pg_partitioned_table pt WHERE pt.partrelid = $1), '{}')))`,
		p.t.oid, allowed, attnum).Scan(&unique); err != nil {
		return nil, fmt.Errorf("adopt: indexes of %s: %w", p.t.name, err)
	}
	if !unique {
		out = append(out, fmt.Sprintf("no unique index of %s keeps one row per aggregate version: a second row for a version is refused by readside (23505 events_aggregate_version_key)", p.t.name))
	}
	slices.Sort(out)
	return out, nil
}
