package modeltest

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/readside/readside/outbox"
)

// The model: what readside promises, in memory. It is driven by the same
// steps as the database, and takes from the database only what no
// promise fixes (transaction ids, event ids, occurrence times).

// event is a committed (or pending) event as the model knows it.
type event struct {
	id      int64
	txid    uint64
	agg     string
	version int
	pl      payload
}

func (e *event) cursor() outbox.Cursor { return outbox.Cursor{TxID: e.txid, Position: e.id} }

// slot is a write transaction held open across steps.
type slot struct {
	open bool
	xid  uint64 // 0 while the transaction has no xid
	// registered: an event statement of it succeeded and was not rolled
	// back, so the events trigger registered it: it holds the read window
	// until it ends. A transaction with an xid that is not registered
	// holds nothing back once the read fence has passed it, and is refused
	// (40001) if it then writes an event.
	registered bool
	pending    []*event
}

// fenced reports whether slot s may no longer write events: it has an
// xid below the read fence and was not registered before.
func (s *slot) fenced(fence uint64) bool { return s.xid != 0 && !s.registered && s.xid < fence }

func (s *slot) pendingVersion(agg string) int {
	v := 0
	for _, e := range s.pending {
		if e.agg == agg {
			v = max(v, e.version)
		}
	}
	return v
}

type deadLetter struct {
	status string // parked, retried, discarded
	reason string // failed, blocked
}

type aggState struct {
	last int
	seq  []string
}

// projModel is one projection's promised state.
type projModel struct {
	name      string
	shadow    *projModel     // a rebuild in progress
	live      *projModel     // of a rebuild's copy: the live projection
	paused    bool           // runs pass it over
	halt      bool           // its policy is Halt (one segment): a failing event stops it
	halted    bool           // a failing event stopped it (status failed) until a resume or reset
	processed map[int64]bool // events its checkpoint has passed
	state     map[string]*aggState
	count     int64
	effects   map[int64]int // side effects fired per event id: once each, ever
	dl        map[int64]*deadLetter
}

func newProjModel(name string) *projModel {
	return &projModel{name: name, processed: map[int64]bool{}, state: map[string]*aggState{},
		effects: map[int64]int{}, dl: map[int64]*deadLetter{}}
}

type model struct {
	committed map[string][]*event // per aggregate, in version order
	all       []*event            // committed, in commit order
	byID      map[int64]*event
	slots     []*slot
	cured     map[string]bool
	projs     []*projModel
}

func newModel(projections []string, slots int) *model {
	m := &model{committed: map[string][]*event{}, byID: map[int64]*event{}, cured: map[string]bool{}}
	for range slots {
		m.slots = append(m.slots, &slot{})
	}
	for _, n := range projections {
		m.projs = append(m.projs, newProjModel(n))
	}
	return m
}

func (m *model) proj(name string) *projModel {
	for _, p := range m.projs {
		if p.name == name {
			return p
		}
	}
	panic("modeltest: unknown projection " + name)
}

func (m *model) version(agg string) int { return len(m.committed[agg]) }

// busy reports whether an open slot other than except has pending writes
// to agg: writing it elsewhere would wait for that slot's row locks.
func (m *model) busy(agg string, except int) bool {
	for i, s := range m.slots {
		if i != except && s.open && s.pendingVersion(agg) > 0 {
			return true
		}
	}
	return false
}

func (m *model) commit(events []*event) {
	for _, e := range events {
		m.committed[e.agg] = append(m.committed[e.agg], e)
		m.all = append(m.all, e)
		m.byID[e.id] = e
	}
	for _, evs := range m.committed {
		sort.Slice(evs, func(i, j int) bool { return evs[i].version < evs[j].version })
	}
}

// horizon is the smallest xid of an open registered slot: events of
// transactions at or beyond it are outside the read window. 0 means none.
// Unregistered slots hold the window only until the fence passes them,
// which a run waits for.
func (m *model) horizon() uint64 {
	var h uint64
	for _, s := range m.slots {
		if s.open && s.registered && (h == 0 || s.xid < h) {
			h = s.xid
		}
	}
	return h
}

func (m *model) visible(e *event) bool {
	h := m.horizon()
	return h == 0 || e.txid < h
}

// target is the cursor every segment must reach for a run to have caught
// up: the last visible event in read order.
func (m *model) target() outbox.Cursor {
	var c outbox.Cursor
	for _, e := range m.all {
		if m.visible(e) && c.Less(e.cursor()) {
			c = e.cursor()
		}
	}
	return c
}

