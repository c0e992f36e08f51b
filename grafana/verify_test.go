package grafana_test

// TestObservabilityAgainstPrometheus checks the dashboard and the alert
// rules against the real thing: a Prometheus (Debian's package) scraping a
// real `projector run`, `writer serve` under `writer load`, and a
// metrics-only observer; see README.md in this directory.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/internal/syncbuf"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const (
	rulesFile     = "alerts/readside.rules.yml"
	rulesTestFile = "alerts/readside.rules.test.yml"
	dashboardFile = "dashboards/readside.json"
	// rateInterval stands in for Grafana's $__rate_interval (4 x the 1s
	// scrape interval, rounded up for slack).
	rateInterval = "10s"
	// tunedThreshold caps the alert thresholds of the tuned copies of the
	// rules, so that they fire within the test's time instead of minutes.
	tunedThreshold = 2.0
)

// Alerts the test expects to fire (tuned copies) once the projector is
// killed while the writer keeps appending.
var firesAfterKill = []string{"ReadsideSegmentStalled", "ReadsideSegmentWithoutOwner", "ReadsideProjectionLagHigh"}

func TestObservabilityAgainstPrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Prometheus, a projector and a writer: about a minute; skipped with -short")
	}
	promBin, promtool := findPrometheus(t)
	ctx := t.Context()

	// Rules: syntax and unit tests, with promtool itself.
	run(t, "", promtool, "check", "rules", rulesFile)
	run(t, "alerts", promtool, "test", "rules", filepath.Base(rulesTestFile))

	bin := buildBinaries(t)
	dbURL := pgtest.NewDatabaseURL(t)
	run(t, "", filepath.Join(bin, "projector"), "migrate", "--database-url", dbURL)
	pool := pgtest.Pool(t, dbURL)

	projAddr, writerAddr, obsAddr, promAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	// The observer serves the same pipeline collector as `projector run`
	// but applies nothing: the stand-in for a metrics-only mode, so that
	// lag stays visible once every worker is dead. It runs as an ordinary
	// role without pg_read_all_stats, which cannot see other roles'
	// sessions (the projector runs as a superuser, which can).
	serveObserver(t, observerPool(t, pool, dbURL), obsAddr)
	projector := start(t, "projector", filepath.Join(bin, "projector"), "run", "--database-url", dbURL,
		"--metrics-addr", projAddr, "--worker-id", "worker-a", "--lease-ttl", "3s", "--poll-interval", "500ms")
	start(t, "writer-serve", filepath.Join(bin, "writer"), "serve", "--database-url", dbURL, "--addr", writerAddr)
	waitHTTP(t, "http://"+projAddr+"/readyz")
	waitHTTP(t, "http://"+writerAddr+"/readyz")
	load := start(t, "writer-load", filepath.Join(bin, "writer"), "load", "--database-url", dbURL,
		"--events", "40000", "--rate", "500", "--aggregates", "50", "--concurrency", "4", "--progress", "5s")

	dir := t.TempDir()
	tunedDir := filepath.Join(dir, "tuned")
	require.NoError(t, os.Mkdir(tunedDir, 0o755))
	absRules, err := filepath.Abs(rulesFile)
	require.NoError(t, err)
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
  - %q
scrape_configs:
  - job_name: projector
    static_configs: [{targets: [%q], labels: {cluster: verify}}]
  - job_name: writer
    static_configs: [{targets: [%q], labels: {cluster: verify}}]
  - job_name: observer
    static_configs: [{targets: [%q], labels: {cluster: verify}}]
