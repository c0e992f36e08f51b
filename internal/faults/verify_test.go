package faults

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/notifications"
	"github.com/readside/readside/projectors/orderstatistics"
	"github.com/readside/readside/projectors/projectortest"
	"github.com/readside/readside/projectors/shipped"
)

// projResult is what the checks found for one projection.
type projResult struct {
	name           string
	relevant       int64 // events of its types
	parkedFailed   int64
	parkedBlocked  int64
	wantFailed     int64 // injected malformed events it receives
	wantBlocked    int64 // valid events injected behind them
	applied        int64 // sum of events_applied over its segments
	segments       int   // readside.projections.segments
	checkpoints    int   // its rows in readside.checkpoints
	wrongVersions  int64 // rows whose version is not the aggregate's last applied version (-1: no version column)
	rebuildDiffers []string
}

type report struct {
	plan      plan
	faultTime time.Duration
	catchUp   time.Duration

	events, injected, unknown                 int64
	parkedOther                               int64 // dead letters of events that were not injected
	projs                                     []*projResult
	statsLive                                 []string // Mismatches on the live database (parked events not excluded)
	statsLiveErr                              string
	statsRebuilt                              []string // Mismatches with the parked events removed
	notifyJobs, notifyDistinct, shippedEvents int64
}

// verify compares the live database with a copy in which every read model
// is rebuilt from the events table.
//
// The rebuild: the live database is copied (CREATE DATABASE ... TEMPLATE),
// the parked events are deleted from the copy's events and outbox (they are
// exactly the injected malformed events and those blocked behind them:
// checked below), every read model is reset and the projection is applied
// straight over the events with projectortest.ApplyStream: no runtime, no
// leases, no retries, no faults. That is a fresh rebuild that shares only
// the projections' Apply code with the faulted fleet, so a difference can
// only come from the runtime (an event skipped, applied twice or out of
// order).
func verify(t *testing.T, admin, url string) *report {
	t.Helper()
	ctx := context.Background()
	r := &report{}
	live := pgtest.Pool(t, url)
	models := shipped.ReadModels()
	dumps := map[string]projectortest.Dump{}
	for _, p := range models {
		dumps[p.Spec().Name] = projectortest.DumpTables(t, live, p.Spec().Tables, []string{"updated_at"})
	}
	must(t, live.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE aggregate_id LIKE 'faults-%'),
		count(*) FILTER (WHERE aggregate_id LIKE 'faults-unknown-%') FROM readside.events`).Scan(&r.events, &r.injected, &r.unknown))
	must(t, live.QueryRow(ctx, `SELECT count(*) FROM readside.dead_letters WHERE aggregate_id NOT LIKE 'faults-%'`).Scan(&r.parkedOther))

	for _, p := range shipped.All() {
		s := p.Spec()
		pr := &projResult{name: s.Name, wrongVersions: -1}
		r.projs = append(r.projs, pr)
		types, aggs := nonNil(s.EventTypes), nonNil(s.AggregateTypes)
		must(t, live.QueryRow(ctx, `
SELECT count(*),
       count(*) FILTER (WHERE (aggregate_id LIKE 'faults-bad-%' OR aggregate_id LIKE 'faults-unknown-%') AND version = 1),
       count(*) FILTER (WHERE aggregate_id LIKE 'faults-bad-%' AND version > 1)
  FROM readside.events
 WHERE (cardinality($1::text[]) = 0 OR event_type = ANY ($1)) AND (cardinality($2::text[]) = 0 OR aggregate_type = ANY ($2))`,
			types, aggs).Scan(&pr.relevant, &pr.wantFailed, &pr.wantBlocked))
		must(t, live.QueryRow(ctx, `SELECT count(*) FILTER (WHERE reason = 'failed'), count(*) FILTER (WHERE reason = 'blocked')
			FROM readside.dead_letters WHERE projection = $1 AND status = 'parked'`, s.Name).Scan(&pr.parkedFailed, &pr.parkedBlocked))
		must(t, live.QueryRow(ctx, `SELECT coalesce(sum(events_applied), 0), count(*) FROM readside.checkpoints WHERE projection = $1`,
			s.Name).Scan(&pr.applied, &pr.checkpoints))
		must(t, live.QueryRow(ctx, `SELECT segments FROM readside.projections WHERE name = $1`, s.Name).Scan(&pr.segments))
		// Per-aggregate order: each row's version is the last version of
		// its aggregate among the events the projection applied.
		var table, key string
		switch s.Name {
		case "order_summary", "order_details":
			table, key = s.Name, "order_id"
		case "products":
			table, key = "products", "product_id"
		}
		if table != "" {
			must(t, live.QueryRow(ctx, fmt.Sprintf(`
WITH want AS (
    SELECT aggregate_id, max(version) AS version FROM readside.events e
     WHERE (cardinality($1::text[]) = 0 OR event_type = ANY ($1)) AND (cardinality($2::text[]) = 0 OR aggregate_type = ANY ($2))
       AND NOT EXISTS (SELECT 1 FROM readside.dead_letters d WHERE d.projection = $3 AND d.event_id = e.id AND d.status = 'parked')
     GROUP BY aggregate_id)
SELECT count(*) FROM want w FULL JOIN readside.%s t ON t.%s = w.aggregate_id
 WHERE t.version IS DISTINCT FROM w.version`, table, key), types, aggs, s.Name).Scan(&pr.wrongVersions))
		}
	}
	if m, err := orderstatistics.Mismatches(ctx, live); err != nil {
		r.statsLiveErr = err.Error()
	} else {
		r.statsLive = m
	}
	// Side effects: one notification job per OrderShipped applied.
	must(t, live.QueryRow(ctx, `SELECT count(*), count(DISTINCT args->>'event_id') FROM readside.river_job WHERE kind = $1`,
		notifications.OrderShippedArgs{}.Kind()).Scan(&r.notifyJobs, &r.notifyDistinct))
	must(t, live.QueryRow(ctx, `SELECT count(*) FROM readside.events WHERE aggregate_type = 'Order' AND event_type = 'OrderShipped'`).Scan(&r.shippedEvents))
	live.Close()

	// The copy, rebuilt.
	const copyName = dbName + "_rebuild"
	var err error
	for range 50 { // backends of killed clients may linger a moment
		if err = exec1(ctx, admin, `CREATE DATABASE `+copyName+` TEMPLATE `+dbName); err == nil || !strings.Contains(err.Error(), "being accessed") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	must(t, err)
	cp := pgtest.Pool(t, pgtest.WithDatabase(admin, copyName))
	// The copy is a scratch database: lift the append-only guard to cut
	// the parked events out of its log.
	_, err = cp.Exec(ctx, `
ALTER TABLE readside.events DISABLE TRIGGER USER;
DELETE FROM readside.outbox o USING readside.dead_letters d WHERE d.status = 'parked' AND o.position = d.event_id;
DELETE FROM readside.events e USING readside.dead_letters d WHERE d.status = 'parked' AND e.id = d.event_id`)
	must(t, err)
	for _, p := range models {
		s := p.Spec()
		must(t, projectortest.InTx(ctx, cp, func(tx pgx.Tx) error { return p.Reset(ctx, tx) }))
		projectortest.ApplyStream(t, cp, p, outbox.Filter{EventTypes: s.EventTypes, AggregateTypes: s.AggregateTypes, Segments: 1}, 500)
		got := projectortest.DumpTables(t, cp, s.Tables, []string{"updated_at"})
		for _, pr := range r.projs {
			if pr.name == s.Name {
				pr.rebuildDiffers = diffDumps(dumps[s.Name], got)
			}
		}
	}
	r.statsRebuilt, err = orderstatistics.Mismatches(ctx, cp)
	must(t, err)
	// The rebuilt order_statistics must also match the live one: checked
	// by the dump comparison above.
	return r
}

// diffDumps describes how two dumps differ (at most a few rows per table).
func diffDumps(live, rebuilt projectortest.Dump) []string {
	var out []string
	for table, rows := range live {
		other := rebuilt[table]
		if slices.Equal(rows, other) {
			continue
		}
		onlyLive, onlyRebuilt := minus(rows, other), minus(other, rows)
		out = append(out, fmt.Sprintf("%s: %d rows live, %d rebuilt; %d only live %s; %d only rebuilt %s", table, len(rows), len(other),
			len(onlyLive), head(onlyLive), len(onlyRebuilt), head(onlyRebuilt)))
	}
	slices.Sort(out)
	return out
}

func minus(a, b []string) []string {
	set := map[string]int{}
	for _, s := range b {
		set[s]++
	}
	var out []string
	for _, s := range a {
		if set[s] > 0 {
			set[s]--
			continue
		}
		out = append(out, s)
	}
	return out
}

func head(s []string) string {
	if len(s) > 2 {
		s = s[:2]
	}
	return strings.Join(s, " | ")
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (r *report) print(t *testing.T, c *counters) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\nfault-injection run (%s form)\t\n", r.plan.name)
	row := func(k string, v any) { fmt.Fprintf(tw, "  %s\t%v\n", k, v) }
	row("duration under faults / catch-up", fmt.Sprintf("%s / %s", r.faultTime.Round(time.Second), r.catchUp.Round(100*time.Millisecond)))
	row("projector SIGKILLs (restarted)", c.kills)
	row("projector exits on their own (restarted)", fmt.Sprintf("%d %s", c.projectorExits, reasons(c.projectorReason)))
	row("PostgreSQL crashes (immediate shutdown) / checkpoint counts they took back", fmt.Sprintf("%d / %d", c.pgRestarts, c.undone))
	row("SIGSTOPs past the lease", fmt.Sprintf("%d (leases held %d, taken over while stopped %d, 'lease lost' logged after SIGCONT %d)",
		c.sigstops, c.stopLeases, c.stopTakenOver, c.stopLeaseLost))
	row("backends terminated", c.terminated)
	row("writer load runs / failures", fmt.Sprintf("%d / %d %s", c.writerRuns, c.writerFailures, reasons(c.writerReasons)))
	row("scales (done / attempts)", fmt.Sprintf("%d / %d %s", c.scales, c.scaleAttempts, reasons(c.scaleFailures)))
	row("scale jobs orphaned by a SIGKILL (rescued)", c.scaleRescued)
	row("events", fmt.Sprintf("%d (%d injected: %d malformed or valid behind one, %d unknown type; %d insert attempts failed)",
		r.events, r.injected, r.injected-r.unknown, r.unknown, c.injectErrors))
	row("dead letters of non-injected events", r.parkedOther)
	for _, p := range r.projs {
		v := "n/a"
		if p.wrongVersions >= 0 {
			v = fmt.Sprint(p.wrongVersions)
		}
		rb := "n/a (no tables)"
		if slices.ContainsFunc(shipped.ReadModels(), func(m projectors.Projection) bool { return m.Spec().Name == p.name }) {
			rb = fmt.Sprintf("%d tables differ", len(p.rebuildDiffers))
		}
		row(p.name, fmt.Sprintf("segments %d, events %d, parked failed %d/%d blocked %d/%d (got/want), events_applied %d (applied %d, difference %d), wrong versions %s, rebuild: %s",
			p.segments, p.relevant, p.parkedFailed, p.wantFailed, p.parkedBlocked, p.wantBlocked, p.applied, p.relevant-p.parkedFailed-p.parkedBlocked,
			p.applied-(p.relevant-p.parkedFailed-p.parkedBlocked), v, rb))
	}
	live := fmt.Sprint(len(r.statsLive))
	if r.statsLiveErr != "" {
		live = "error: " + r.statsLiveErr
	}
	row("order_statistics mismatches (parked excluded)", len(r.statsRebuilt))
	row("order_statistics mismatches (live, parked not excluded)", live)
	row("notification jobs (distinct) / OrderShipped events", fmt.Sprintf("%d (%d) / %d", r.notifyJobs, r.notifyDistinct, r.shippedEvents))
	tw.Flush()
	t.Log(b.String())
}

func reasons(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%dx %q", v, k))
	}
	slices.Sort(parts)
	return "(" + strings.Join(parts, "; ") + ")"
}

func (r *report) check(t *testing.T, c *counters, p plan) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.kills < p.minKills {
		t.Errorf("only %d projector kills, want at least %d", c.kills, p.minKills)
	}
	if c.pgRestarts != p.pgRestarts {
		t.Errorf("%d PostgreSQL restarts, want %d", c.pgRestarts, p.pgRestarts)
	}
	if c.sigstops != p.sigstops {
		t.Errorf("%d SIGSTOPs, want %d", c.sigstops, p.sigstops)
	}
	if c.stopTakenOver != c.stopLeases {
		t.Errorf("of %d leases held by SIGSTOPped workers, only %d were taken over while their holder was stopped (8 x TTL at most)", c.stopLeases, c.stopTakenOver)
	}
	if p.terminateEvery > 0 && c.terminated == 0 {
		t.Error("no backend was terminated")
	}
	steps := 0
	for _, sc := range p.scales {
		steps += len(sc.steps)
		for _, pr := range r.projs {
			if pr.name == sc.projection && (pr.segments != sc.final() || pr.checkpoints != sc.final()) {
				t.Errorf("%s ends with %d segments and %d checkpoints, want the %d of its last scale", pr.name, pr.segments, pr.checkpoints, sc.final())
			}
		}
	}
	if c.scales != steps {
		t.Errorf("%d of %d scales done", c.scales, steps)
	}
	if p.injectEvery > 0 && r.injected == 0 {
		t.Error("nothing was injected")
	}
	if r.parkedOther != 0 {
		t.Errorf("%d events that were not injected are in dead_letters", r.parkedOther)
	}
	for _, pr := range r.projs {
		if pr.parkedFailed != pr.wantFailed || pr.parkedBlocked != pr.wantBlocked {
			t.Errorf("%s: parked %d failed / %d blocked, want %d / %d", pr.name, pr.parkedFailed, pr.parkedBlocked, pr.wantFailed, pr.wantBlocked)
		}
		// events_applied is committed with the checkpoint: exactly the
		// events applied, each once.
		if want := pr.relevant - pr.parkedFailed - pr.parkedBlocked; pr.applied != want {
			t.Errorf("%s: checkpoints count %d events applied, want %d (events %d minus parked %d): an event applied twice or skipped",
				pr.name, pr.applied, want, pr.relevant, pr.parkedFailed+pr.parkedBlocked)
		}
		if pr.wrongVersions > 0 {
			t.Errorf("%s: %d rows do not carry their aggregate's last applied version", pr.name, pr.wrongVersions)
		}
		if len(pr.rebuildDiffers) > 0 {
			t.Errorf("%s differs from a fresh rebuild from the events table:\n%s", pr.name, strings.Join(pr.rebuildDiffers, "\n"))
		}
	}
	if len(r.statsRebuilt) > 0 {
		t.Errorf("order_statistics does not match the SQL aggregation over the events (parked excluded):\n%s", strings.Join(r.statsRebuilt, "\n"))
	}
	if r.notifyDistinct != r.notifyJobs {
		t.Errorf("%d notification jobs for %d distinct events: a side effect fired twice", r.notifyJobs, r.notifyDistinct)
	}
	for _, pr := range r.projs {
		if pr.name == notifications.Name && r.notifyJobs != pr.relevant-pr.parkedFailed-pr.parkedBlocked {
			t.Errorf("%d notification jobs, want %d (one per OrderShipped applied)", r.notifyJobs, pr.relevant-pr.parkedFailed-pr.parkedBlocked)
		}
	}
}