// predict says which SQLSTATEs a statement writing rows in slot s may fail
// with (nil: it succeeds), the read fence being fence. xid is the slot's
// xid before the statement.
func (m *model) predict(s *slot, st stmt, fence uint64) []string {
	rows := st.Rows
	if st.Via == "update" || st.Via == "delete" {
		return []string{"55000"}
	}
	seen := map[[2]any]bool{}
	in := map[string]map[int]bool{}
	taken := false
	for _, r := range rows {
		k := [2]any{r.Agg, r.Version}
		if seen[k] || r.Version <= max(m.version(r.Agg), s.pendingVersion(r.Agg)) {
			taken = true
		}
		seen[k] = true
		if in[r.Agg] == nil {
			in[r.Agg] = map[int]bool{}
		}
		in[r.Agg][r.Version] = true
	}
	if taken {
		return []string{"23505"}
	}
	if s.fenced(fence) {
		return []string{"40001"} // readside_read_fence, before every other rule of the trigger
	}
	var codes []string
	if st.Via == "forge" {
		codes = append(codes, "23514")
	}
	for i, r := range rows {
		if r.Version == 1 {
			continue
		}
		prev := r.Version - 1
		if slices.IndexFunc(rows[i+1:], func(o row) bool { return o.Agg == r.Agg && o.Version == prev }) >= 0 {
			codes = append(codes, "23514") // after its predecessor in the statement's row order
		}
		switch {
		case in[r.Agg][prev] || prev <= s.pendingVersion(r.Agg):
			// same transaction: its xid, never newer
		case prev <= m.version(r.Agg):
			if s.xid != 0 && m.committed[r.Agg][prev-1].txid > s.xid {
				codes = append(codes, "40001")
			}
		default:
			codes = append(codes, "23514")
		}
	}
	slices.Sort(codes)
	return slices.Compact(codes)
}

// process is a runner passing event e (in version order per aggregate).
// A projection with policy Halt does not pass a failing event: it stops
// there (and reports false).
func (m *model) process(p *projModel, e *event) bool {
	if p.halt && e.pl.Poison && !m.cured[e.agg] {
		if d := p.dl[e.id]; d == nil || d.status != "discarded" {
			p.halted = true
			return false
		}
	}
	p.processed[e.id] = true
	if d := p.dl[e.id]; d != nil && (d.status == "parked" || d.status == "discarded") {
		return true // already parked, or given up by an operator
	}
	if p.live != nil {
		if d := p.live.dl[e.id]; d != nil && d.status == "discarded" {
			return true // a rebuild's copy skips what an operator discarded from the live projection
		}
	}
	if p.aggParked(m, e.agg) {
		p.dl[e.id] = &deadLetter{status: "parked", reason: "blocked"}
		return true
	}
	if e.pl.Poison && !m.cured[e.agg] {
		p.dl[e.id] = &deadLetter{status: "parked", reason: "failed"}
		return true
	}
	p.apply(e)
	return true
}

func (p *projModel) aggParked(m *model, agg string) bool {
	for id, d := range p.dl {
		if d.status == "parked" && m.byID[id].agg == agg {
			return true
		}
	}
	return false
}

// apply applies e. Its side effect fires the first time the event is
// applied, whichever path applies it (a replay after a reset, a rebuild's
// copy, a retry): p.effects is shared with a rebuild's copy and survives
// resets.
func (p *projModel) apply(e *event) {
	s := p.state[e.agg]
	if s == nil {
		s = &aggState{}
		p.state[e.agg] = s
	}
	switch {
	case e.version <= s.last:
	case e.version == s.last+1:
		s.seq = append(s.seq, fmt.Sprint(e.version))
		s.last = e.version
	default:
		s.seq = append(s.seq, fmt.Sprintf("!%d", e.version))
		s.last = e.version
	}
	p.count++
	p.effects[e.id] = 1
}

// run is a projector run until caught up with the read window.
func (m *model) run() {
	for _, p := range m.projs {
		for _, q := range []*projModel{p, p.shadow} {
			if q == nil || q == p && (p.paused || p.halted) {
				continue
			}
			if q.halt {
				// One segment, in read order, up to the first failing event.
				m.runHalting(q)
				continue
			}
			for _, agg := range slices.Sorted(maps.Keys(m.committed)) {
				for _, e := range m.committed[agg] {
					// A rebuild's copy never passes the live projection.
					if m.visible(e) && !q.processed[e.id] && (q.live == nil || q.live.processed[e.id]) {
						m.process(q, e)
					}
				}
			}
		}
	}
}