`, absRules, filepath.Join(tunedDir, "*.yml"), projAddr, writerAddr, obsAddr)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644))
	start(t, "prometheus", promBin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+promAddr, "--web.enable-lifecycle")
	prom := &promAPI{base: "http://" + promAddr}
	waitHTTP(t, prom.base+"/-/ready")

	// Commands through the writer's HTTP API, so that its own metrics
	// (appends, append duration, HTTP requests) have samples; `writer
	// load` writes through its own pool.
	stopTraffic := driveWriter(t, "http://"+writerAddr)
	defer stopTraffic()

	// Every rule is evaluated by Prometheus without error, then tuned
	// copies (thresholds capped, for: 1s) are loaded next to the real ones.
	rules := waitRulesHealthy(t, prom, "readside", 10)
	writeTunedRules(t, tunedDir, rules)
	resp, err := http.Post(prom.base+"/-/reload", "", nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "reload Prometheus")
	waitRulesHealthy(t, prom, "readside-verify-tuned", len(rules))

	// Baseline: the fleet keeps up; stall and ownership alerts do not hold.
	eventually(t, 30*time.Second, "lag series scraped", func() error {
		_, err := prom.nonEmpty(ctx, `max by (projection) (readside_projection_lag_events)`)
		return err
	})
	// (With 8 segments per read model and 4 applied at a time on a busy
	// machine, a segment may wait its turn past the tuned 2 s for a
	// moment: the baseline is that such a blip passes, not that it
	// never happens.)
	for _, name := range []string{"ReadsideSegmentStalled", "ReadsideSegmentWithoutOwner"} {
		eventually(t, 30*time.Second, name+" (tuned) not holding before the kill", func() error {
			res, err := prom.query(ctx, rules[name].tuned)
			if err != nil {
				return err
			}
			if len(res) > 0 {
				return fmt.Errorf("%s (tuned) holds before the kill: %s: %v", name, rules[name].tuned, res)
			}
			return nil
		})
	}

	// Provoke the series that only exist after their event: conflicts,
	// a poison event (retries, isolation, dead letters), a fenced commit.
	provokeConflicts(t, "http://"+writerAddr)
	appendPoisonEvent(t, pool)
	provokeFencedCommit(t, pool, "http://"+writerAddr)
	// projector verify as an operator runs it, while the writer and the
	// fleet run: clean (exit 0), then an order altered by hand (exit 1,
	// the alert fires), then repaired.
	verifyOrderSummary(t, filepath.Join(bin, "projector"), dbURL, pool)
	waitFiring(t, prom, "ReadsideVerificationFailed", 20*time.Second)
	run(t, "", filepath.Join(bin, "projector"), "verify", "order_summary", "--repair", "--database-url", dbURL)

	// Every dashboard expression is valid and returns data.
	exprs := dashboardExprs(t)
	eventually(t, 45*time.Second, "every dashboard expression returns data", func() error {
		var missing []string
		for _, e := range exprs {
			if _, err := prom.nonEmpty(ctx, e.expr); err != nil {
				var bad *badQueryError
				if errors.As(err, &bad) {
					t.Fatalf("panel %q: invalid expression %s: %v", e.panel, e.expr, err)
				}
				missing = append(missing, fmt.Sprintf("%s: %s (%v)", e.panel, e.expr, err))
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d without data:\n  %s", len(missing), len(exprs), strings.Join(missing, "\n  "))
		}
		return nil
	})
	for _, e := range exprs {
		res, err := prom.nonEmpty(ctx, e.expr)
		require.NoError(t, err)
		t.Logf("dashboard ok: %-55s %2d series, e.g. %s", e.panel, len(res), res[0])
	}
	vals := prom.labelValues(t, "projection", "readside_projection_lag_events")
	require.NotEmpty(t, vals, "the projection variable has values")
	t.Logf("dashboard variable projection: %v", vals)
	clusters := prom.labelValues(t, "cluster", "readside_pipeline_scrape_error")
	require.Equal(t, []string{"verify"}, clusters, "the cluster variable has the scrape config's value")

	// Every alert expression is valid and every series it reads exists.
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range rules {
			if !yield(n) {
				return
			}
		}
	})
	for _, name := range names {
		r := rules[name]
		_, err := prom.query(ctx, r.query)
		require.NoError(t, err, "alert %s", name)
		for _, metric := range metricNames(r.query) {
			_, err := prom.nonEmpty(ctx, "group("+metric+")")
			require.NoError(t, err, "alert %s reads %s, which no target exports", name, metric)
		}
		t.Logf("alert ok: %-28s %s", name, r.query)
	}
	waitFiring(t, prom, "ReadsideDeadLettersPresent", 20*time.Second)

	// An event writer held open holds the read window: the projector sees
	// its age, the observer does not (another role's session) and exports
	// how long it has seen it, readside_read_window_holder_age_unknown 1.
	// The held-back alert fires on both, labelled accordingly.
	held, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, err = outbox.Append(ctx, held, outbox.Aggregate{Type: "Thing", ID: "held"}, 0,
		[]outbox.NewEvent{{Type: "Touched", Data: []byte(`{}`)}})
	require.NoError(t, err)
	waitFiringWith(t, prom, "ReadsideReadWindowHeldBack", map[string]string{"age": "at_least"}, 30*time.Second)
	waitFiringWith(t, prom, "ReadsideReadWindowHeldBack", map[string]string{"age": "known"}, 30*time.Second)
	require.Equal(t, 1.0, prom.scalar(t, `max(readside_read_window_holder_age_unknown{job="observer"})`))
	require.NoError(t, held.Commit(ctx))
	// The fleet catches up: nothing the kill below should cause holds.
	eventually(t, 30*time.Second, "the fleet caught up after the held writer", func() error {
		for _, name := range []string{"ReadsideReadWindowHeldBack", "ReadsideSegmentStalled", "ReadsideSegmentWithoutOwner", "ReadsideProjectionLagHigh"} {
			res, err := prom.query(ctx, rules[name].tuned)
			if err != nil {
				return err
			}
			if len(res) > 0 {
				return fmt.Errorf("%s (tuned) still holds: %v", name, res)
			}
		}
		return nil
	})
	for _, e := range []string{`sum(readside_projector_events_applied_total)`, `sum(readside_writer_appends_total)`,
		`sum(readside_writer_conflicts_total)`, `sum(readside_projector_retries_total)`, `sum(readside_projector_dead_letters_parked_total)`,
		`sum(readside_projector_fenced_commits_total)`, `sum(readside_projector_lease_losses_total)`} {
		t.Logf("before the kill: %s = %.0f", e, prom.scalar(t, e))
	}

	// Kill the projector: no worker applies, the writer keeps appending.
	// The lag, served by the observer from the database, keeps rising.
	before := prom.scalar(t, `max(readside_projection_lag_events)`)
	killedAt := time.Now()
	projector.kill(t)
	eventually(t, 15*time.Second, "up{job=projector} == 0", func() error {
		res, err := prom.nonEmpty(ctx, `up{job="projector"} == 0`)
		if err == nil {
			t.Logf("after SIGKILL: %s", res[0])
		}
		return err
	})
	var lags, secs []float64
	for range 5 {
		time.Sleep(1500 * time.Millisecond) // samples spaced by more than the scrape interval
		lags = append(lags, prom.scalar(t, `max(max by (projection) (readside_projection_lag_events))`))
		secs = append(secs, prom.scalar(t, `max(max by (projection) (readside_projection_lag_seconds))`))
	}
	t.Logf("lag before the kill %.0f events; after: %v events, %v seconds", before, lags, round(secs))
	require.True(t, slices.IsSorted(lags) && lags[len(lags)-1] > lags[0], "lag events keep rising after the kill: %v", lags)
	require.True(t, slices.IsSorted(secs) && secs[len(secs)-1] > secs[0]+3, "lag seconds keep rising after the kill: %v", secs)
	require.False(t, load.exited(), "writer load must still be running")

	for _, name := range firesAfterKill {
		waitFiring(t, prom, name, 30*time.Second)
	}
	// The database forgets a dead worker after LeaseTTLDefault.
	waitFiring(t, prom, "ReadsideNoLiveWorkers", projectors.LeaseTTLDefault+15*time.Second)
	t.Logf("kill to all alerts firing: %s", time.Since(killedAt).Round(100*time.Millisecond))
	stall := prom.scalar(t, `max(readside_projection_stalled_seconds)`)
	require.Greater(t, stall, 3.0)
	t.Logf("max stalled_seconds %.1f; segments without a live owner %.0f", stall,
		prom.scalar(t, `sum(max by (projection, segment) (readside_projection_segment_running) * on (projection, segment) (1 - max by (projection, segment) (readside_projection_segment_owned)))`))
}

