package modeltest

import (
	"flag"
	"os"
	"strconv"
	"testing"

	"pgregory.net/rapid"

	"github.com/readside/readside/internal/pgtest"
)

// Sizes of the short form (make test) and the long form (READSIDE_MODEL=long,
// make model). -rapid.checks and RAPID_CHECKS override the number of checks.
const (
	shortChecks, shortSteps = 10, 20
	longChecks, longSteps   = 200, 50
)

func sizes() (checks, steps int) {
	checks, steps = shortChecks, shortSteps
	if os.Getenv("READSIDE_MODEL") == "long" {
		checks, steps = longChecks, longSteps
	}
	set := os.Getenv("RAPID_CHECKS") != ""
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "rapid.checks" })
	if set {
		checks, _ = strconv.Atoi(flag.Lookup("rapid.checks").Value.String())
	}
	return checks, steps
}

// TestModel generates histories, runs each against the database and the
// model, and compares them after every step that can change a read model.
func TestModel(t *testing.T) {
	pool := pgtest.NewDB(t)
	checks, maxSteps := sizes()
	if err := flag.Set("rapid.checks", strconv.Itoa(checks)); err != nil {
		t.Fatal(err)
	}
	rapid.Check(t, func(rt *rapid.T) {
		cfg := config{BatchSize: rapid.SampledFrom([]int{1, 2, 5, 1000}).Draw(rt, "batch"), MaxAttempts: 1,
			Halt: rapid.IntRange(0, 2).Draw(rt, "halt") == 0}
		if enabled.Attempts {
			cfg.MaxAttempts = rapid.IntRange(1, 3).Draw(rt, "attempts")
		}
		h := newHarness(rt, pool, cfg)
		defer h.close()
		g := generator{h}
		rt.Logf("config: %#v", cfg)
		for i := range rapid.IntRange(1, maxSteps).Draw(rt, "steps") {
			s := g.next(rt)
			func() {
				done := false
				defer func() {
					if !done {
						rt.Logf("step %d (failing): %s", i, s)
					}
				}()
				switch s.Op {
				case "write", "more":
					if s.Op == "write" {
						h.begin(s.Slot, s.Early)
					}
					ok := true
					for range rapid.IntRange(0, 3).Draw(rt, "stmts") {
						st, gen := g.stmt(rt, s.Slot)
						if !gen {
							break
						}
						s.Stmts = append(s.Stmts, st)
						if ok = h.exec(s.Slot, st); !ok {
							break
						}
					}
					if ok && s.Op == "write" && s.End != "hold" {
						h.end(s.Slot, s.End)
					}
				default:
					h.do(s)
				}
				done = true
				rt.Logf("step %d: %s", i, s)

			}()
		}
		h.finish()
	})
}
