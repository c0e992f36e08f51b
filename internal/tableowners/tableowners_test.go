package tableowners

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "github.com/readside/readside"

// owners names, for every table readside creates, the one package (its
// path inside the module) whose SQL may change it. Everything else goes
// through that package's functions: checkpoint.LockForOperation rather than
// SELECT ... FOR UPDATE on checkpoints, a projection's Reset or Forget
// rather than a TRUNCATE of its tables. An empty owner means no Go code
// writes the table (only SQL functions of the migrations do).
var owners = map[string]string{
	// The log: Append writes events; the events trigger writes the outbox;
	// pruning deletes from it and records the horizon.
	"events":         "outbox",
	"outbox":         "outbox",
	"outbox_horizon": "outbox",
	"event_erasures": "", // readside_erase_event_data (migration 007)
	"snapshots":      "aggregate",
	// The projection registry, cursors, leases and the fleet.
	"projections": "internal/checkpoint",
	"checkpoints": "internal/checkpoint",
	// Where each hash bucket stands after a scale (migration 016).
	"checkpoint_buckets": "internal/checkpoint",
	"workers":            "internal/checkpoint",
	"dead_letters":       "internal/deadletter",
	// The side-effect ledger: Batch.SideEffectsDue, in the apply
	// transaction.
	"side_effects": "projectors",
	// What each `projector verify` found.
	"verifications": "internal/control",
	// Read models: the projection's package, which repair and reset call
	// through Projection.Reset and Forgetter.Forget.
	"order_summary":           "projectors/ordersummary",
	"order_details":           "projectors/orderdetails",
	"order_items":             "projectors/orderdetails",
	"products":                "projectors/products",
	"order_statistics":        "projectors/orderstatistics",
	"order_statistics_orders": "projectors/orderstatistics",
	"order_notifications":     "projectors/notifications",
	"shipped_per_day":         "examples/shippedperday",
	"customer_totals":         "examples/embedded",
	// Schema bookkeeping.
	"readside_migrations": "migrations",
	"readside_adoptions":  "adopt",
	// Adoption's bookkeeping: the claims of the backfill and the trigger
	// (also the _claim functions adopt generates), the changes of adopted
	// tables (readside_adopt_changed, migration 011; adopt --remove
	// forgets them).
	"readside_adoption_claims":  "adopt",
	"readside_adoption_changes": "adopt",
}

// A write is one statement of a package that changes (or locks rows of) a
// table.
type write struct {
	pkg, table, verb string
	pos              token.Position
}

func TestOneWritingPackagePerTable(t *testing.T) {
	root := moduleRoot(t)
	writes, created := scan(t, root)

	for _, table := range created {
		_, ok := owners[table]
		require.True(t, ok, "table %s has no declared owner: add it to owners", table)
	}
	seen := false
	for _, w := range writes {
		owner, known := owners[w.table]
		if !known {
			continue // not one of readside's tables (River's, a test's)
		}
		if w.pkg == "internal/checkpoint" && w.table == "checkpoints" {
			seen = true
		}
		if w.pkg != owner {
			t.Errorf("%s: package %s %s %s, which only %s may change", w.pos, w.pkg, w.verb, w.table, ownerName(owner))
		}
	}
	require.True(t, seen, "the scanner found no write of checkpoint to checkpoints: it is broken")
}

func ownerName(owner string) string {
	if owner == "" {
		return "the migrations' SQL functions"
	}
	return "package " + owner
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	require.Contains(t, string(b), "module "+module+"\n")
	return root
}

// scan parses every non-test Go file of the module (not nested modules such
// as bench/) and returns the writes found in its string literals and the
// tables created by the migrations and by Go code.
func scan(t *testing.T, root string) ([]write, []string) {
	t.Helper()
	var writes []write
	var created []string
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || exists(filepath.Join(path, "go.mod"))) {
				return filepath.SkipDir
			}
			// make mutants runs no SQL: its strings are text of the
			// owning packages' source, the old statements a mutation
			// puts back in a copy of the repository.
			if rel, _ := filepath.Rel(root, path); filepath.ToSlash(rel) == "scripts/mutants" {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		pkg := filepath.ToSlash(rel)
		switch {
		case strings.HasSuffix(path, ".up.sql"):
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			created = append(created, createdTables(string(b))...)
		case strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go"):
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.BasicLit:
					if n.Kind != token.STRING {
						return true
					}
					s, err := strconv.Unquote(n.Value)
					if err != nil {
						return true
					}
					created = append(created, createdTables(s)...)
					for _, st := range statements(s) {
						writes = append(writes, write{pkg: pkg, table: st.table, verb: st.verb, pos: fset.Position(n.Pos())})
					}
				case *ast.CallExpr:
					// pgx's CopyFrom names its table as a pgx.Identifier.
					if sel, ok := n.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "CopyFrom" && len(n.Args) > 1 {
						if table := identifierTable(n.Args[1]); table != "" {
							writes = append(writes, write{pkg: pkg, table: table, verb: "COPY into", pos: fset.Position(n.Pos())})
						}
					}
				}
				return true
			})
		}
		return nil
	})
	require.NoError(t, err)
	slices.Sort(created)
	return writes, slices.Compact(created)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

const name = `"?([A-Za-z_][A-Za-z0-9_]*"?(?:\."?[A-Za-z_][A-Za-z0-9_]*"?)?)`