// runHalting runs projection p, whose policy is Halt, in read order
// until an event fails.
func (m *model) runHalting(p *projModel) {
	evs := slices.Clone(m.all)
	slices.SortFunc(evs, func(a, b *event) int { return a.cursor().Compare(b.cursor()) })
	for _, e := range evs {
		if !m.visible(e) || p.processed[e.id] {
			continue
		}
		if p.live != nil && !p.live.processed[e.id] {
			return // a rebuild's copy never passes the live projection
		}
		if !m.process(p, e) {
			return
		}
	}
}

// rebuild starts building a copy of p from the start. Its side effects are
// p's (one ledger, under the live name): the copy fires only those of
// events p never applied (parked there, cured since).
func (p *projModel) rebuild(name string) {
	p.shadow = newProjModel(name)
	p.shadow.effects = p.effects
	p.shadow.live = p
	p.shadow.halt = p.halt
}

// switchIn replaces p's state with its copy's. Of p's dead letters only
// the discards stand (the copy skipped those events); the copy's others
// come over.
func (p *projModel) switchIn() {
	c := p.shadow
	p.shadow = nil
	dl := map[int64]*deadLetter{}
	for id, d := range p.dl {
		if d.status == "discarded" {
			dl[id] = d
		}
	}
	for id, d := range c.dl {
		if dl[id] == nil {
			dl[id] = d
		}
	}
	p.processed, p.state, p.count, p.dl = c.processed, c.state, c.count, dl
	if p.halted {
		p.halted = c.halted // a failed live projection takes the copy's status
	}
}

// repair forgets aggregate agg's state in p and re-applies, in version
// order, the events p's checkpoint has passed but those discarded; parked
// ones are marked retried. It changes nothing, and reports false, when one
// of them still fails (the whole repair rolls back).
func (m *model) repair(p *projModel, agg string) bool {
	var evs []*event
	for _, e := range m.committed[agg] {
		if d := p.dl[e.id]; !p.processed[e.id] || (d != nil && d.status == "discarded") {
			continue
		}
		if e.pl.Poison && !m.cured[agg] {
			return false
		}
		evs = append(evs, e)
	}
	delete(p.state, agg)
	for _, e := range evs {
		p.apply(e)
		if d := p.dl[e.id]; d != nil && d.status == "parked" {
			d.status = "retried"
		}
	}
	return true
}

// retry re-applies every parked dead letter of p, aggregate by aggregate in
// version order, until one fails again.
func (m *model) retry(p *projModel) int {
	byAgg := map[string][]*event{}
	for id, d := range p.dl {
		if d.status == "parked" {
			e := m.byID[id]
			byAgg[e.agg] = append(byAgg[e.agg], e)
		}
	}
	n := 0
	for _, evs := range byAgg {
		sort.Slice(evs, func(i, j int) bool { return evs[i].version < evs[j].version })
		for _, e := range evs {
			if e.pl.Poison && !m.cured[e.agg] {
				p.dl[e.id].reason = "failed"
				break
			}
			p.apply(e)
			p.dl[e.id].status = "retried"
			n++
		}
	}
	return n
}

func (p *projModel) parkedIDs() []int64 {
	var ids []int64
	for id, d := range p.dl {
		if d.status == "parked" {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

func (p *projModel) discard(ids []int64) {
	for _, id := range ids {
		if d := p.dl[id]; d != nil && d.status == "parked" {
			d.status = "discarded"
		}
	}
}

func (p *projModel) resetToStart() {
	p.halted = false
	p.processed = map[int64]bool{}
	p.state = map[string]*aggState{}
	p.count = 0
	p.dl = map[int64]*deadLetter{}
}

// resetTo moves p's checkpoint to c: events after it are processed again.
func (m *model) resetTo(p *projModel, c outbox.Cursor) {
	p.halted = false
	for id := range p.processed {
		if c.Less(m.byID[id].cursor()) {
			delete(p.processed, id)
		}
	}
}

// snapshot is a projection's observable state, in a form that compares
// and prints well.
type snapshot struct {
	State   map[string]string // aggregate -> "last|seq"
	Count   int64
	Effects map[int64]int
	Dead    map[int64]string // event id -> "status/reason"
	Halted  bool             // a segment's status is failed
}

func (p *projModel) snapshot() snapshot {
	s := snapshot{State: map[string]string{}, Count: p.count, Effects: map[int64]int{}, Dead: map[int64]string{}, Halted: p.halted}
	for agg, st := range p.state {
		s.State[agg] = fmt.Sprintf("%d|%s", st.last, strings.Join(st.seq, ","))
	}
	maps.Copy(s.Effects, p.effects)
	for id, d := range p.dl {
		s.Dead[id] = d.status + "/" + d.reason
	}
	return s
}
