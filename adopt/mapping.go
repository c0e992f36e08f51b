package adopt

import (
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"
)

// Keys are readside's column names that --columns maps, in the order the
// copy writes them. Required ones must exist in the adopted table; metadata
// and occurred_at may be absent ('{}' and now() then).
var Keys = []string{"id", "aggregate_type", "aggregate_id", "event_type", "event_data", "metadata", "version", "occurred_at"}

var optional = map[string]bool{"metadata": true, "occurred_at": true}

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
// the same name.
func ParseColumns(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	known := map[string]bool{}
	for _, k := range Keys {
		known[k] = true
	}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case !ok || k == "" || v == "":
			return nil, fmt.Errorf("--columns: %q is not KEY=COLUMN", part)
		case !known[k]:
			return nil, fmt.Errorf("--columns: unknown key %q (keys: %s)", k, strings.Join(Keys, ", "))
		case out[k] != "":
			return nil, fmt.Errorf("--columns: %s given twice", k)
		}
		out[k] = v
	}
	return out, nil
}

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