func round(xs []float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = math.Round(x*10) / 10
	}
	return out
}

// findPrometheus returns the prometheus and promtool binaries, installing
// Debian's package when they are missing and this is root on apt.
func findPrometheus(t *testing.T) (string, string) {
	t.Helper()
	look := func() (string, string, bool) {
		p, err1 := exec.LookPath("prometheus")
		pt, err2 := exec.LookPath("promtool")
		return p, pt, err1 == nil && err2 == nil
	}
	if p, pt, ok := look(); ok {
		return p, pt
	}
	if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
		t.Skip("prometheus and promtool are not installed and cannot be (needs root and apt-get): apt-get install -y prometheus")
	}
	t.Log("installing Debian's prometheus package")
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "--no-install-recommends", "prometheus"}} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Skipf("prometheus is not installed and apt-get %s failed: %v\n%s", args[0], err, out)
		}
	}
	p, pt, ok := look()
	if !ok {
		t.Skip("prometheus is not installed and the package did not provide it")
	}
	return p, pt
}

func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s %s:\n%s", name, strings.Join(args, " "), out)
	t.Logf("%s %s: %s", filepath.Base(name), strings.Join(args, " "), strings.TrimSpace(lastLines(string(out), 3)))
	return string(out)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

func buildBinaries(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	require.NoError(t, err, "the go command builds the binaries")
	dir := t.TempDir()
	run(t, "..", goBin, "build", "-o", dir+string(filepath.Separator), "./cmd/projector", "./cmd/writer")
	return dir
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// observerPool returns a pool on dbURL as a new role that may read
// readside's tables and the read fence's refusals, nothing more: no
// pg_read_all_stats.
func observerPool(t *testing.T, admin *pgxpool.Pool, dbURL string) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	var role string
	require.NoError(t, admin.QueryRow(ctx, `SELECT 'observer_' || substr(md5(random()::text), 1, 12)`).Scan(&role))
	_, err := admin.Exec(ctx, `CREATE ROLE `+role+` LOGIN; GRANT USAGE ON SCHEMA readside TO `+role+`;
		GRANT SELECT ON ALL TABLES IN SCHEMA readside TO `+role+`; GRANT SELECT ON readside.read_fence_refusals TO `+role)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), `DROP OWNED BY `+role+`; DROP ROLE IF EXISTS `+role) })
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	u.User = url.User(role)
	return pgtest.Pool(t, u.String())
}

