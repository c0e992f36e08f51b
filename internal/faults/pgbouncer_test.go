package faults

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/readside/readside/internal/pgtemp"
)

const (
	bouncerFleet    = 4 // projector processes behind PgBouncer
	bouncerMaxConns = 4 // their --max-conns (the smallest --concurrency 2 accepts)
	bouncerWriters  = 4 // writer load --concurrency
	// PgBouncer's default_pool_size: server connections for the whole
	// fleet. Fewer than the fleet's client connections (bouncerClients), so
	// that clients' transactions must share server connections, as
	// transaction pooling is for, and the server-side bound checked below
	// is one the fleet could break.
	bouncerPoolSize = 8
	// bouncerClients is what the fleet and the writer may open at once.
	bouncerClients = bouncerFleet*bouncerMaxConns + bouncerWriters
)

var bouncerPlan = plan{name: "pgbouncer", events: 1000, rate: 200, minKills: 1, injectEvery: time.Second, catchUp: time.Minute,
	scales: []scaling{{"order_summary", []scaleStep{{at: 0.3, segments: 2}}}}}

// A fleet through PgBouncer in transaction pooling mode (issue 12 item 5):
// `writer load` and four `projector run --pgbouncer` processes (with the
// smallest --max-conns they accept) connect only through a real PgBouncer,
// one projector is SIGKILLed halfway and restarted, malformed events are
// injected, an operator scales a read model while the writer runs and
// rebuilds two afterwards, all through PgBouncer, and the
// read models are then checked like the fault suite checks them. The server
// must never see more connections than PgBouncer's pool, whatever the fleet
// opens.
//
// It skips when pgbouncer is not installed, unless CI is set: then it fails
// (.ci/run installs it).
func TestFleetThroughPgBouncer(t *testing.T) {
	if bouncerPoolSize >= bouncerClients {
		t.Fatalf("PgBouncer's pool (%d) must be smaller than the %d client connections of the fleet, or nothing here shows that they share it", bouncerPoolSize, bouncerClients)
	}
	bin := findPgBouncer(t)
	p := bouncerPlan
	began := time.Now()
	phase := func(what string) { t.Logf("%-36s at %s", what, time.Since(began).Round(100*time.Millisecond)) }
	ctx := context.Background()
	cl, direct := startCluster(ctx, t)
	bouncer := startPgBouncer(t, bin, cl.Dir())
	// Through PgBouncer: the projectors with --pgbouncer, the writer with
	// the URL setting any other command takes.
	viaBouncer := fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", bouncer.addr, dbName)

	binDir := t.TempDir()
	projBin, writerBin := buildBinaries(t, binDir)
	logs := t.TempDir()
	// Migrations take a session advisory lock: straight to the server.
	if out, err := exec.Command(projBin, "migrate", "--database-url", direct).CombinedOutput(); err != nil {
		t.Fatalf("projector migrate: %v\n%s", err, out)
	}
	pool := harnessPool(t, direct)
	phase("cluster, pgbouncer, binaries, migrate")

	c := newCounters()
	// The smallest pool a run accepts (concurrency + 2): prefetches, control
	// jobs and lease renewals take turns on the connections.
	f := newFleet(t, bouncerFleet, viaBouncer, projBin, logs, c, "--pgbouncer", "--concurrency", "2", "--max-conns", fmt.Sprint(bouncerMaxConns))
	f.start()
	defer func() {
		if t.Failed() {
			f.logTails()
			b, _ := os.ReadFile(bouncer.log)
			t.Logf("pgbouncer log (last lines):\n%s", lastLines(string(b), 20))
		}
	}()

	start := time.Now()
	faultCtx, stopFaults := context.WithCancel(ctx)
	defer stopFaults()
	var wg sync.WaitGroup
	every(faultCtx, &wg, 200*time.Millisecond, f.ensure)
	inj := &injector{pool: pool, c: c}
	every(faultCtx, &wg, p.injectEvery, func() { inj.inject(faultCtx) })
	operator := viaBouncer + "&default_query_exec_mode=cache_describe"
	sc := &scaler{t: t, pool: pool, bin: projBin, url: operator, logs: logs, c: c}
	sc.start(&wg, p, start)
	// The server's connections to the database, sampled: the harness's own
	// (direct, at most 4) aside, all come from PgBouncer's pool. A server
	// connection PgBouncer closed (its client was SIGKILLed in a
	// transaction) stays in pg_stat_activity for the moment its backend
	// takes to exit, while PgBouncer already opened its replacement: one
	// sample can see pool+1 without anything bypassing PgBouncer (seen once
	// in CI). A connection that bypasses it is held (pools keep theirs), so
	// a count counts when two samples in a row (50-150 ms apart) reach it.
	var serverMax, serverPeak, prevSample int
	every(faultCtx, &wg, 100*time.Millisecond, func() {
		var n int
		if pool.QueryRow(faultCtx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND backend_type = 'client backend' AND application_name <> $1`, harnessApp).Scan(&n) == nil {
			c.add(func(*counters) {
				serverMax = max(serverMax, min(prevSample, n))
				serverPeak = max(serverPeak, n)
				prevSample = n
			})
			if n > bouncerPoolSize {
				var who string
				_ = pool.QueryRow(faultCtx, `SELECT string_agg(format('pid %s since %s %s %s: %s', pid, backend_start, state,
					coalesce(client_addr::text, 'socket'), left(query, 60)), e'\n') FROM pg_stat_activity
					WHERE datname = current_database() AND backend_type = 'client backend' AND application_name <> $1`, harnessApp).Scan(&who)
				t.Logf("%d server connections in one sample (pool %d):\n%s", n, bouncerPoolSize, who)
			}
		}
	})
	// One SIGKILL once half the events are written (the writer goes on).
	wg.Go(func() {
		for faultCtx.Err() == nil {
			var n int
			if pool.QueryRow(faultCtx, `SELECT count(*) FROM readside.events`).Scan(&n) == nil && n >= p.events/2 {
				f.killRandom()
				return
			}
			select {
			case <-faultCtx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	writerErr := runWriter(ctx, t, pool, writerBin, operator, logs, p, c)
	stopFaults()
	wg.Wait()
	faultTime := time.Since(start)
	if writerErr != nil {
		t.Fatal(writerErr)
	}

	caughtUp := time.Now()
	if err := waitCaughtUp(ctx, pool, p.catchUp); err != nil {
		t.Fatal(err)
	}
	catchUp := time.Since(caughtUp)
	phase("load and catch-up")

	// The control plane through PgBouncer, polling: rebuilds (the copy
	// applies under a transaction-local search_path, the switch moves the
	// tables between schemas under pgx's cached statement descriptions),
	// issued and followed through PgBouncer too. verify then checks the
	// rebuilt read models like every other. (Not a reset: the checks count
	// each event applied once, and a reset applies them again.)
	for _, args := range [][]string{{"rebuild", "order_details"}, {"rebuild", "order_statistics"}} {
		cmd := exec.Command(projBin, append(args, "--wait", "--timeout", "60s", "--database-url", operator)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("projector %s through PgBouncer: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if err := waitCaughtUp(ctx, pool, p.catchUp); err != nil {
		t.Fatal(err)
	}
	// Every River job a live client could take (the side-effect jobs the
	// projections enqueued; the rebuilds' own jobs completed above) is
	// worked by the poll-only clients. A job that was running in the
	// SIGKILLed process stays running until River's rescuer (an hour by
	// default): counted, not waited for.
	var waiting, orphaned int
	for deadline := time.Now().Add(30 * time.Second); ; {
		must(t, pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state NOT IN ('completed', 'running')),
			count(*) FILTER (WHERE state = 'running') FROM readside.river_job`).Scan(&waiting, &orphaned))
		if waiting == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if waiting > 0 {
		t.Errorf("%d River jobs neither completed nor running 30s after the fleet caught up", waiting)
	}
	if orphaned > 0 {
		t.Logf("%d River jobs still running (orphaned by the SIGKILL until River rescues them)", orphaned)
	}
	phase("rebuilds, River jobs done")
	f.stopAll(t)
	// Session state outlives the transaction that made it on PgBouncer's
	// server connections, which stay open after their clients left: a
	// session advisory lock or a temporary table the fleet or the writer
	// created is still there.
	var advisory, temp int
	if err := pool.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		  WHERE l.locktype = 'advisory' AND a.datname = current_database() AND a.application_name <> $1),
		(SELECT count(*) FROM pg_class WHERE relpersistence = 't')`, harnessApp).Scan(&advisory, &temp); err != nil {
		t.Fatal(err)
	}
	if advisory > 0 || temp > 0 {
		t.Errorf("PgBouncer's server connections hold session state the fleet left: %d advisory locks, %d temporary tables", advisory, temp)
	}
	pool.Close()
	// verify copies the database, which PgBouncer's idle server
	// connections would block.
	bouncer.stop(t)

	phase("fleet stopped")
	r := verify(t, cl.URL, direct)
	phase("verified")
	r.plan, r.faultTime, r.catchUp = p, faultTime, catchUp
	r.print(t, c)
	r.check(t, c, p)
	c.add(func(c *counters) {
		t.Logf("server connections to the database at most %d in two samples in a row, %d in one (PgBouncer pool %d) for %d projectors (--concurrency 2 --max-conns 4) and a writer of 4",
			serverMax, serverPeak, bouncerPoolSize, bouncerFleet)
		if serverMax > bouncerPoolSize {
			t.Errorf("the server saw %d connections from the fleet, more than PgBouncer's pool of %d: something bypassed it", serverMax, bouncerPoolSize)
		}
		if c.projectorExits > 0 {
			t.Errorf("projectors exited on their own %d times: %s", c.projectorExits, reasons(c.projectorReason))
		}
		// Nothing here restarts PostgreSQL or terminates backends: a scale
		// that lost its connection through PgBouncer is a failure, not a
		// fault to retry.
		if len(c.scaleFailures) > 0 {
			t.Errorf("projector scale lost its connection through PgBouncer: %s", reasons(c.scaleFailures))
		}
	})
	// Named prepared statements break under transaction pooling before
	// any read model shows it: the next transaction of the client runs on
	// a server connection that never prepared them.
	for i := range bouncerFleet + 1 {
		name := fmt.Sprintf("projector-%d.log", i)
		if i == bouncerFleet {
			name = "writer.log"
		}
		b, _ := os.ReadFile(filepath.Join(logs, name))
		if n := strings.Count(string(b), "prepared statement"); n > 0 {
			t.Errorf("%s: %d errors about prepared statements", name, n)
		}
	}
}

// findPgBouncer returns the pgbouncer binary ($PGBOUNCER, else on PATH or
// in /usr/sbin), or skips when there is none and CI is not set.
func findPgBouncer(t *testing.T) string {
	t.Helper()
	candidates := []string{"/usr/sbin/pgbouncer"}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		candidates = []string{p}
	}
	if p, ok := os.LookupEnv("PGBOUNCER"); ok {
		candidates = []string{p}
	}
	for _, p := range candidates {
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p
		}
	}
	const install = "apt-get install -y --no-install-recommends pgbouncer"
	if ci := os.Getenv("CI"); ci != "" && ci != "false" && ci != "0" {
		t.Fatalf("pgbouncer not found (%s) and CI is set: this test must run in CI (.ci/run installs it: %s)", strings.Join(candidates, ", "), install)
	}
	t.Skipf("pgbouncer not found (%s): %s (with CI set this test fails instead of skipping)", strings.Join(candidates, ", "), install)
	return ""
}

type pgBouncer struct {
	cmd  *exec.Cmd
	done chan struct{}
	addr string
	log  string
}

// startPgBouncer runs pgbouncer in transaction pooling mode on a free
// local port, in front of the cluster whose Unix socket is in socketDir.
func startPgBouncer(t *testing.T, bin, socketDir string) *pgBouncer {
	t.Helper()
	cred, err := pgtemp.RunAs() // pgbouncer refuses to run as root too
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "readside-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	ini := fmt.Sprintf(`[databases]
%[1]s = host=%[2]s port=5432 dbname=%[1]s user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %[3]d
unix_socket_dir =
auth_type = trust
auth_file = %[4]s
pool_mode = transaction
default_pool_size = %[5]d
max_client_conn = 500
server_reset_query =
ignore_startup_parameters = extra_float_digits
`, dbName, socketDir, port, filepath.Join(dir, "userlist.txt"), bouncerPoolSize)
	for name, body := range map[string]string{"pgbouncer.ini": ini, "userlist.txt": `"postgres" ""` + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if cred != nil {
		for _, p := range []string{dir, filepath.Join(dir, "pgbouncer.ini"), filepath.Join(dir, "userlist.txt")} {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				t.Fatal(err)
			}
		}
	}
	b := &pgBouncer{addr: fmt.Sprintf("127.0.0.1:%d", port), log: filepath.Join(dir, "pgbouncer.log"), done: make(chan struct{})}
	logf, err := os.Create(b.log)
	if err != nil {
		t.Fatal(err)
	}
	b.cmd = exec.Command(bin, filepath.Join(dir, "pgbouncer.ini"))
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := b.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start pgbouncer: %v", err)
	}
	go func() {
		_ = b.cmd.Wait()
		logf.Close()
		close(b.done)
	}()
	t.Cleanup(func() { b.stop(t) })
	for deadline := time.Now().Add(10 * time.Second); ; {
		conn, err := net.DialTimeout("tcp", b.addr, time.Second)
		if err == nil {
			conn.Close()
			return b
		}
		select {
		case <-b.done:
			out, _ := os.ReadFile(b.log)
			t.Fatalf("pgbouncer exited at start:\n%s", out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgbouncer does not accept connections on %s after 10s: %v", b.addr, err)
		}
	}
}

// stop ends pgbouncer (SIGINT: immediate shutdown) and waits for it. Safe
// to call twice.
func (b *pgBouncer) stop(t *testing.T) {
	select {
	case <-b.done:
		return
	default:
	}
	_ = b.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
		t.Log("pgbouncer did not stop within 10s of SIGINT; killed")
	}
}
