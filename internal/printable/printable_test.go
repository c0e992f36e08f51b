package printable_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/printable"
)

func TestLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"plain ascii-id_1:2.3", "plain ascii-id_1:2.3"},
		{"ünïcødé ✓ 注文", "ünïcødé ✓ 注文"},
		{`back\slash`, `back\slash`},
		{"\x1b[31mred\x1b[0m", `\x1b[31mred\x1b[0m`},
		{"\x1b]0;title\x07", `\x1b]0;title\x07`},
		{"a\nfake line\tcell\r", `a\nfake line\tcell\r`},
		{"nul\x00del\x7f", `nul\x00del\x7f`},
		{"c1 \u009b31m \u0085", `c1 \u009b31m \u0085`},
		{"bidi \u202egnp.exe\u2066", `bidi \u202egnp.exe\u2066`},
		{"bytes \xff\x9b", `bytes \xff\x9b`},
	} {
		require.Equal(t, tc.want, printable.Line(tc.in), "%q", tc.in)
	}
}

func TestText(t *testing.T) {
	t.Parallel()
	require.Equal(t, "{\n\t\"id\": \"\\x1b[2J\\u009b\"\n}", printable.Text("{\n\t\"id\": \"\x1b[2J\u009b\"\n}"))
}

func TestCap(t *testing.T) {
	t.Parallel()
	require.Equal(t, "short", printable.Cap("short", 10))
	require.Equal(t, "abcdefg…", printable.Cap("abcdefghijklmnop", 10))
	require.Len(t, printable.Cap(strings.Repeat("x", 5<<20), 200), 200)
	// Never a broken character: ✓ is 3 bytes.
	got := printable.Cap(strings.Repeat("✓", 100), 10)
	require.Equal(t, "✓✓…", got)
	require.Equal(t, "ab", printable.Cap("abcdef", 2), "too short for the mark")
}