func serveObserver(t *testing.T, pool *pgxpool.Pool, addr string) {
	t.Helper()
	reg := prometheus.NewRegistry()
	require.NoError(t, observe.RegisterPipelineMetrics(reg, pool, nil))
	require.NoError(t, observe.RegisterPoolMetrics(reg, pool, "observer"))
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
}

// proc is a subprocess stopped (SIGTERM, then SIGKILL) in t.Cleanup.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan struct{}
}

func start(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), out: &syncbuf.Buffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	require.NoError(t, p.cmd.Start(), "start %s", name)
	go func() {
		defer close(p.done)
		_ = p.cmd.Wait()
	}()
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(15 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
		if t.Failed() {
			t.Logf("%s output (last lines):\n%s", name, lastLines(p.out.String(), 15))
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) kill(t *testing.T) {
	t.Helper()
	require.False(t, p.exited(), "%s exited early:\n%s", p.name, lastLines(p.out.String(), 15))
	require.NoError(t, p.cmd.Process.Kill())
	<-p.done
}

func waitHTTP(t *testing.T, u string) {
	t.Helper()
	eventually(t, 30*time.Second, "GET "+u, func() error {
		resp, err := http.Get(u)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
}

// eventually polls cond until it returns nil, and fails with its last
// error at the deadline.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Prometheus' HTTP API.

type promAPI struct{ base string }

type badQueryError struct{ msg string }

func (e *badQueryError) Error() string { return e.msg }

type apiResponse struct {
	Status    string          `json:"status"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Data      json.RawMessage `json:"data"`
}

type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s sample) String() string {
	return fmt.Sprintf("%v = %v", s.Metric, s.Value[1])
}

func (p *promAPI) get(ctx context.Context, path string, form url.Values, into any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+path+"?"+form.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var r apiResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("%s: status %d: %s", path, resp.StatusCode, body)
	}
	if r.Status != "success" {
		if r.ErrorType == "bad_data" {
			return &badQueryError{msg: r.Error}
		}
		return fmt.Errorf("%s: %s: %s", path, r.ErrorType, r.Error)
	}
	return json.Unmarshal(r.Data, into)
}

// query evaluates expr now and returns its samples (a scalar result is one
// sample without labels).
func (p *promAPI) query(ctx context.Context, expr string) ([]sample, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.get(ctx, "/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	switch data.ResultType {
	case "vector":
		var out []sample
		return out, json.Unmarshal(data.Result, &out)
	case "scalar":
		var v [2]any
		return []sample{{Value: v}}, json.Unmarshal(data.Result, &v)
	}
	return nil, fmt.Errorf("unexpected result type %q", data.ResultType)
}

// errNoData: a query found no series.
var errNoData = errors.New("no data")

func (p *promAPI) nonEmpty(ctx context.Context, expr string) ([]sample, error) {
	res, err := p.query(ctx, expr)
	if err != nil {
		return nil, err
	}
	if len(res) == 0 {
		return nil, errNoData
	}
	return res, nil
}

// scalar is expr's first value. A scrape that failed (a process slow to
// answer on a loaded machine, past the 1 s scrape timeout) marks its
// series stale until the next one: a series missing is asked for again
// for a while.
func (p *promAPI) scalar(t *testing.T, expr string) float64 {
	t.Helper()
	res, err := p.nonEmpty(t.Context(), expr)
	for deadline := time.Now().Add(15 * time.Second); errors.Is(err, errNoData) && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		res, err = p.nonEmpty(t.Context(), expr)
	}
	require.NoError(t, err, expr)
	s, _ := res[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	require.NoError(t, err, expr)
	return v
}

func (p *promAPI) labelValues(t *testing.T, label, match string) []string {
	t.Helper()
	var vals []string
	require.NoError(t, p.get(t.Context(), "/api/v1/label/"+label+"/values", url.Values{"match[]": {match}}, &vals))
	return vals
}

type rule struct {
	name, query, tuned string
	dur                float64
}

// waitRulesHealthy waits until every rule of group has been evaluated
// without error and returns the alerting rules by name.
func waitRulesHealthy(t *testing.T, p *promAPI, group string, want int) map[string]rule {
	t.Helper()
	var out map[string]rule
	eventually(t, 30*time.Second, "rules of group "+group+" evaluated", func() error {
		var data struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Name      string  `json:"name"`
					Query     string  `json:"query"`
					Type      string  `json:"type"`
					Health    string  `json:"health"`
					LastError string  `json:"lastError"`
					Duration  float64 `json:"duration"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := p.get(t.Context(), "/api/v1/rules", nil, &data); err != nil {
			return err
		}
		out = map[string]rule{}
		for _, g := range data.Groups {
			if g.Name != group {
				continue
			}
			for _, r := range g.Rules {
				if r.Health == "err" {
					t.Fatalf("rule %s fails to evaluate: %s", r.Name, r.LastError)
				}
				if r.Health != "ok" {
					return fmt.Errorf("rule %s health %q", r.Name, r.Health)
				}
				if r.Type == "alerting" {
					out[r.Name] = rule{name: r.Name, query: r.Query, tuned: tune(r.Query), dur: r.Duration}
				}
			}
		}
		if len(out) != want {
			return fmt.Errorf("%d alerting rules in group %s, want %d", len(out), group, want)
		}
		return nil
	})
	return out
}

var trailingThreshold = regexp.MustCompile(`>\s*([0-9.e+]+)\s*$`)

// tune caps the trailing "> N" threshold of an alert expression.
func tune(query string) string {
	m := trailingThreshold.FindStringSubmatchIndex(query)
	if m == nil {
		return query
	}
	v, err := strconv.ParseFloat(query[m[2]:m[3]], 64)
	if err != nil || v <= tunedThreshold {
		return query
	}
	return query[:m[0]] + "> " + strconv.FormatFloat(tunedThreshold, 'g', -1, 64)
}

func writeTunedRules(t *testing.T, dir string, rules map[string]rule) {
	t.Helper()
	var b strings.Builder
	b.WriteString("groups:\n  - name: readside-verify-tuned\n    rules:\n")
	for _, r := range rules {
		expr, _ := json.Marshal(r.tuned) // a JSON string is a YAML double-quoted scalar
		fmt.Fprintf(&b, "      - alert: %s\n        expr: %s\n        for: 1s\n        labels: {verify: tuned}\n", r.name, expr)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tuned.yml"), []byte(b.String()), 0o644))
}

func waitFiring(t *testing.T, p *promAPI, name string, timeout time.Duration) {
	t.Helper()
	waitFiringWith(t, p, name, nil, timeout)
}

// waitFiringWith waits until the tuned copy of alert name fires with
// labels among its own.
func waitFiringWith(t *testing.T, p *promAPI, name string, labels map[string]string, timeout time.Duration) {
	t.Helper()
	start := time.Now()
	eventually(t, timeout, name+" (tuned) firing", func() error {
		var data struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
				Value  string            `json:"value"`
			} `json:"alerts"`
		}
		if err := p.get(t.Context(), "/api/v1/alerts", nil, &data); err != nil {
			return err
		}
		for _, a := range data.Alerts {
			match := a.Labels["alertname"] == name && a.Labels["verify"] == "tuned" && a.State == "firing"
			for k, v := range labels {
				match = match && a.Labels[k] == v
			}
			if match {
				t.Logf("firing after %s: %s %v value %s", time.Since(start).Round(100*time.Millisecond), name, a.Labels, a.Value)
				return nil
			}
		}
		return errors.New("not firing")
	})
}

