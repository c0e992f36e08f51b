package projectorcli

import (
	"fmt"

	"github.com/readside/readside"
	"github.com/readside/readside/projectors"
)

// connBudget is what one `projector run` process holds at most, by
// component; the pool is sized to its total unless --max-conns says
// otherwise. The README's "Behind PgBouncer" section explains it.
type connBudget struct {
	// Worker: its fetches and applies, at most --concurrency on the server
	// at once (a prefetch takes a free slot only), and the coordinator
	// (outbox head, lease renewal and heartbeat, one query at a time).
	Worker int
	// Control: River's control jobs (readside.ControlWorkersDefault), the
	// side-effect queues' workers, and River's own producers, completer and
	// maintenance services (2; more take turns).
	Control int
	// Metrics: a /metrics scrape's reading and a /readyz ping.
	Metrics int
	// Listen is outside the pool and 0 with --poll-only: the worker's
	// LISTEN connection and the one River takes out of the pool for its
	// own.
	Listen int
}

func newConnBudget(concurrency int, sideEffectWorkers int, pollOnly bool) connBudget {
	b := connBudget{
		Worker:  concurrency + 1,
		Control: readside.ControlWorkersDefault + sideEffectWorkers + 2,
		Metrics: 2,
	}
	if !pollOnly {
		b.Listen = 2
	}
	return b
}

// Pool is the pool size the budget asks for.
func (b connBudget) Pool() int { return b.Worker + b.Control + b.Metrics }

// minConns is the smallest --max-conns a run accepts: an apply per segment
// in flight, the coordinator (a lease that is not renewed moves the
// segments away) and one connection the control plane, the prefetches
// and the scrapes take turns on. No code path holds a connection while
// waiting for a second one, so any pool between this and Pool() only makes
// them wait for each other; below it, segments would queue behind lease
// renewals and the control plane, so it is refused.
func minConns(concurrency int) int { return concurrency + 2 }

// poolSize resolves --max-conns (0: the budget) against the budget.
func poolSize(maxConns, concurrency int, b connBudget) (int, error) {
	if maxConns == 0 {
		return b.Pool(), nil
	}
	if m := minConns(concurrency); maxConns < m {
		return 0, fmt.Errorf("--max-conns %d is too small for --concurrency %d: it needs at least %d (a connection per segment in flight, "+
			"one for lease renewals, one for the control plane and metrics); %d avoids waiting for connections. Lower --concurrency or raise --max-conns",
			maxConns, concurrency, m, b.Pool())
	}
	return maxConns, nil
}

// sideEffectWorkers sums the River workers of the projections' side-effect
// queues.
func sideEffectWorkers(projs []projectors.Projection) int {
	n := 0
	for _, q := range queues(projs) {
		n += q.MaxWorkers
	}
	return n
}
