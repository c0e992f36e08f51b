package projectors

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
)

func TestAssign(t *testing.T) {
	t.Parallel()
	same := func(s string) string { return s }
	perWorker := func(a map[checkpoint.Segment]string) map[string]int {
		out := map[string]int{}
		for _, w := range a {
			out[w]++
		}
		return out
	}
	all := []string{"a", "b", "c", "d", "e"}
	one := map[string]int{"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}

	// Five one-segment projections over two, then three workers.
	a := assign([]checkpoint.Member{{ID: "w1", Projections: all}, {ID: "w2", Projections: all}}, one, same)
	require.Len(t, a, 5)
	require.Equal(t, map[string]int{"w1": 3, "w2": 2}, perWorker(a))
	a = assign([]checkpoint.Member{{ID: "w1", Projections: all}, {ID: "w2", Projections: all}, {ID: "w3", Projections: all}}, one, same)
	require.Equal(t, map[string]int{"w1": 2, "w2": 2, "w3": 1}, perWorker(a))

	// A mixed fleet: every segment has an owner that runs it.
	mixed := []checkpoint.Member{{ID: "both", Projections: []string{"a", "b"}}, {ID: "only-b", Projections: []string{"b"}}}
	a = assign(mixed, map[string]int{"a": 4, "b": 4}, same)
	require.Len(t, a, 8)
	for seg, w := range a {
		if seg.Projection == "a" {
			require.Equal(t, "both", w)
		}
	}
	// Balanced as far as eligibility allows: a's 4 must go to "both",
	// so b's go mostly to "only-b".
	require.Equal(t, map[string]int{"both": 4, "only-b": 4}, perWorker(a))

	// A rebuild's copy goes to the workers of the projection it rebuilds.
	a = assign(mixed, map[string]int{"a": 2, "a__rebuild": 2}, func(s string) string {
		if s == "a__rebuild" {
			return "a"
		}
		return s
	})
	require.Equal(t, map[string]int{"both": 4}, perWorker(a))

	// Nobody runs it: no owner (the alert on ownerless segments fires).
	a = assign(mixed, map[string]int{"z": 3}, same)
	require.Empty(t, a)
}
