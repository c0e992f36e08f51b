package faults

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// scaleStep is one `projector scale` of the timeline: at this fraction of
// the writer's expected run, change the projection's segment count.
type scaleStep struct {
	at       float64
	segments int
	// onRestart: the step starts instead as the first PostgreSQL restart
	// begins (the timeline runs it late when a SIGSTOP before it lasts).
	onRestart bool
}

// scaling is one projection's scales, run in order, each waited for.
type scaling struct {
	projection string
	steps      []scaleStep
}

// final is the segment count the projection must end with.
func (s scaling) final() int { return s.steps[len(s.steps)-1].segments }

// scalesUpAndDown spreads rounds of scales over the run: order_summary
// from its 8 segments down to 4 and to 1 (issue 24's criterion),
// order_statistics (its counters are exact only if every event is applied
// once) up to 16 and down to 2, order_notifications (one notification per
// shipped order: a replay would fire it twice) from its one segment up to
// 16 and down to 2.
// One step starts as the first PostgreSQL restart begins, so that it
// finds the server going down and is run again; others may meet a
// terminated backend.
// Each projection ends away from its default, so that a scale that never
// took effect shows.
func scalesUpAndDown(rounds int) []scaling {
	base := []scaling{
		{"order_summary", []scaleStep{{0.15, 4, false}, {0.5, 1, true}}},
		{"order_statistics", []scaleStep{{0.25, 16, false}, {0.65, 2, false}}},
		{"order_notifications", []scaleStep{{0.35, 16, false}, {0.8, 2, false}}},
	}
	out := make([]scaling, len(base))
	for i, b := range base {
		out[i].projection = b.projection
		for r := range rounds {
			for _, s := range b.steps {
				out[i].steps = append(out[i].steps, scaleStep{(float64(r) + s.at) / float64(rounds), s.segments, s.onRestart && r == 0})
			}
		}
	}
	return out
}

const (
	// scaleOrphanAfter: a scale job is a short transaction (it waits for
	// the batches in flight); one still running after this long was taken
	// by a projector that has since been SIGKILLed.
	scaleOrphanAfter = 30 * time.Second
	// scaleDeadline bounds one step, its retries included.
	scaleDeadline = 3 * time.Minute
)

// scaler runs the built projector's scale command as an operator does,
// while the faults go on.
type scaler struct {
	t    *testing.T
	pool *pgxpool.Pool // the harness's, for the checks and the rescue
	bin  string        // projector binary
	url  string        // the command's --database-url
	logs string
	c    *counters
	// restarting is closed as the first PostgreSQL restart begins
	// (restartBegins); nil when the plan restarts none.
	restarting chan struct{}
	once       sync.Once
}

// restartBegins closes restarting, once.
func (s *scaler) restartBegins() {
	if s.restarting != nil {
		s.once.Do(func() { close(s.restarting) })
	}
}

// start runs each projection's steps in a goroutine of wg, at their
// fractions of p.duration() after start. The steps run to the end even
// when the faults stop first: the final segment counts are checked.
func (s *scaler) start(wg *sync.WaitGroup, p plan, start time.Time) {
	for _, sc := range p.scales {
		wg.Go(func() {
			for _, st := range sc.steps {
				if st.onRestart && s.restarting != nil {
					<-s.restarting
				} else {
					time.Sleep(time.Until(start.Add(time.Duration(st.at * float64(p.duration())))))
				}
				if !s.scale(sc.projection, st.segments) {
					return
				}
			}
		})
	}
}

// scale runs `projector scale NAME --segments N --wait` until it succeeds,
// and checks that the projection then has N segments. A run that fails
// because its connection was lost (a PostgreSQL restart, a terminated
// backend) is run again: the job it queued is found as a duplicate and
// waited for. Any other failure fails the test. It reports whether the
// scale was done.
func (s *scaler) scale(projection string, n int) bool {
	log := filepath.Join(s.logs, "scale-"+projection+".log")
	deadline := time.Now().Add(scaleDeadline)
	for {
		p, err := startProc(s.t, log, s.bin, "scale", projection, "--segments", fmt.Sprint(n), "--wait", "--database-url", s.url)
		if err != nil {
			s.t.Errorf("start projector scale: %v", err)
			return false
		}
		s.c.add(func(c *counters) { c.scaleAttempts++ })
		if !s.await(p, projection, deadline) {
			s.t.Errorf("projector scale %s --segments %d did not finish within %s:\n%s", projection, n, scaleDeadline, lastLines(p.output(), 10))
			return false
		}
		if p.err == nil {
			break
		}
		reason := lastLines(p.output(), 1)
		if !connectionLost(reason) {
			s.t.Errorf("projector scale %s --segments %d: %v:\n%s", projection, n, p.err, lastLines(p.output(), 10))
			return false
		}
		s.c.add(func(c *counters) { c.scaleFailures[classify(reason)]++ })
		if time.Now().After(deadline) {
			s.t.Errorf("projector scale %s --segments %d: still failing after %s: %s", projection, n, scaleDeadline, reason)
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The job completed: the split is the new one, before any other step
	// of this projection.
	var segments, checkpoints int
	var err error
	for range 50 { // the harness's connection may be down a moment
		if err = s.pool.QueryRow(context.Background(), `SELECT p.segments, count(c.segment) FROM readside.projections p
			LEFT JOIN readside.checkpoints c ON c.projection = p.name WHERE p.name = $1 GROUP BY p.segments`,
			projection).Scan(&segments, &checkpoints); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	switch {
	case err != nil:
		s.t.Errorf("read the segments of %s after its scale to %d: %v", projection, n, err)
		return false
	case segments != n || checkpoints != n:
		s.t.Errorf("projector scale %s --segments %d succeeded, yet the projection has %d segments and %d checkpoints", projection, n, segments, checkpoints)
		return false
	}
	s.c.add(func(c *counters) { c.scales++ })
	return true
}

// await waits for the scale command p to exit, up to deadline (then it
// kills it and returns false). Meanwhile it rescues the scale job of
// projection that a SIGKILLed projector left running: River's rescuer
// would only after an hour (RescueStuckJobsAfter), and the command waits
// for the job. The rescue is what that rescuer does, sooner: the job is
// made available again and the fleet runs it.
func (s *scaler) await(p *proc, projection string, deadline time.Time) bool {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-p.done:
			return true
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			p.kill()
			return false
		}
		tag, err := s.pool.Exec(context.Background(), `UPDATE readside.river_job SET state = 'available', scheduled_at = now()
			WHERE kind = 'readside_scale' AND args->>'projection' = $1 AND state = 'running' AND attempted_at < now() - $2::interval`,
			projection, scaleOrphanAfter.String())
		if err == nil && tag.RowsAffected() > 0 {
			s.c.add(func(c *counters) { c.scaleRescued++ })
		}
	}
}

// connectionLost says whether a command's error line is its connection
// to PostgreSQL ending or refused (restart, terminated backend).
func connectionLost(s string) bool {
	return slices.ContainsFunc(connectionErrors, func(k string) bool { return strings.Contains(s, k) })
}