var (
	createRE  = regexp.MustCompile(`(?i)\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?` + name)
	commentRE = regexp.MustCompile(`--[^\n]*`)
	writeRE   = regexp.MustCompile(`(?i)\b(INSERT\s+INTO|DELETE\s+FROM|MERGE\s+INTO|COPY|UPDATE)\s+(?:ONLY\s+)?` + name)
	truncRE   = regexp.MustCompile(`(?i)\bTRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?((?:` + name + `\s*,\s*)*` + name + `)`)
	lockRE    = regexp.MustCompile(`(?i)\bFOR\s+(?:NO\s+KEY\s+UPDATE|UPDATE|KEY\s+SHARE|SHARE)(\s+OF\s+\w+(?:\s*,\s*\w+)*)?`)
	fromRE    = regexp.MustCompile(`(?i)\b(?:FROM|JOIN)\s+` + name + `(?:\s+(?:AS\s+)?(\w+))?`)
	beforeRE  = regexp.MustCompile(`(?i)\b(DO|FOR|KEY)\s*$`)
)

func createdTables(s string) []string {
	var out []string
	for _, m := range createRE.FindAllStringSubmatch(commentRE.ReplaceAllString(s, ""), -1) {
		out = append(out, bare(m[1]))
	}
	return out
}

type statement struct{ verb, table string }

// statements finds what a literal's SQL changes or locks. An UPDATE after
// DO (ON CONFLICT DO UPDATE) or FOR (a row lock) is not a statement of its
// own; a lock counts against the tables it names (FOR UPDATE OF alias) or
// every table the query reads (FROM and JOIN) when it names none.
func statements(s string) []statement {
	s = commentRE.ReplaceAllString(s, "")
	var out []statement
	for _, m := range writeRE.FindAllStringSubmatchIndex(s, -1) {
		verb := strings.ToUpper(strings.Join(strings.Fields(s[m[2]:m[3]]), " "))
		if verb == "UPDATE" && beforeRE.MatchString(s[:m[0]]) {
			continue
		}
		out = append(out, statement{verb, bare(s[m[4]:m[5]])})
	}
	for _, m := range truncRE.FindAllStringSubmatch(s, -1) {
		for _, t := range strings.Split(m[1], ",") {
			out = append(out, statement{"TRUNCATE", bare(strings.TrimSpace(t))})
		}
	}
	if locks := lockRE.FindAllStringSubmatch(s, -1); len(locks) > 0 {
		aliases := map[string]string{}
		var read []string
		for _, m := range fromRE.FindAllStringSubmatch(s, -1) {
			table := bare(m[1])
			read = append(read, table)
			aliases[table] = table
			if m[2] != "" {
				aliases[m[2]] = table
			}
		}
		for _, l := range locks {
			of := strings.TrimSpace(l[1])
			if of == "" {
				for _, table := range read {
					out = append(out, statement{"locks rows of", table})
				}
				continue
			}
			for _, a := range strings.Split(strings.TrimSpace(of[2:]), ",") {
				if table, ok := aliases[strings.TrimSpace(a)]; ok {
					out = append(out, statement{"locks rows of", table})
				}
			}
		}
	}
	return out
}

// bare drops a schema and quotes: readside's tables live in the schema it
// was migrated into, whatever its name.
func bare(n string) string {
	n = strings.ReplaceAll(n, `"`, "")
	if i := strings.LastIndexByte(n, '.'); i >= 0 {
		n = n[i+1:]
	}
	return strings.ToLower(n)
}

func identifierTable(e ast.Expr) string {
	cl, ok := e.(*ast.CompositeLit)
	if !ok || len(cl.Elts) == 0 {
		return ""
	}
	lit, ok := cl.Elts[len(cl.Elts)-1].(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return ""
	}
	s, _ := strconv.Unquote(lit.Value)
	return s
}

// The scanner itself, on the shapes readside's SQL takes.
func TestStatements(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		sql  string
		want []statement
	}{
		{`INSERT INTO projections (name) VALUES ($1) ON CONFLICT (name) DO UPDATE SET x = 1`, []statement{{"INSERT INTO", "projections"}}},
		{`UPDATE checkpoints c SET x = 1 FROM (SELECT 1 FROM checkpoints c2 FOR UPDATE OF c2 SKIP LOCKED) f`,
			[]statement{{"UPDATE", "checkpoints"}, {"locks rows of", "checkpoints"}}},
		{`SELECT 1 FROM checkpoints WHERE projection = $1 FOR UPDATE`, []statement{{"locks rows of", "checkpoints"}}},
		{`SELECT d.id FROM dead_letters d JOIN events e ON e.id = d.event_id FOR UPDATE OF d`, []statement{{"locks rows of", "dead_letters"}}},
		{`TRUNCATE order_details, "public".order_items`, []statement{{"TRUNCATE", "order_details"}, {"TRUNCATE", "order_items"}}},
		{"DELETE FROM order_statistics;\n-- an UPDATE ... FROM x\nINSERT INTO order_statistics (status) VALUES ('a')",
			[]statement{{"DELETE FROM", "order_statistics"}, {"INSERT INTO", "order_statistics"}}},
		{`COPY events FROM STDIN`, []statement{{"COPY", "events"}}},
		{`SELECT * FROM checkpoints FOR NO KEY UPDATE`, []statement{{"locks rows of", "checkpoints"}}},
	} {
		require.Equal(t, c.want, statements(c.sql), c.sql)
	}
}
