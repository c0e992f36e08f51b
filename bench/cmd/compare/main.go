// Command compare measures readside against the physical limit (raw SQL)
// and against what users would pick instead (one River job per event,
// watermill-sql), on the same PostgreSQL with the same workload, each
// scenario several times in a fresh database, and prints a Markdown table.
//
//	go run ./cmd/compare            # from bench/
//	go run ./cmd/compare -n 20000   # a quick run
//
// Flags have environment fallbacks (BENCH_N, BENCH_REPS, ...; see -help);
// TEST_DATABASE_URL or DATABASE_URL names the server (a database is created
// and dropped per scenario).
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

var stderr io.Writer = os.Stderr

func logf(format string, args ...any) {
	fmt.Fprintf(stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

type config struct {
	dbURL      string
	reps       int
	n          int
	nRiver     int // River tuned
	nRiverDef  int // River at defaults
	nWM        int // watermill tuned
	nWMDef     int // watermill at defaults
	aggregates int
	perTx      int
	writers    int
	batch      int
	riverPool  int
	grid       []readsideGrid
	only       map[string]bool
	timeout    time.Duration
	version    string // the main module's commit at start
}

func envInt(name string, def int) int {
	if s := os.Getenv(name); s != "" {
		if v, err := strconv.Atoi(s); err == nil {
			return v
		}
		fmt.Fprintf(os.Stderr, "ignoring %s=%q: not an integer\n", name, s)
	}
	return def
}

func envStr(name, def string) string { return cmp.Or(os.Getenv(name), def) }

func parseList(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, fmt.Errorf("bad list element %q", f)
		}
		out = append(out, v)
	}
	return out, nil
}

const systems = "readside,river-tuned,river-default,watermill-tuned,watermill-default"

func main() {
	var cfg config
	var segs, wkrs, only string
	flag.StringVar(&cfg.dbURL, "db", envStr("TEST_DATABASE_URL", envStr("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")), "PostgreSQL server URL ($TEST_DATABASE_URL, $DATABASE_URL); a database is created and dropped per scenario")
	flag.IntVar(&cfg.reps, "reps", envInt("BENCH_REPS", 3), "measurements per scenario ($BENCH_REPS)")
	flag.IntVar(&cfg.n, "n", envInt("BENCH_N", 100_000), "events for raw SQL and readside ($BENCH_N)")
	flag.IntVar(&cfg.nRiver, "n-river", envInt("BENCH_N_RIVER", 0), "events for River tuned; 0 means -n/2 ($BENCH_N_RIVER)")
	flag.IntVar(&cfg.nRiverDef, "n-river-default", envInt("BENCH_N_RIVER_DEFAULT", 0), "events for River at defaults; 0 means -n/5 ($BENCH_N_RIVER_DEFAULT)")
	flag.IntVar(&cfg.nWM, "n-watermill", envInt("BENCH_N_WATERMILL", 0), "events for watermill-sql tuned; 0 means -n/2 ($BENCH_N_WATERMILL)")
	flag.IntVar(&cfg.nWMDef, "n-watermill-default", envInt("BENCH_N_WATERMILL_DEFAULT", 0), "events for watermill-sql at defaults; 0 means -n/5 ($BENCH_N_WATERMILL_DEFAULT)")
	flag.IntVar(&cfg.aggregates, "aggregates", envInt("BENCH_AGGREGATES", 10_000), "orders ($BENCH_AGGREGATES)")
	flag.IntVar(&cfg.perTx, "per-tx", envInt("BENCH_PER_TX", 5), "events per writer transaction, all of one order ($BENCH_PER_TX)")
	flag.IntVar(&cfg.writers, "writers", envInt("BENCH_WRITERS", 4), "concurrent writers ($BENCH_WRITERS)")
	flag.IntVar(&cfg.batch, "batch", envInt("BENCH_BATCH", 1000), "batch size of the raw loop and the readside projector ($BENCH_BATCH)")
	flag.IntVar(&cfg.riverPool, "river-pool", envInt("BENCH_RIVER_POOL", 40), "pool size of tuned River, capped to leave 20 of the server's max_connections free ($BENCH_RIVER_POOL)")
	flag.StringVar(&segs, "segments", envStr("BENCH_SEGMENTS", "1,2,4"), "readside segment counts ($BENCH_SEGMENTS)")
	flag.StringVar(&wkrs, "workers", envStr("BENCH_WORKERS", "1,2"), "readside worker counts ($BENCH_WORKERS)")
	flag.StringVar(&only, "only", envStr("BENCH_ONLY", systems), "scenarios to run ($BENCH_ONLY): "+systems)
	flag.DurationVar(&cfg.timeout, "timeout", 10*time.Minute, "give up on one catch-up after this long")
	flag.Parse()
	cfg.nRiver = cmp.Or(cfg.nRiver, cfg.n/2)
	cfg.nRiverDef = cmp.Or(cfg.nRiverDef, cfg.n/5)
	cfg.nWM = cmp.Or(cfg.nWM, cfg.n/2)
	cfg.nWMDef = cmp.Or(cfg.nWMDef, cfg.n/5)
	s, err := parseList(segs)
	if err != nil {
		fail(err)
	}
	wk, err := parseList(wkrs)
	if err != nil {
		fail(err)
	}
	for _, ws := range wk {
		for _, ss := range s {
			cfg.grid = append(cfg.grid, readsideGrid{segments: ss, workers: ws})
		}
	}
	cfg.only = map[string]bool{}
	for name := range strings.SplitSeq(only, ",") {
		name = strings.TrimSpace(name)
		if !slices.Contains(strings.Split(systems, ","), name) {
			fail(fmt.Errorf("-only: unknown scenario %q (want some of %s)", name, systems))
		}
		cfg.only[name] = true
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cfg.version = readsideVersion()
	if err := capRiverPool(ctx, &cfg); err != nil {
		fail(err)
	}
	res, err := run(ctx, cfg)
	if err != nil {
		fail(err)
	}
	report(ctx, os.Stdout, cfg, res)
}

// capRiverPool keeps tuned River's pool within what the shared server can
// give: max_connections minus the connections in use minus 20.
func capRiverPool(ctx context.Context, cfg *config) error {
	c, err := pgx.Connect(ctx, cfg.dbURL)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	var free int
	if err := c.QueryRow(ctx, `SELECT current_setting('max_connections')::int - (SELECT count(*) FROM pg_stat_activity)`).Scan(&free); err != nil {
		return err
	}
	if limit := free - 20; cfg.riverPool > limit {
		logf("River pool capped from %d to %d: the server has %d connections free", cfg.riverPool, max(limit, 10), free)
		cfg.riverPool = max(limit, 10)
	}
	return nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "compare:", err)
	os.Exit(1)
}