var metricName = regexp.MustCompile(`\breadside_[a-z0-9_]+`)

func metricNames(expr string) []string {
	names := metricName.FindAllString(expr, -1)
	slices.Sort(names)
	return slices.Compact(names)
}

type panelExpr struct{ panel, expr string }

// dashboardExprs returns every target expression of the dashboard with
// Grafana's variables replaced as for "All" over the last minutes.
func dashboardExprs(t *testing.T) []panelExpr {
	t.Helper()
	raw, err := os.ReadFile(dashboardFile)
	require.NoError(t, err)
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var dash struct {
		SchemaVersion int               `json:"schemaVersion"`
		Panels        []json.RawMessage `json:"panels"`
		Templating    struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	require.NoError(t, json.Unmarshal(raw, &dash))
	require.GreaterOrEqual(t, dash.SchemaVersion, 36)
	vars := map[string]bool{}
	for _, v := range dash.Templating.List {
		vars[v.Name] = true
	}
	require.True(t, vars["datasource"] && vars["cluster"] && vars["projection"], "datasource, cluster and projection variables")
	replacer := strings.NewReplacer("${projection}", ".*", "$projection", ".*", "${cluster}", ".*", "$cluster", ".*", "$__rate_interval", rateInterval,
		"$__interval", "2s", "$__range", "1m")
	var out []panelExpr
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, r := range ps {
			var p panel
			require.NoError(t, json.Unmarshal(r, &p))
			for _, tg := range p.Targets {
				e := replacer.Replace(tg.Expr)
				require.NotContains(t, e, "$", "panel %q: unknown variable in %s", p.Title, tg.Expr)
				out = append(out, panelExpr{panel: p.Title, expr: e})
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	require.NotEmpty(t, out)
	return out
}

// Traffic and provocations.

func postJSON(ctx context.Context, u string, body any) (map[string]any, int, error) {
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return out, resp.StatusCode, nil
}

func createProduct(ctx context.Context, base string) (string, error) {
	out, code, err := postJSON(ctx, base+"/products", map[string]any{"name": "verify", "price": "10.00"})
	if err != nil {
		return "", err
	}
	if code != http.StatusCreated {
		return "", fmt.Errorf("POST /products: status %d: %v", code, out)
	}
	id, _ := out["product_id"].(string)
	return id, nil
}

// driveWriter sends commands to the writer's HTTP API every 100ms until the
// returned stop is called (it is also called in t.Cleanup).
func driveWriter(t *testing.T, base string) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		var product string
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			switch {
			case product == "":
				product, _ = createProduct(ctx, base)
			case i%2 == 0:
				_, _, _ = postJSON(ctx, base+"/products/"+product+"/price", map[string]any{"price": fmt.Sprintf("%d.00", 10+i)})
			default:
				_, _, _ = postJSON(ctx, base+"/orders", map[string]any{"customer_name": "verify",
					"items": []map[string]any{{"product_id": product, "product_name": "verify", "quantity": 1, "unit_price": "10.00"}}})
			}
		}
	})
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// provokeConflicts updates one product's price from 16 clients at once:
// optimistic concurrency conflicts, retried by the writer.
func provokeConflicts(t *testing.T, base string) {
	t.Helper()
	ctx := t.Context()
	id, err := createProduct(ctx, base)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for round := range 5 {
		for i := range 16 {
			wg.Go(func() {
				_, _, _ = postJSON(ctx, base+"/products/"+id+"/price", map[string]any{"price": fmt.Sprintf("%d.%02d", 20+round, i)})
			})
		}
		wg.Wait()
	}
}

