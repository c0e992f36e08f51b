package projectors

import (
	"slices"

	"github.com/readside/readside/internal/checkpoint"
)

// assign spreads every segment over the live workers that run its
// projection, as evenly as the fleet allows: segments are dealt out in a
// fixed order (projection name, segment number), each to the eligible worker
// holding the fewest so far (ties by worker id). Every worker computes the
// same assignment from the same fleet view, claims what is its own and
// releases what is not, so work spreads on join and leave without a
// coordinator. A mixed fleet (workers with different --projections) leaves
// no segment unowned. base maps a rebuild's copy to the projection it
// rebuilds: the copy goes to the workers that run that one.
func assign(members []checkpoint.Member, segments map[string]int, base func(string) string) map[checkpoint.Segment]string {
	runs := map[string][]string{} // projection -> worker ids, sorted
	for _, m := range members {
		for _, p := range m.Projections {
			runs[p] = append(runs[p], m.ID)
		}
	}
	for _, ids := range runs {
		slices.Sort(ids)
	}
	names := make([]string, 0, len(segments))
	for name := range segments {
		names = append(names, name)
	}
	slices.Sort(names)
	load := map[string]int{}
	out := map[checkpoint.Segment]string{}
	for _, name := range names {
		eligible := runs[base(name)]
		if len(eligible) == 0 {
			continue
		}
		for seg := range segments[name] {
			best := eligible[0]
			for _, id := range eligible[1:] {
				if load[id] < load[best] {
					best = id
				}
			}
			load[best]++
			out[checkpoint.Segment{Projection: name, Segment: seg}] = best
		}
	}
	return out
}
