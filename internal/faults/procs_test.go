package faults

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
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

// proc is one incarnation of a child process. Its output goes to a log file
// (no copying goroutine); one goroutine waits for it and ends with it.
type proc struct {
	cmd  *exec.Cmd
	log  string
	off  int64 // the log's size when this incarnation started
	done chan struct{}
	err  error // set before done is closed
}

// startProc starts bin with args, appending its output to logPath.
func startProc(t *testing.T, logPath, bin string, args ...string) (*proc, error) {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	st, _ := f.Stat()
	fmt.Fprintf(f, "=== %s start %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Children die with the test binary (a timeout or panic skips Cleanup).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, log: logPath, off: st.Size(), done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill SIGKILLs the process and waits for it.
func (p *proc) kill() {
	p.signal(syscall.SIGCONT) // a stopped process dies of SIGKILL too, but be plain about it
	p.signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits up to d, then SIGKILLs. It reports whether
// the process exited by itself.
func (p *proc) stop(d time.Duration) bool {
	p.signal(syscall.SIGCONT)
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		p.kill()
		return false
	}
}

// output returns what this incarnation wrote so far.
func (p *proc) output() string {
	b, err := os.ReadFile(p.log)
	if err != nil || int64(len(b)) < p.off {
		return ""
	}
	return string(b[p.off:])
}

// lastLines returns the last n non-empty lines of s.
func lastLines(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// buildBinaries builds cmd/projector and cmd/writer into dir.
func buildBinaries(t *testing.T, dir string) (projector, writer string) {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "./cmd/projector", "./cmd/writer")
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out.String())
	}
	return filepath.Join(dir, "projector"), filepath.Join(dir, "writer")
}

// counters are the faults injected and what they caused.
type counters struct {
	mu              sync.Mutex
	kills           int
	pgRestarts      int
	sigstops        int
	stopLeases      int // leases the stopped worker held
	stopTakenOver   int // of those, claimed by another worker while it was stopped
	stopLeaseLost   int // "lease lost" lines the stopped worker logged after SIGCONT
	terminated      int
	writerRuns      int
	writerFailures  int
	writerReasons   map[string]int
	injectAttempts  int
	injectErrors    int
	projectorExits  int // projector processes that exited on their own (not killed by us)
	projectorReason map[string]int
	scales          int            // scale steps done (each checked)
	scaleAttempts   int            // `projector scale` runs
	scaleFailures   map[string]int // runs that lost their connection, by reason
	scaleRescued    int            // scale jobs a SIGKILLed projector left running, made available again
	undone          int            // applied events a PostgreSQL crash undid (asynchronous commits)
}

func newCounters() *counters {
	return &counters{writerReasons: map[string]int{}, projectorReason: map[string]int{}, scaleFailures: map[string]int{}}
}

func (c *counters) add(f func(c *counters)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c)
}

// restartPostgres crashes the cluster (an immediate shutdown: no
// checkpoint, and what the WAL writer had not written yet is lost, as in a
// crash of the server) and starts it again (crash recovery).
//
// It does not use pgtemp.Cluster.Restart, which hangs: it runs `pg_ctl
// restart` without -l under CombinedOutput, so the new postmaster inherits
// the output pipe and CombinedOutput waits for it to close, that is until
// the server stops (a context deadline does not help: only pg_ctl is
// killed, and Wait still waits for the pipe). Here the server's output goes
// to the cluster's log file and pg_ctl's own to a file, not a pipe.
func restartPostgres(ctx context.Context, cl *pgtemp.Cluster) error {
	bin, err := pgtemp.BinDir()
	if err != nil {
		return err
	}
	out, err := os.CreateTemp("", "faults-pg_ctl-")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "pg_ctl"), "-D", filepath.Join(cl.Dir(), "data"),
		"-l", filepath.Join(cl.Dir(), "log"), "-m", "immediate", "-w", "-t", "60", "restart")
	cmd.Dir = cl.Dir()
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Stdout, cmd.Stderr = out, out
	cred, err := pgtemp.RunAs() // as pgtemp runs the server
	if err != nil {
		return err
	}
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(out.Name())
		return fmt.Errorf("pg_ctl restart: %w: %s", err, b)
	}
	return nil
}
