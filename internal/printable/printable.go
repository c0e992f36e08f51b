// Package printable makes text that readside did not write (aggregate ids,
// event types, errors, queries of other sessions, client input) safe to
// show a person: on a terminal, in a table cell, on one line of an error
// or a log. JSON output needs none of it: encoding/json escapes control
// characters itself.
package printable

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Line returns s with what could act on a terminal or break a line or a
// table escaped, Go style: C0 controls including newline and tab (\n, \t,
// \x1b), DEL (\x7f), C1 controls (\u009b), Unicode's bidirectional
// formatting characters (\u202e), which reorder what follows them on
// screen, and bytes that are not UTF-8 (\xff). Everything else, including
// a backslash, is kept as it is.
func Line(s string) string { return escape(s, false) }

// Text is Line for a block of several lines: it keeps newlines and tabs.
func Text(s string) string { return escape(s, true) }

// Cap returns s cut to at most n bytes, on a character boundary, ending in
// "…" when it was cut.
func Cap(s string, n int) string {
	if len(s) <= n {
		return s
	}
	mark := "…"
	if n < len(mark) {
		mark = ""
	}
	cut := max(n-len(mark), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

func escape(s string, keepLines bool) string {
	if strings.IndexFunc(s, func(r rune) bool { return unsafe(r, keepLines) }) < 0 && utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case !unsafe(r, keepLines):
			b.WriteString(s[i : i+size])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x80:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
		i += size
	}
	return b.String()
}

func unsafe(r rune, keepLines bool) bool {
	switch {
	case keepLines && (r == '\n' || r == '\t'):
		return false
	case unicode.IsControl(r): // C0, DEL, C1
		return true
	case unicode.Is(unicode.Bidi_Control, r):
		return true
	}
	return false
}
