package projectorcli

import (
	"bytes"
	"context"
	"io"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/projectortest"
	"github.com/readside/readside/projectors/shipped"
)

// fleet starts one worker and the control plane for order_summary on a
// database with a backlog, and waits until it has caught up.
func fleet(t *testing.T) (string, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)
	_, err := projectortest.Lifecycles{Orders: 400}.Generate(ctx, pool)
	require.NoError(t, err)
	projs := []projectors.Projection{ordersummary.New()}
	w, err := projectors.NewWorker(projectors.Config{Pool: pool, Projections: projs, PollInterval: 50 * time.Millisecond, BatchSize: 50})
	require.NoError(t, err)
	require.NoError(t, w.Start(ctx))
	c, err := control.New(control.Config{Pool: pool, Projections: projs})
	require.NoError(t, err)
	require.NoError(t, c.Start(ctx))
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.Stop(sctx)
		_ = w.Stop(sctx)
	})
	require.Eventually(t, func() bool {
		segs, err := observe.Status(ctx, pool, "order_summary")
		return err == nil && len(segs) > 0 && segs[0].LagEvents == 0
	}, 60*time.Second, 50*time.Millisecond)
	return url, pool
}

// inPTY runs the command with stdout on a pseudo-terminal of 80 columns
// and returns what the terminal received.
func inPTY(t *testing.T, ctx context.Context, args ...string) (string, error) {
	t.Helper()
	master, slave, err := pty.Open()
	require.NoError(t, err)
	defer master.Close()
	require.NoError(t, pty.Setsize(master, &pty.Winsize{Cols: 80, Rows: 24}))
	var screen bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(&screen, master) // ends with EIO once the slave is closed
	}()
	var errOut bytes.Buffer
	err = Config{Projections: shipped.All()}.Run(ctx, args, slave, &errOut)
	slave.Close()
	wg.Wait()
	return screen.String(), err
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

// frames splits terminal output into what was drawn between carriage
// returns and newlines, without escape sequences.
func frames(out string) []string {
	var fs []string
	for _, f := range regexp.MustCompile(`[\r\n]+`).Split(ansi.ReplaceAllString(out, ""), -1) {
		if strings.TrimSpace(f) != "" {
			fs = append(fs, f)
		}
	}
	return fs
}

func TestResetWaitInTerminal(t *testing.T) {
	t.Parallel()
	url, _ := fleet(t)
	out, err := inPTY(t, context.Background(), "reset", "order_summary", "--to-start", "--wait", "--database-url", url)
	require.NoError(t, err, out)
	t.Logf("screen:\n%s", strings.ReplaceAll(out, "\r", "\\r\n"))
	fs := frames(out)
	var pcts []string
	for _, f := range fs {
		require.LessOrEqual(t, len([]rune(f)), 80, "a frame wider than the terminal wraps: %q", f)
		if m := regexp.MustCompile(`^\[1/1\] replaying order_summary\s+(\d+)%`).FindStringSubmatch(f); m != nil {
			pcts = append(pcts, m[1])
		}
	}
	require.NotEmpty(t, pcts, "a bar was drawn")
	require.Equal(t, "0", pcts[0], "the bar starts where the reset started")
	require.Equal(t, "100", pcts[len(pcts)-1])
	require.Contains(t, fs[len(fs)-1], "reset of order_summary done in")
}

func TestRebuildWaitInTerminalShowsTheSwitch(t *testing.T) {
	t.Parallel()
	url, _ := fleet(t)
	out, err := inPTY(t, context.Background(), "rebuild", "order_summary", "--wait", "--database-url", url)
	require.NoError(t, err, out)
	t.Logf("screen:\n%s", strings.ReplaceAll(out, "\r", "\\r\n"))
	fs := frames(out)
	for _, f := range fs {
		require.LessOrEqual(t, len([]rune(f)), 80, "%q", f)
	}
	joined := strings.Join(fs, "\n")
	require.Contains(t, joined, "[1/2] building order_summary__rebuild")
	require.Contains(t, joined, "[2/2] switch")
	require.Contains(t, fs[len(fs)-1], "rebuild of order_summary done in")
	require.Less(t, strings.Index(joined, "[1/2]"), strings.Index(joined, "[2/2]"))
}

// Off a terminal, progress is plain lines: no carriage returns, no escapes.
func TestResetWaitPlain(t *testing.T) {
	t.Parallel()
	url, _ := fleet(t)
	out, _, err := run3(t, "reset", "order_summary", "--wait", "--database-url", url)
	require.NoError(t, err, out)
	require.NotContains(t, out, "\r")
	require.NotContains(t, out, "\x1b")
	require.Contains(t, out, "[1/1] replaying order_summary: ")
	require.Contains(t, out, "reset of order_summary done in")
}

// A paused projection is said at once; the wait ends with the reason.
func TestResetWaitPaused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)
	require.NoError(t, projectors.Register(ctx, pool, shipped.All()...))
	_, err := checkpoint.SetStatus(ctx, pool, "order_summary", checkpoint.Paused)
	require.NoError(t, err)
	start := time.Now()
	_, _, err = run3(t, "reset", "order_summary", "--wait", "--database-url", url)
	require.ErrorContains(t, err, "order_summary is paused: nothing replays until `projector resume order_summary`")
	require.Less(t, time.Since(start), 30*time.Second, "not a wait for ever")

	_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET status = 'failed', last_error = 'boom' WHERE projection = 'order_details'`)
	require.NoError(t, err)
	_, _, err = run3(t, "reset", "order_details", "--wait", "--database-url", url)
	require.ErrorContains(t, err, "order_details is halted by a failing event (boom): nothing replays until `projector dead-letters list --projection order_details`, then `projector resume order_details`")
}

// --timeout and Ctrl-C (a cancelled context, as SIGINT gives) end the
// wait, saying the job carries on and how to watch it.
func TestResetWaitTimeoutAndInterrupt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)
	require.NoError(t, projectors.Register(ctx, pool, shipped.All()...))

	out, _, err := run3(t, "reset", "order_summary", "--wait", "--timeout", "1s", "--database-url", url)
	require.ErrorContains(t, err, "--timeout 1s reached: the reset of order_summary carries on in the fleet (job ")
	require.ErrorContains(t, err, "watch it with `projector status order_summary`")
	require.Contains(t, out, "waiting for a projector to run job")

	cctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	var so, se bytes.Buffer
	err = Config{Projections: shipped.All()}.Run(cctx, []string{"rebuild", "order_summary", "--wait", "--database-url", url}, &so, &se)
	require.ErrorContains(t, err, "interrupted: the rebuild of order_summary carries on in the fleet (job ")
}
