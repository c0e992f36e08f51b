package cli_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/cli"
)

// An error naming an aggregate whose id holds terminal escapes, or a huge
// one, is printed on one line, escaped and capped.
func TestOneLine(t *testing.T) {
	t.Parallel()
	got := cli.OneLine(errors.New("repair: aggregate \x1b[31mred\x1b]0;pwned\x07 not found:\n\tsecond line"))
	require.Equal(t, `repair: aggregate \x1b[31mred\x1b]0;pwned\x07 not found: second line`, got)
	long := cli.OneLine(errors.New("aggregate " + strings.Repeat("x", 5<<20)))
	require.LessOrEqual(t, len(long), cli.OneLineBytes)
}