// appendPoisonEvent writes, as a writer outside Go could, an OrderPlaced
// event whose payload does not decode: the order projections retry it,
// isolate it and park it.
// verifyOrderSummary runs `projector verify order_summary`: exit 0, then,
// with an order's total altered by hand (no later event of an order sets
// it), exit 1 naming that order.
func verifyOrderSummary(t *testing.T, projector, dbURL string, pool *pgxpool.Pool) {
	t.Helper()
	run(t, "", projector, "verify", "order_summary", "--database-url", dbURL)
	var id string
	require.NoError(t, pool.QueryRow(t.Context(), `UPDATE readside.order_summary SET total_amount = total_amount + 1
		WHERE order_id = (SELECT min(order_id) FROM readside.order_summary) RETURNING order_id`).Scan(&id))
	cmd := exec.Command(projector, "verify", "order_summary", "--database-url", dbURL)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "%s", out)
	require.Equal(t, 1, exit.ExitCode(), "%s", out)
	require.Contains(t, string(out), "order_summary differs from its log: 1 aggregate(s) differ: Order/"+id)
	t.Logf("projector verify order_summary (altered %s): exit 1: %s", id, lastLines(string(out), 2))
}

func appendPoisonEvent(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	_, err := pool.Exec(t.Context(), `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
		VALUES ('Order', 'verify-poison', 'OrderPlaced', '{"order_id": 5}', 1)`)
	require.NoError(t, err)
}

// provokeFencedCommit makes an operator's fencing race a batch in flight:
// it locks the products checkpoints, waits for the worker's apply
// transaction to queue behind the lock, then bumps the lease epoch and
// drops the lease (what a reset does) before letting the worker go on. The
// worker's fenced checkpoint UPDATE then matches no row: a fenced commit
// and a lease loss.
func provokeFencedCommit(t *testing.T, pool *pgxpool.Pool, writer string) {
	t.Helper()
	ctx := t.Context()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	_, err = tx.Exec(ctx, `SELECT 1 FROM readside.checkpoints WHERE projection = 'products' FOR UPDATE`)
	require.NoError(t, err)
	_, err = createProduct(ctx, writer) // a products event for the worker to apply
	require.NoError(t, err)
	eventually(t, 10*time.Second, "a worker's apply waiting on the products checkpoint", func() error {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE '%checkpoints%'`).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return errors.New("none waiting")
		}
		return nil
	})
	_, err = tx.Exec(ctx, `UPDATE readside.checkpoints SET lease_epoch = lease_epoch + 1, lease_owner = NULL, lease_expires_at = NULL
		WHERE projection = 'products'`)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
}
