package adopt_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/projectors/orderstatistics"
)

// The adoption tests share one shape: the application's writers run while
// `projector run` applies, the projector is SIGKILLed once it has applied
// something and restarted, and then order_summary must equal a fold of the
// application's table. The pieces of that shape live here.

// buildProjectorAsync builds cmd/projector while the test prepares; the
// function it returns waits for the binary.
func buildProjectorAsync(t *testing.T) func() string {
	t.Helper()
	var bin string
	var err error
	built := make(chan struct{})
	go func() {
		defer close(built)
		bin, err = buildProjector(t.TempDir())
	}()
	return func() string {
		t.Helper()
		<-built
		require.NoError(t, err)
		return bin
	}
}

func buildProjector(dir string) (string, error) {
	bin := filepath.Join(dir, "projector")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/projector").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build projector: %w: %s", err, out)
	}
	return bin, nil
}

// projector is `projector run` on readside's URL, restarted in place.
type projector struct {
	t       *testing.T
	bin     string
	url     string
	logPath string // every run's output, appended
	cmd     *exec.Cmd
}

// runProjector starts `projector run`; the test's cleanup kills it and,
// when the test failed, logs the end of its output.
func runProjector(t *testing.T, bin, url string) *projector {
	t.Helper()
	p := &projector{t: t, bin: bin, url: url, logPath: filepath.Join(t.TempDir(), "projector.log")}
	p.start()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(p.logPath)
			t.Logf("projector log:\n%s", b[max(0, len(b)-4000):])
		}
	})
	return p
}

func (p *projector) start() {
	p.t.Helper()
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(p.t, err)
	cmd := exec.Command(p.bin, "run", "--database-url", p.url, "--metrics-addr", "", "--lease-ttl", "2s", "--poll-interval", "200ms")
	cmd.Stdout, cmd.Stderr = f, f
	require.NoError(p.t, cmd.Start())
	f.Close()
	p.cmd = cmd
}

// errWritersFailed ends the wait of killWhenApplying: the caller reports
// the writers' errors.
var errWritersFailed = errors.New("the writers failed")

// killWhenApplying waits until order_summary has a row, then SIGKILLs the
// projector (the writers go on) and starts another. writersFailed is
// asked on each poll; when it says so the wait ends with errWritersFailed.
func (p *projector) killWhenApplying(ctx context.Context, rs *pgxpool.Pool, writersFailed func() bool) error {
	p.t.Helper()
	deadline := time.Now().Add(90 * time.Second) // another test's transaction can hold the cluster's read window
	for {
		var n int
		require.NoError(p.t, rs.QueryRow(ctx, `SELECT count(*) FROM readside.order_summary`).Scan(&n))
		if n > 0 {
			break
		}
		if writersFailed() {
			return errWritersFailed
		}
		if time.Now().After(deadline) {
			return errors.New("projector applied nothing in 90s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(p.t, p.cmd.Process.Signal(syscall.SIGKILL))
	_ = p.cmd.Wait()
	p.start()
	return nil
}

// summarySQL is order_summary as the fold SQL of a test prints it.
const summarySQL = `SELECT order_id || ' ' || status || ' ' || total_amount FROM readside.order_summary ORDER BY order_id`

// requireCaughtUp waits until order_summary equals foldSQL over the
// application's table and order_statistics matches readside's log (every
// event applied once), and returns the fold.
func requireCaughtUp(t *testing.T, ctx context.Context, app, rs *pgxpool.Pool, foldSQL string) []string {
	t.Helper()
	want := column(t, app, foldSQL)
	deadline := time.Now().Add(90 * time.Second)
	for {
		got := column(t, rs, summarySQL)
		mismatches, err := orderstatistics.Mismatches(ctx, rs)
		require.NoError(t, err)
		if slices.Equal(want, got) && len(mismatches) == 0 {
			return want
		}
		if time.Now().After(deadline) {
			require.Equal(t, want, got, "order_summary vs a fold of the application's table")
			require.Empty(t, mismatches, "order_statistics")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func column(t *testing.T, pool *pgxpool.Pool, sql string) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), sql)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}