// results holds every measurement by row key, one entry per repetition.
type results map[string][]result

func run(ctx context.Context, cfg config) (results, error) {
	res := results{}
	started := time.Now()
	for rep := range cfg.reps {
		step := func(name string, f func() (result, error)) error {
			if !cfg.only[name] {
				return nil
			}
			t0 := time.Now()
			r, err := f()
			if err != nil {
				return fmt.Errorf("%s (run %d): %w", name, rep+1, err)
			}
			res[name] = append(res[name], r)
			logf("run %d %-18s %7d events  write %8.0f ev/s  catch-up %8.0f ev/s  out-of-order %d  wrong orders %d  load %.1f  (%s)",
				rep+1, name, r.events, r.writeRate, r.drainRate, r.ooo, r.bad, r.load, time.Since(t0).Round(time.Millisecond))
			return nil
		}
		if cfg.only["readside"] {
			t0 := time.Now()
			rr, err := runReadside(ctx, cfg, rep, cfg.n, cfg.grid)
			if err != nil {
				return nil, fmt.Errorf("readside (run %d): %w", rep+1, err)
			}
			res["raw-write"] = append(res["raw-write"], rr.rawWrite)
			res["readside-write"] = append(res["readside-write"], rr.write)
			logf("run %d append: raw SQL %.0f ev/s, outbox.Append %.0f ev/s", rep+1, rr.rawWrite.writeRate, rr.write.writeRate)
			for _, g := range cfg.grid {
				res["raw/"+g.String()] = append(res["raw/"+g.String()], rr.raw[g])
				res["readside/"+g.String()] = append(res["readside/"+g.String()], rr.proj[g])
				logf("run %d %-14s raw loop %8.0f ev/s  readside %8.0f ev/s (first batch after %s)  out-of-order %d  wrong orders %d  load %.1f",
					rep+1, g, rr.raw[g].drainRate, rr.proj[g].drainRate, rr.proj[g].startup.Round(time.Millisecond), rr.proj[g].ooo, rr.proj[g].bad, rr.proj[g].load)
			}
			logf("run %d readside scenario took %s", rep+1, time.Since(t0).Round(time.Millisecond))
		}
		if err := step("river-tuned", func() (result, error) { return runRiver(ctx, cfg, cfg.nRiver, riverSettings{tuned: true}) }); err != nil {
			return nil, err
		}
		if err := step("river-default", func() (result, error) { return runRiver(ctx, cfg, cfg.nRiverDef, riverSettings{}) }); err != nil {
			return nil, err
		}
		if err := step("watermill-tuned", func() (result, error) { return runWatermill(ctx, cfg, cfg.nWM, wmSettings{tuned: true}) }); err != nil {
			return nil, err
		}
		if err := step("watermill-default", func() (result, error) { return runWatermill(ctx, cfg, cfg.nWMDef, wmSettings{}) }); err != nil {
			return nil, err
		}
	}
	logf("all runs took %s", time.Since(started).Round(time.Second))
	return res, nil
}

