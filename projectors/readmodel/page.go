package readmodel

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/outbox"
)

// Querier is what the read models' queries need: a *pgxpool.Pool,
// *pgx.Conn or pgx.Tx.
type Querier = outbox.Querier

// Select is a list query built one filter at a time: a statement per
// combination of filters rather than "$1 IS NULL OR ...", so that each gets
// a plan that uses its index.
type Select struct {
	sql   string
	where []string
	args  []any
}

// NewSelect starts a list query; sql is the SELECT up to and including its
// FROM.
func NewSelect(sql string) *Select { return &Select{sql: sql} }

// Arg adds an argument and returns its placeholder ($n).
func (s *Select) Arg(v any) string {
	s.args = append(s.args, v)
	return "$" + strconv.Itoa(len(s.args))
}

// Where adds a condition; the conditions are ANDed.
func (s *Select) Where(cond string) { s.where = append(s.where, cond) }

// Column is a column of a Keyset with the SQL type a cursor value for it is
// cast to.
type Column struct{ Name, Type string }

// Keyset is the order of a paged list: columns that are unique together, all
// ascending or all descending. A page resumes after the key of the previous
// page's last row (keyset paging), so its cost does not grow with how deep
// it is; the ORDER BY and the condition that resumes are both derived from
// the Keyset, so they cannot disagree.
type Keyset struct {
	Columns    []Column
	Descending bool
}

// Page runs s in the order of k, starting after the row whose key is after
// (one value per column; nil for the first page), and returns up to limit
// rows and whether more follow: it reads one row more than it returns.
func Page[T any](ctx context.Context, db Querier, s *Select, k Keyset, after []any, limit int, scan pgx.RowToFunc[T]) ([]T, bool, error) {
	names := make([]string, len(k.Columns))
	for i, c := range k.Columns {
		names[i] = c.Name
	}
	if after != nil {
		values := make([]string, len(k.Columns))
		for i, c := range k.Columns {
			values[i] = s.Arg(after[i]) + "::" + c.Type
		}
		op := ">"
		if k.Descending {
			op = "<"
		}
		s.Where("(" + strings.Join(names, ", ") + ") " + op + " (" + strings.Join(values, ", ") + ")")
	}
	order := strings.Join(names, ", ")
	if k.Descending {
		order = strings.Join(names, " DESC, ") + " DESC"
	}
	sql := s.sql
	if len(s.where) > 0 {
		sql += " WHERE " + strings.Join(s.where, " AND ")
	}
	sql += " ORDER BY " + order + " LIMIT " + s.Arg(limit+1)
	rows, err := db.Query(ctx, sql, s.args...)
	if err != nil {
		return nil, false, err
	}
	list, err := pgx.CollectRows(rows, scan)
	if err != nil || len(list) <= limit {
		return list, false, err
	}
	return list[:limit], true, nil
}

// UTC is t in UTC, nil when t is: the read models answer in UTC whatever
// the session's time zone.
func UTC(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
