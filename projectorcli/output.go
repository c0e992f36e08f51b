package projectorcli

import (
	"encoding/json"
	"io"
	"strings"

	"github.com/readside/readside/internal/printable"
)

// writeJSON prints v as indented JSON, the --json output of every command.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// cell is s, text from the database, for a table cell or a one-line
// field: at most n bytes of it, with control characters escaped so that
// it can neither act on the terminal nor forge a line.
func cell(s string, n int) string { return printable.Line(printable.Cap(s, n)) }

// firstLine is the first line of s as a cell of at most n bytes.
func firstLine(s string, n int) string {
	s, _, _ = strings.Cut(s, "\n")
	return cell(s, n)
}