// stat is the median and range of some measurements.
type stat struct{ med, lo, hi float64 }

func summarize(v []float64) stat {
	if len(v) == 0 {
		return stat{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{med: m, lo: s[0], hi: s[len(s)-1]}
}

func (s stat) rate() string {
	return fmt.Sprintf("%s (%s–%s)", human(s.med), human(s.lo), human(s.hi))
}

func (s stat) ratio() string {
	return fmt.Sprintf("%.2fx (%.2f–%.2f)", s.med, s.lo, s.hi)
}

func human(v float64) string {
	switch {
	case v >= 10_000:
		return fmt.Sprintf("%.1fk", v/1000)
	case v >= 1000:
		return fmt.Sprintf("%.2fk", v/1000)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

func pick(rs []result, f func(result) float64) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

// paired divides a's and b's measurements of the same repetition.
func paired(a, b []result, f func(result) float64) []float64 {
	var out []float64
	for i := range min(len(a), len(b)) {
		if f(b[i]) > 0 {
			out = append(out, f(a[i])/f(b[i]))
		}
	}
	return out
}

func drain(r result) float64 { return r.drainRate }
func write(r result) float64 { return r.writeRate }

func ooo(rs []result) string {
	o := summarize(pick(rs, func(r result) float64 { return float64(r.ooo) }))
	out := fmt.Sprintf("%.0f (%.0f–%.0f)", o.med, o.lo, o.hi)
	if o.hi > 0 {
		out += fmt.Sprintf(" = %.1f%%", 100*o.med/float64(rs[0].events))
	}
	return out
}

func worst(rs []result) int {
	m := 0
	for _, r := range rs {
		m = max(m, r.bad)
	}
	return m
}

func report(ctx context.Context, out io.Writer, cfg config, res results) {
	w := newWorkload(cfg.n, cfg.aggregates, cfg.perTx, cfg.writers)
	var loads []float64
	for _, rs := range res {
		loads = append(loads, pick(rs, func(r result) float64 { return r.load })...)
	}
	l := summarize(loads)
	fmt.Fprintf(out, "%s; %d CPUs (1-minute load average at the end of the measurements: median %.1f, %.1f–%.1f), %s; %s. "+
		"Each scenario ran %d times, each time in a fresh database; figures are median (min–max). "+
		"Workload: %d orders, ~200-byte JSON payloads, %d writers, %d events of one order per writer transaction; "+
		"read model: one row per order, upserted per event behind a version guard.\n\n",
		time.Now().Format("2006-01-02"), runtime.NumCPU(), l.med, l.lo, l.hi, runtime.Version(), serverVersion(ctx, cfg.dbURL), cfg.reps,
		w.Aggregates, w.Writers, w.PerTx)

	fmt.Fprintf(out, "readside built from %s.\n\n", cfg.version)
	fmt.Fprintln(out, "**Writers** (events/s appended, with the outbox row, job or message in the same transaction):")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| Writer | Events per run | Events/s | vs raw SQL (same run) |")
	fmt.Fprintln(out, "|---|---:|---:|---:|")
	raw := res["raw-write"]
	for _, c := range []struct{ key, name string }{
		{"raw-write", "raw SQL: events + outbox in one statement"},
		{"readside-write", "readside outbox.Append (trigger writes the outbox)"},
		{"river-tuned", "events + River InsertManyTx, one job per event"},
		{"river-default", "events + River InsertManyTx (run of River defaults)"},
		{"watermill-tuned", "events + watermill-sql Publish in the transaction"},
		{"watermill-default", "events + watermill-sql Publish (run of watermill defaults)"},
	} {
		rs := res[c.key]
		if len(rs) == 0 {
			continue
		}
		vs := "–"
		if c.key != "raw-write" && len(raw) > 0 {
			vs = summarize(paired(rs, raw, write)).ratio()
		}
		fmt.Fprintf(out, "| %s | %d | %s | %s |\n", c.name, rs[0].events, summarize(pick(rs, write)).rate(), vs)
	}

	fmt.Fprintln(out)
	fmt.Fprintf(out, "**Catch-up** (a backlog of the whole run drained into the read model; events/s). The raw SQL loop (the physical limit: one statement per %d events reads the outbox window, joins the events, upserts and moves a checkpoint) drains the same backlog on the same database right before or after each readside setting:\n", cfg.batch)
	fmt.Fprintln(out)
	fmt.Fprintf(out, "| Consumer | Settings | Events per run | Events/s | Raw SQL loop next to it, events/s | vs raw loop | Out-of-order applications | Orders not at final version |\n")
	fmt.Fprintln(out, "|---|---|---:|---:|---:|---:|---:|---:|")
	for _, g := range cfg.grid {
		k := "raw/" + g.String()
		if rs := res["readside/"+g.String()]; len(rs) > 0 {
			fmt.Fprintf(out, "| readside projector | %d segment(s), %d worker(s), batch %d, concurrency 4 per worker | %d | %s | %s | %s | %s | %d |\n",
				g.segments, g.workers, cfg.batch, rs[0].events, summarize(pick(rs, drain)).rate(), summarize(pick(res[k], drain)).rate(),
				summarize(paired(rs, res[k], drain)).ratio(), ooo(rs), worst(rs))
		}
	}
	for _, c := range []struct{ key, name, settings string }{
		{"river-tuned", "River, job per event, tuned", fmt.Sprintf("MaxWorkers 100, FetchCooldown 5ms, FetchPollInterval 5ms, pool %d", cfg.riverPool)},
		{"river-default", "River, job per event, defaults", "MaxWorkers 100, FetchCooldown 100ms, FetchPollInterval 1s, pgxpool default size (4 here)"},
		{"watermill-tuned", "watermill-sql, tuned", "batch 1000, poll 10ms, upsert in the subscriber's transaction"},
		{"watermill-default", "watermill-sql, defaults", "batch 100, poll 1s, upsert on the pool"},
	} {
		rs := res[c.key]
		if len(rs) == 0 {
			continue
		}
		fmt.Fprintf(out, "| %s | %s | %d | %s | – | – | %s | %d |\n", c.name, c.settings, rs[0].events, summarize(pick(rs, drain)).rate(), ooo(rs), worst(rs))
	}

	// Ratios against the peers, paired by repetition.
	base := "readside/" + readsideGrid{1, 1}.String()
	best, bestMed := "", 0.0
	for _, g := range cfg.grid {
		k := "readside/" + g.String()
		if m := summarize(pick(res[k], drain)).med; m > bestMed {
			best, bestMed = k, m
		}
	}
	if len(res[base]) == 0 {
		base = best
	}
	if best == "" {
		return
	}
	label := func(k string) string { return strings.TrimPrefix(k, "readside/") }
	fmt.Fprintf(out, "\n**Targets** (catch-up ratios, each computed within one repetition, then median (min–max); "+
		"readside at %s and at its best setting in this run, %s):\n\n", label(base), label(best))
	fmt.Fprintf(out, "| readside projector vs | Target | readside %s | Met | readside %s | Met |\n", label(base), label(best))
	fmt.Fprintln(out, "|---|---:|---:|---|---:|---|")
	for _, c := range []struct {
		key, name string
		target    float64
	}{
		{"raw", "raw SQL loop (next to it)", 1.0},
		{"river-tuned", "River job-per-event, tuned", 15},
		{"river-default", "River job-per-event, defaults", 50},
		{"watermill-tuned", "watermill-sql, tuned", 10},
		{"watermill-default", "watermill-sql, defaults", 40},
	} {
		ka, kb := c.key, c.key
		if c.key == "raw" {
			ka, kb = "raw/"+label(base), "raw/"+label(best)
		}
		if len(res[ka]) == 0 {
			continue
		}
		a := summarize(paired(res[base], res[ka], drain))
		b := summarize(paired(res[best], res[kb], drain))
		fmt.Fprintf(out, "| %s | ≥ %gx | %s | %s | %s | %s |\n", c.name, c.target, a.ratio(), yes(a.med >= c.target), b.ratio(), yes(b.med >= c.target))
	}
	var n int64
	for _, g := range cfg.grid {
		for _, r := range res["readside/"+g.String()] {
			n += r.ooo
		}
	}
	fmt.Fprintf(out, "| out-of-order applications, readside, all runs and settings | 0 | %d | %s | | |\n", n, yes(n == 0))
}

// readsideVersion names the main module's commit the binary was built
// from (the replace directive builds ../ as it is on disk).
func readsideVersion() string {
	head, err := exec.Command("git", "-C", "..", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "an unknown commit"
	}
	v := "commit " + strings.TrimSpace(string(head))
	if st, err := exec.Command("git", "-C", "..", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench").Output(); err == nil && len(st) > 0 {
		v += " with uncommitted changes in the working tree"
	}
	return v
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "**no**"
}

func serverVersion(ctx context.Context, url string) string {
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		return "PostgreSQL ?"
	}
	defer c.Close(ctx)
	var v string
	if err := c.QueryRow(ctx, `SELECT split_part(version(), ' on ', 1)`).Scan(&v); err != nil {
		return "PostgreSQL ?"
	}
	return v
}
