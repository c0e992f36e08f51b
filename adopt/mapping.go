package adopt

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"unicode/utf8"
)

// Keys are readside's column names that the mapping gives a value for, in
// the order the copy writes them. Required ones must have a source;
// metadata and occurred_at may have none ('{}' and now() then).
var Keys = []string{"id", "aggregate_type", "aggregate_id", "event_type", "event_data", "metadata", "version", "occurred_at"}

var optional = map[string]bool{"metadata": true, "occurred_at": true}

func knownKey(k string) bool {
	for _, key := range Keys {
		if k == key {
			return true
		}
	}
	return false
}

// Rename maps a stored event or aggregate type name to the name projections
// know. With Prefix, From and To are prefixes: "Domain::Orders::Events::*=*"
// turns Domain::Orders::Events::OrderPlaced into OrderPlaced.
type Rename struct {
	From   string `json:"from"`
	To     string `json:"to"`
	Prefix bool   `json:"prefix,omitempty"`
}

// ParseColumns reads "aggregate_id=COL,version=COL,...": keys are readside's
// names (Keys), values the table's columns. An omitted key means a column of
// the same name. Expressions, which may hold commas, go through ParseColumn.
func ParseColumns(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case !ok || k == "" || v == "":
			return nil, fmt.Errorf("--columns: %q is not KEY=COLUMN", part)
		case !knownKey(k):
			return nil, fmt.Errorf("--columns: unknown key %q (keys: %s)", k, strings.Join(Keys, ", "))
		case out[k] != "":
			return nil, fmt.Errorf("--columns: %s given twice", k)
		}
		out[k] = v
	}
	return out, nil
}

// ParseColumn reads one "KEY=EXPR" (--column): KEY one of Keys, EXPR a
// column of the table or an immutable SQL expression over its columns
// ("split_part(stream, '-', 1)"). Only the first "=" separates them.
func ParseColumn(s string) (key, expr string, err error) {
	k, v, ok := strings.Cut(s, "=")
	k, v = strings.TrimSpace(k), strings.TrimSpace(v)
	switch {
	case !ok || k == "" || v == "":
		return "", "", fmt.Errorf("--column: %q is not KEY=EXPR", s)
	case !knownKey(k):
		return "", "", fmt.Errorf("--column: unknown key %q (keys: %s)", k, strings.Join(Keys, ", "))
	}
	return k, v, nil
}

// identRE is what a bare column name looks like; anything else in a
// mapping is an expression.
var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*$`)

// ParseRenames reads "STORED=READSIDE,...", where a pair whose both sides
// end in "*" is a prefix rule.
func ParseRenames(s string) ([]Rename, error) {
	var out []Rename
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		from, to, ok := strings.Cut(strings.TrimSpace(part), "=")
		from, to = strings.TrimSpace(from), strings.TrimSpace(to)
		if !ok || from == "" {
			return nil, fmt.Errorf("--rename: %q is not STORED=READSIDE", part)
		}
		fp, tp := strings.HasSuffix(from, "*"), strings.HasSuffix(to, "*")
		switch {
		case fp != tp:
			return nil, fmt.Errorf("--rename: %q: a prefix rule has * on both sides (Prefix::*=*)", part)
		case fp:
			out = append(out, Rename{From: strings.TrimSuffix(from, "*"), To: strings.TrimSuffix(to, "*"), Prefix: true})
		case to == "":
			return nil, fmt.Errorf("--rename: %q renames to nothing", part)
		default:
			out = append(out, Rename{From: from, To: to})
		}
	}
	// Exact names before prefixes; prefixes longest first, so the most
	// specific rule wins whatever the order given.
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Prefix != out[j].Prefix {
			return !out[i].Prefix
		}
		return out[i].Prefix && len(out[i].From) > len(out[j].From)
	})
	return out, nil
}

// apply is the name renames give stored, and whether an exact rule gave
// it (a deliberate merge, see mergeRefusal).
func apply(renames []Rename, stored string) (name string, exact bool) {
	for _, r := range renames {
		switch {
		case !r.Prefix && stored == r.From:
			return r.To, true
		case r.Prefix && strings.HasPrefix(stored, r.From):
			return r.To + strings.TrimPrefix(stored, r.From), false
		}
	}
	return stored, false
}

// renameSQL is a CASE expression applying renames to the text expression x.
func renameSQL(x string, renames []Rename) string {
	if len(renames) == 0 {
		return x
	}
	var b strings.Builder
	b.WriteString("CASE")
	for _, r := range renames {
		if r.Prefix {
			fmt.Fprintf(&b, " WHEN starts_with(%s, %s) THEN %s || substr(%s, %d)", x, literal(r.From), literal(r.To), x, utf8.RuneCountInString(r.From)+1)
		} else {
			fmt.Fprintf(&b, " WHEN %s = %s THEN %s", x, literal(r.From), literal(r.To))
		}
	}
	fmt.Fprintf(&b, " ELSE %s END", x)
	return b.String()
}

// literal quotes s as an SQL string literal (standard_conforming_strings,
// the default since PostgreSQL 9.1).
func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
