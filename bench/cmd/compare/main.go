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

const systems = "raw,readside,river-tuned,river-default,watermill-tuned,watermill-default"

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
	flag.IntVar(&cfg.riverPool, "river-pool", envInt("BENCH_RIVER_POOL", 90), "pool size of tuned River (the server's max_connections bounds it) ($BENCH_RIVER_POOL)")
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
	res, err := run(ctx, cfg)
	if err != nil {
		fail(err)
	}
	report(ctx, os.Stdout, cfg, res)
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
		step := func(name string, n int, f func() (result, error)) error {
			if !cfg.only[name] {
				return nil
			}
			t0 := time.Now()
			r, err := f()
			if err != nil {
				return fmt.Errorf("%s (run %d): %w", name, rep+1, err)
			}
			res[name] = append(res[name], r)
			logf("run %d %-18s %7d events  write %8.0f ev/s  catch-up %8.0f ev/s  out-of-order %d  wrong orders %d  (%s)",
				rep+1, name, r.events, r.writeRate, r.drainRate, r.ooo, r.bad, time.Since(t0).Round(time.Millisecond))
			return nil
		}
		if err := step("raw", cfg.n, func() (result, error) { return runRaw(ctx, cfg, cfg.n) }); err != nil {
			return nil, err
		}
		if err := step("readside", cfg.n, func() (result, error) {
			r, grid, err := runReadside(ctx, cfg, cfg.n, cfg.grid)
			for _, g := range cfg.grid {
				if gr, ok := grid[g]; ok {
					res["readside/"+g.String()] = append(res["readside/"+g.String()], gr)
					logf("run %d readside %-10s catch-up %8.0f ev/s  out-of-order %d  wrong orders %d", rep+1, g, gr.drainRate, gr.ooo, gr.bad)
				}
			}
			return r, err
		}); err != nil {
			return nil, err
		}
		if err := step("river-tuned", cfg.nRiver, func() (result, error) { return runRiver(ctx, cfg, cfg.nRiver, riverSettings{tuned: true}) }); err != nil {
			return nil, err
		}
		if err := step("river-default", cfg.nRiverDef, func() (result, error) { return runRiver(ctx, cfg, cfg.nRiverDef, riverSettings{}) }); err != nil {
			return nil, err
		}
		if err := step("watermill-tuned", cfg.nWM, func() (result, error) { return runWatermill(ctx, cfg, cfg.nWM, wmSettings{tuned: true}) }); err != nil {
			return nil, err
		}
		if err := step("watermill-default", cfg.nWMDef, func() (result, error) { return runWatermill(ctx, cfg, cfg.nWMDef, wmSettings{}) }); err != nil {
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

func report(ctx context.Context, out io.Writer, cfg config, res results) {
	w := newWorkload(cfg.n, cfg.aggregates, cfg.perTx, cfg.writers)
	fmt.Fprintf(out, "## readside vs raw SQL, River and watermill-sql\n\n")
	fmt.Fprintf(out, "%s; %d CPUs, %s; %s. Each scenario ran %d times, each time in a fresh database; "+
		"median (min–max). Workload: %d orders, ~200-byte JSON payloads, %d writers, %d events of one order per writer transaction; "+
		"read model: one row per order upserted per event behind a version guard.\n\n",
		time.Now().Format("2006-01-02"), runtime.NumCPU(), runtime.Version(), serverVersion(ctx, cfg.dbURL), cfg.reps,
		w.Aggregates, w.Writers, w.PerTx)

	fmt.Fprintln(out, "| Scenario | Settings | Events per run | Writer events/s | Catch-up events/s | Out-of-order applications | Orders not at final version |")
	fmt.Fprintln(out, "|---|---|---:|---:|---:|---:|---:|")
	row := func(key, name, settings string, writer bool) {
		rs := res[key]
		if len(rs) == 0 {
			return
		}
		wr := "–"
		if writer {
			wr = summarize(pick(rs, write)).rate()
		}
		dr := "–"
		if rs[0].drainRate > 0 {
			dr = summarize(pick(rs, drain)).rate()
		}
		ooo := summarize(pick(rs, func(r result) float64 { return float64(r.ooo) }))
		oooS := fmt.Sprintf("%.0f (%.0f–%.0f)", ooo.med, ooo.lo, ooo.hi)
		if ooo.hi > 0 {
			oooS += fmt.Sprintf(" = %.1f%%", 100*ooo.med/float64(rs[0].events))
		}
		bad := summarize(pick(rs, func(r result) float64 { return float64(r.bad) }))
		fmt.Fprintf(out, "| %s | %s | %d | %s | %s | %s | %.0f |\n", name, settings, rs[0].events, wr, dr, oooS, bad.hi)
	}
	row("raw", "Raw SQL (physical limit)", fmt.Sprintf("append: events + outbox in one statement; catch-up: one set-based statement per %d events (window, upsert, checkpoint), one loop", cfg.batch), true)
	if rs := res["readside"]; len(rs) > 0 {
		fmt.Fprintf(out, "| readside writer | outbox.Append (trigger writes the outbox) | %d | %s | – | – | – |\n", rs[0].events, summarize(pick(rs, write)).rate())
	}
	for _, g := range cfg.grid {
		row("readside/"+g.String(), "readside projector", fmt.Sprintf("%d segment(s), %d worker(s), batch %d", g.segments, g.workers, cfg.batch), false)
	}
	row("river-tuned", "River, job per event, tuned", fmt.Sprintf("MaxWorkers 100, FetchCooldown 5ms, FetchPollInterval 5ms, pool %d", cfg.riverPool), true)
	row("river-default", "River, job per event, defaults", "MaxWorkers 100, FetchCooldown 100ms, FetchPollInterval 1s, pgxpool default size", true)
	row("watermill-tuned", "watermill-sql, tuned", "batch 1000, poll 10ms, upsert in the subscriber's transaction", true)
	row("watermill-default", "watermill-sql, defaults", "batch 100, poll 1s, upsert on the pool", true)

	// Ratios, paired by repetition.
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
	fmt.Fprintf(out, "\nRatios of catch-up throughput, each computed within one repetition (same run), then median (min–max). "+
		"readside %s and its best setting here (%s).\n\n", label(base), label(best))
	fmt.Fprintf(out, "| readside projector vs | Target | readside %s | Met | readside %s | Met |\n", label(base), label(best))
	fmt.Fprintln(out, "|---|---:|---:|---|---:|---|")
	for _, c := range []struct {
		key, name string
		target    float64
	}{
		{"raw", "raw SQL loop", 1.0},
		{"river-tuned", "River tuned", 15},
		{"river-default", "River defaults", 50},
		{"watermill-tuned", "watermill-sql tuned", 10},
		{"watermill-default", "watermill-sql defaults", 40},
	} {
		if len(res[c.key]) == 0 {
			continue
		}
		a := summarize(paired(res[base], res[c.key], drain))
		b := summarize(paired(res[best], res[c.key], drain))
		fmt.Fprintf(out, "| %s | ≥ %gx | %s | %s | %s | %s |\n", c.name, c.target, a.ratio(), yes(a.med >= c.target), b.ratio(), yes(b.med >= c.target))
	}
	if len(res["raw"]) > 0 && len(res["readside"]) > 0 {
		a := summarize(paired(res["readside"], res["raw"], write))
		fmt.Fprintf(out, "\nWriter: readside outbox.Append vs raw SQL append: %s.\n", a.ratio())
	}
	var ooo int64
	for _, g := range cfg.grid {
		for _, r := range res["readside/"+g.String()] {
			ooo += r.ooo
		}
	}
	fmt.Fprintf(out, "readside out-of-order applications over all runs and settings: %d (target 0).\n", ooo)
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
