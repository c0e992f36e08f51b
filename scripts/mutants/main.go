// Command mutants checks that the test suite bites (`make mutants`): for
// each mutation of a list (a guard of readside's reverted by a textual
// search and replace in one or more files) it copies the repository to a
// temporary directory, applies the mutation there, runs the short model
// test (`go test -run TestModel ./internal/modeltest/`) and the regression
// tests that should catch it, and reports whether any of them failed
// (caught, and which tests) and how long it took. It exits 1 if a mutation survives, or does
// not apply (its search text is not in the file exactly once), or makes a
// test fail to build.
//
//	go run ./scripts/mutants [-only SUBSTRING] [-model=false] [-keep]
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// edit replaces the one occurrence of old in file with new.
type edit struct {
	file, old, new string
}

// check is one `go test` run: a package and a -run pattern.
type check struct {
	pkg, run string
}

type mutation struct {
	name  string
	edits []edit
	// checks are the targeted regression tests that should catch it,
	// besides the short model test.
	checks []check
}

// unledgered applies a batch the way readside did before the side-effect
// ledger: the projection sees no ledger, so Batch.SideEffectsDue answers
// from the Replay flag the caller set.
const unledgered = `
func applyUnledgered(ctx context.Context, tx pgx.Tx, p projectors.Projection, b *projectors.Batch) error {
	ptx, err := dbschema.Projection(ctx, tx, "")
	if err != nil {
		return err
	}
	return p.Apply(ctx, ptx, b)
}
`

var mutations = []mutation{
	{
		name: "park beyond the committed cursor (runner parkUpTo)",
		edits: []edit{{"projectors/runner.go",
			"\t\t\tif !to.Less(e.Cursor) {\n\t\t\t\tevents = append(events, e)",
			"\t\t\tif true {\n\t\t\t\tevents = append(events, e)"}},
		checks: []check{{"./projectors/", "TestDeadLetterResolvedBeforeReread"}},
	},
	{
		name: "version-order rule (events trigger: rows of an aggregate out of version order)",
		// The last migration that (re)defines the events trigger.
		edits: []edit{{"migrations/*.up.sql",
			"WHERE n.version > 1 AND (p.txid IS NULL OR (p.txid, p.id) > (n.txid, n.id))",
			"WHERE n.version > 1 AND (p.txid IS NULL OR p.txid > n.txid)"}},
		// Named as well: the random histories' verdict alone can be a
		// failure of the loaded machine.
		checks: []check{{"./internal/modeltest/", "TestModelRegressions/OutOfOrderRowsAndForgedTxid"}},
	},
	{
		name: "replay flag in repair (repair asks the Replay flag, not the side-effect ledger)",
		edits: []edit{
			{"internal/control/repair.go", "if err := projectors.ApplyTx(ctx, tx, p, batch); err != nil {",
				"if err := applyUnledgered(ctx, tx, p, batch); err != nil {"},
			{"internal/control/repair.go", "\n// runs yields the longest runs", unledgered + "\n// runs yields the longest runs"},
		},
		// and TestModelRegressions/ReparkedByReplayThenRepaired.
		checks: []check{{"./projectors/", "TestSideEffectsExactlyOnceAcrossRepairAndRetry"}},
	},
	{
		name: "replay flag in retry (dead-letter retry asks the Replay flag, not the side-effect ledger)",
		edits: []edit{
			{"internal/control/deadletter_retry.go", "applyErr = projectors.ApplyTx(ctx, sp, p, b)",
				"applyErr = applyUnledgered(ctx, sp, p, b)"},
			{"internal/control/deadletter_retry.go", "\t\"github.com/readside/readside/internal/deadletter\"\n",
				"\t\"github.com/readside/readside/internal/dbschema\"\n\t\"github.com/readside/readside/internal/deadletter\"\n"},
			{"internal/control/deadletter_retry.go", "\n// applyInSavepoint applies", unledgered + "\n// applyInSavepoint applies"},
		},
		// TestModelRegressions/ParkedResetParkedAgainThenRetried, in the
		// model run.
	},
	{
		name: "reset clamp (a reset target past a running writer is not clamped to the read window)",
		edits: []edit{{"internal/control/reset.go",
			"\treturn outbox.ClampToWindow(ctx, tx, c)\n}",
			"\treturn c, nil\n}"}},
		checks: []check{{"./projectors/", "TestResetTargetClampedToReadWindow"}},
	},
	{
		name: "epoch check of the fenced checkpoint UPDATE",
		edits: []edit{{"internal/checkpoint/checkpoint.go",
			"   AND lease_owner = $3 AND lease_epoch = $4%s",
			"   AND lease_owner = $3 AND $4::bigint IS NOT NULL%s"}},
		checks: []check{{"./internal/checkpoint/", "TestLeaseFencing"}},
	},
	{
		name: "side-effect ledger check (every claim returns the event, fired before or not)",
		edits: []edit{{"projectors/sideeffect.go",
			"ON CONFLICT (projection, event_id) DO NOTHING RETURNING event_id",
			"ON CONFLICT (projection, event_id) DO UPDATE SET fired_at = now() RETURNING event_id"}},
		checks: []check{{"./projectors/", "TestSideEffectsExactlyOnceAcross"}},
	},
	{
		name: "renewal's check of the stored cursor (a crash undid applied batches)",
		edits: []edit{{"projectors/worker.go",
			"case ok && !s.running && h.Cursor != s.cursor:",
			"case false && h.Cursor != s.cursor:"}},
		checks: []check{{"./internal/faults/", "TestCrashUndoesAsynchronousApplies"}},
	},
	{
		name: "asynchronous apply commit (synchronous_commit left to the session)",
		edits: []edit{{"projectors/runner.go",
			`return []dbschema.Setting{idle, {Name: "synchronous_commit", Value: "off"}}`,
			`return []dbschema.Setting{idle}`}},
		checks: []check{{"./projectors/", "TestApplyCommitSetting"}},
	},
	{
		name: "apply transaction's idle timeout (a stopped worker holds its checkpoint's row lock)",
		edits: []edit{{"projectors/runner.go",
			`return []dbschema.Setting{idle, {Name: "synchronous_commit", Value: "off"}}`,
			`return []dbschema.Setting{{Name: "synchronous_commit", Value: "off"}}`}},
		checks: []check{{"./projectors/", "TestApplyCommitSetting"}},
	},
	{
		name: "the queued advance fails when fenced (else a queued batch commits behind a lost lease)",
		edits: []edit{{"internal/checkpoint/checkpoint.go",
			"\tb.Queue(advanceOrFail, ",
			"\tb.Queue(advanceFirst, "}},
		checks: []check{{"./projectors/", "TestQueuedBatchFencedCommitsNothing"}},
	},
	{
		name: "queued statements prepared under the projection's search_path first (pgx would describe them under the session's)",
		edits: []edit{{"projectors/worker.go",
			"\tcase pgx.QueryExecModeCacheStatement:\n\t\treturn true, true",
			"\tcase pgx.QueryExecModeCacheStatement:\n\t\treturn true, false"}},
		checks: []check{{"./projectors/", "TestQueuedBatchesInEveryExecMode"}},
	},
	{
		name: "queued statements prepared under readside's own names (Apply's of the same text would run the stale one)",
		edits: []edit{{"internal/dbschema/commit.go",
			"\treturn \"readside_q_\" + hex.EncodeToString(d[:16])",
			"\treturn sql + hex.EncodeToString(d[:0])"}},
		checks: []check{{"./projectors/", "TestQueuedStatementsSurviveTheirTable"}},
	},
	{
		name: "a batch whose transaction must read first is not deferred (parked aggregates)",
		edits: []edit{{"projectors/runner.go",
			"len(events) > 0 && !s.parked && !s.replaying(events)",
			"len(events) > 0 && !s.replaying(events)"}},
		checks: []check{{"./projectors/", "TestQueuedParkedAggregateStaysParked"}},
	},
	{
		name: "a replay is not deferred (its Batch says Replay)",
		edits: []edit{{"projectors/runner.go",
			"len(events) > 0 && !s.parked && !s.replaying(events)",
			"len(events) > 0 && !s.parked"}},
		checks: []check{{"./projectors/", "TestResetUnderLoad"}},
	},
	{
		name: "Batch.Queue defers only on the transaction Apply was handed (a savepoint's statement would outlive its rollback)",
		edits: []edit{{"projectors/projection.go",
			"if b.queue == nil || len(args) == 0 || tx != b.tx {",
			"if b.queue == nil || len(args) == 0 {"}},
		checks: []check{{"./projectors/", "TestQueuedOnRolledBackSavepoint"}},
	},
	{
		name: "Batch.Queue runs a statement without arguments at once (several commands, DDL a later one needs)",
		edits: []edit{{"projectors/projection.go",
			"if b.queue == nil || len(args) == 0 || tx != b.tx {",
			"if b.queue == nil || tx != b.tx {"}},
		checks: []check{{"./projectors/", "TestQueuedMultiStatement|TestQueuedDependsOnQueuedDDL"}},
	},
	{
		name: "a lazy BEGIN's fence counted once",
		edits: []edit{{"projectors/runner.go",
			"\t\t\treturn from, lt.err // counted when it failed",
			"\t\t\treturn from, w.fencedOr(s, lt.err)"}},
		checks: []check{{"./projectors/", "TestQueuedLazyFenceCountedOnce"}},
	},
	{
		name: "LeaseTTL's upper bound (PostgreSQL refuses every apply transaction's idle timeout)",
		edits: []edit{{"projectors/worker.go",
			"\tcase c.LeaseTTL > dbschema.MaxTimeout:",
			"\tcase false:"}},
		checks: []check{{"./projectors/", "TestWorkerConfigErrors"}},
	},
	{
		name: "the writer's timeouts' upper bound (PostgreSQL refuses every command's settings)",
		edits: []edit{{"aggregate/repository.go",
			"\tcase c.LockTimeout > dbschema.MaxTimeout || c.StatementTimeout > dbschema.MaxTimeout:",
			"\tcase false:"}},
		checks: []check{{"./aggregate/", "TestNewValidates"}},
	},
	{
		name: "BeginBatch's settings (made with the search_path pin)",
		edits: []edit{{"internal/dbschema/dbschema.go",
			"\tpin, args := pinWith(n.StrictPath(), settings)",
			"\tpin, args := pinWith(n.StrictPath(), nil)"}},
		checks: []check{{"./internal/dbschema/", "TestBeginBatch"}},
	},
	{
		name: "bucket-targeted wake-up (a notification runs every segment)",
		edits: []edit{{"projectors/worker.go",
			"\t\tcase s.buckets()&named != 0:",
			"\t\tcase true:"}},
		checks: []check{{"./projectors/", "TestNotificationRunsOnlyItsSegments"}},
	},
	{
		name: "held segments run again (a fetch that found the window held is not repeated)",
		edits: []edit{{"outbox/reader.go",
			"\tb.Held = b.Scanned < limit && !b.Cut && bound != nil && b.Next.Less(*bound)",
			"\tb.Held = false && bound != nil"}},
		checks: []check{{"./projectors/", "TestEventsHeldBackAreAppliedWhenTheHolderRollsBack"}},
	},
	{
		name: "WaitFor's read-window guard (a segment passes a token on emptiness while a writer below it runs)",
		edits: []edit{{"internal/observe/wait.go",
			"AND NOT ($2::xid8 < (SELECT readside.readside_read_bound(pg_current_snapshot()))",
			"AND NOT (true"}},
		checks: []check{{"./internal/observe/", "TestWaitForSegmentsWithNothingToRead"}},
	},
	{
		name: "WaitFor's look at an open transaction's lock (a token of a write not committed yet refused as beyond the head)",
		edits: []edit{{"internal/observe/wait.go",
			"if err := db.QueryRow(ctx, lockSQL, token.TxID).Scan(&open); err != nil || open {",
			"if err := db.QueryRow(ctx, lockSQL, token.TxID).Scan(&open); err != nil || open && false {"}},
		checks: []check{{"./internal/observe/", "TestWaitForTokenOfAnOpenTransaction"}},
	},
	{
		name: "WaitFor's second look at a token open when the wait began (its rollback passed as applied)",
		edits: []edit{{"internal/observe/wait.go",
			"		case status == \"aborted\":\n			return true, rolledBack(token)",
			"		case status == \"aborted\" && false:\n			return true, rolledBack(token)"}},
		checks: []check{{"./internal/observe/", "TestWaitForTokenOfARolledBackTransaction"}},
	},
	{
		name: "WaitFor's epoch guard on the transaction lock (a token one epoch ahead of an open transaction waited for)",
		edits: []edit{{"internal/observe/wait.go",
			"const lockSQL = `SELECT $1::xid8::text::numeric < pg_snapshot_xmax(pg_current_snapshot())::text::numeric + 2147483648",
			"const lockSQL = `SELECT true"}},
		checks: []check{{"./internal/observe/", "TestWaitForForgedTokenOneEpochAheadOfAnOpenTransaction"}},
	},
	{
		name: "WaitFor waiting for an open transaction the read window passed (a write rolled back to a savepoint passed as applied)",
		edits: []edit{{"internal/observe/wait.go",
			"		case status == inProgress:\n			// Passed",
			"		case status == inProgress && false:\n			// Passed"}},
		checks: []check{{"./internal/observe/", "TestWaitForTokenOfAWriteRolledBackToASavepoint"}},
	},
	{
		name: "scale's registry row lock (FOR UPDATE: a batch parking behind it deadlocks with the scale)",
		edits: []edit{{"internal/checkpoint/scale.go",
			"WHERE name = $1 FOR NO KEY UPDATE`",
			"WHERE name = $1 FOR UPDATE`"}},
		checks: []check{{".", "TestScaleWhileABatchParks"}},
	},
	{
		name: "pause's lock order (SetStatus locks the checkpoints in heap order: a deadlock with a scale or reset waiting for a batch)",
		edits: []edit{{"internal/checkpoint/checkpoint.go",
			"WHERE projection = $1 ORDER BY segment FOR UPDATE\n)",
			"WHERE projection = $1 ORDER BY segment\n)"}},
		checks: []check{{".", "TestPauseWhileAResetWaitsForABatch"}},
	},
	{
		name: "pause's registry row lock (a pause during a scale misses the segments the scale adds)",
		edits: []edit{{"internal/checkpoint/checkpoint.go",
			"`SELECT 1 FROM readside.projections WHERE name = $1 FOR SHARE`, projection)",
			"`SELECT $1::text`, projection)"}},
		checks: []check{{".", "TestPauseWhileAScaleAddsSegments"}},
	},
	{
		name: "leave's lock order (a stopping worker frees its leases in heap order: a deadlock with a reset waiting for a retry)",
		edits: []edit{{"internal/checkpoint/lease.go",
			"`WITH locked AS MATERIALIZED (\n    SELECT projection, segment FROM readside.checkpoints WHERE lease_owner = $1 ORDER BY projection, segment FOR UPDATE\n)\n" +
				"UPDATE readside.checkpoints c SET lease_owner = NULL, lease_expires_at = NULL, updated_at = now()\n" +
				"  FROM locked l WHERE c.projection = l.projection AND c.segment = l.segment AND c.lease_owner = $1`",
			"`UPDATE readside.checkpoints SET lease_owner = NULL, lease_expires_at = NULL, updated_at = now() WHERE lease_owner = $1`"}},
		checks: []check{{".", "TestLeaveWhileAResetWaitsForARetry"}},
	},
	{
		name: "discard's checkpoint locks (a discard locks dead letters without waiting for the batches in flight: a deadlock with a batch parking them again)",
		edits: []edit{{"internal/control/discard.go",
			"for _, name := range names {",
			"for _, name := range names[:0] {"}},
		checks: []check{{".", "TestDiscardWhileABatchReparks|TestDiscardWhileARepairWorks"}},
	},
	{
		name: "command pipeline (Execute on a pool goes back to four round trips)",
		edits: []edit{{"aggregate/execute.go",
			"\tif r.acquire != nil {\n\t\treturn pipeline(",
			"\tif r.acquire == nil {\n\t\treturn pipeline("}},
		checks: []check{{"./aggregate/", "TestExecutePipelinesOnAPool"}},
	},
	{
		name: "command pipeline's rollback (a failed pipelined command leaves its connection in the aborted transaction for the pool to close)",
		edits: []edit{{"aggregate/execute.go",
			"\t\t\t_, _ = c.Exec(ctx, \"rollback\")",
			"\t\t\t_ = 0"}},
		checks: []check{{"./aggregate/", "TestExecutePipelinesOnAPool"}},
	},
	{
		name: "command pipeline on a new connection (the load's first parse before the BEGIN, outside lock_timeout)",
		edits: []edit{{"aggregate/execute.go",
			"warm := c.Conn().PgConn().CustomData()[warmKey] == load",
			"warm := true"}},
		checks: []check{{"./aggregate/", "TestTimeoutsBoundTheFirstLoad"}},
	},
	{
		name: "command pipeline under describe_exec (every parse before the BEGIN)",
		edits: []edit{{"aggregate/repository.go",
			"pool.Config().ConnConfig.DefaultQueryExecMode != pgx.QueryExecModeDescribeExec",
			"pool.Config().ConnConfig.DefaultQueryExecMode != -1"}},
		checks: []check{{"./aggregate/", "TestTimeoutsBoundTheFirstLoad"}},
	},
	{
		name: "command pipeline's replay in the schema (the replay after an unreadable snapshot names readside's default schema)",
		edits: []edit{{"aggregate/execute.go",
			"rows, qerr := c.Query(ctx, load, aggType, id, false)",
			"rows, qerr := c.Query(ctx, loadSQL, aggType, id, false)"}},
		checks: []check{{"./aggregate/", "TestExecuteInAnotherSchema"}},
	},
	{
		name: "command pipeline after a panic (a decision that panics leaves its connection in a transaction)",
		edits: []edit{{"aggregate/execute.go",
			"if !c.Conn().IsClosed() && c.Conn().PgConn().TxStatus() != 'I' {",
			"if err != nil && !c.Conn().IsClosed() && c.Conn().PgConn().TxStatus() != 'I' {"}},
		checks: []check{{"./aggregate/", "TestPanicInDecideKeepsTheConnection"}},
	},
	{
		name: "adopt's snapshot after the table lock (the backfill's snapshot taken before LOCK TABLE)",
		edits: []edit{{"adopt/validate.go",
			"fmt.Sprintf(`SET LOCAL lock_timeout = %d; SET LOCAL statement_timeout = 0; LOCK TABLE",
			"fmt.Sprintf(`SELECT 1; SET LOCAL lock_timeout = %d; SET LOCAL statement_timeout = 0; LOCK TABLE"}},
		checks: []check{{"./adopt/", "TestAdoptBackfillReadsAfterTableRewrite"}},
	},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "mutants:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("mutants", flag.ContinueOnError)
	only := fs.String("only", "", "run only the mutations whose name contains this")
	model := fs.Bool("model", true, "run the short model test for each mutation (besides its regression tests)")
	keep := fs.Bool("keep", false, "keep the temporary copy")
	if err := fs.Parse(args); err != nil {
		return err
	}
	root, err := output(ctx, ".", "git", "rev-parse", "--show-toplevel")
	if err != nil {
		return fmt.Errorf("find the repository: %w", err)
	}
	dir, err := os.MkdirTemp("", "readside-mutants-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}
	if err := copyTree(ctx, strings.TrimSpace(root), dir); err != nil {
		return err
	}
	fmt.Fprintf(out, "mutants: %d mutations, in a copy at %s\n", len(mutations), dir)
	survived := 0
	for _, m := range mutations {
		if !strings.Contains(m.name, *only) {
			continue
		}
		res, err := try(ctx, dir, m, *model)
		if err != nil {
			return fmt.Errorf("%s: %w", m.name, err)
		}
		if !res.caught {
			survived++
		}
		fmt.Fprintf(out, "%-12s %6.0fs  %s  [%s]\n", res.verdict(), res.elapsed.Seconds(), m.name, strings.Join(res.by, "; "))
	}
	if survived > 0 {
		return fmt.Errorf("%d mutations survived or broke the build", survived)
	}
	return nil
}

type result struct {
	caught, broken bool
	elapsed        time.Duration
	by             []string // per check: caught or passed
}

func (r result) verdict() string {
	switch {
	case r.broken:
		return "BROKEN"
	case r.caught:
		return "caught"
	}
	return "NOT CAUGHT"
}

// try applies m in dir, runs its checks and restores the files.
func try(ctx context.Context, dir string, m mutation, model bool) (result, error) {
	var res result
	originals := map[string][]byte{}
	defer func() {
		for f, b := range originals {
			_ = os.WriteFile(filepath.Join(dir, f), b, 0o644)
		}
	}()
	for _, e := range m.edits {
		if strings.Contains(e.file, "*") {
			f, err := lastWith(dir, e.file, e.old)
			if err != nil {
				return res, err
			}
			e.file = f
		}
		path := filepath.Join(dir, e.file)
		b, err := os.ReadFile(path)
		if err != nil {
			return res, err
		}
		if _, ok := originals[e.file]; !ok {
			originals[e.file] = b
		}
		if n := bytes.Count(b, []byte(e.old)); n != 1 {
			return res, fmt.Errorf("%s: the text to replace occurs %d times, want 1: %q", e.file, n, e.old)
		}
		if err := os.WriteFile(path, bytes.Replace(b, []byte(e.old), []byte(e.new), 1), 0o644); err != nil {
			return res, err
		}
	}
	checks := m.checks
	if model {
		// The random histories (TestModel) and the regressions
		// (TestModelRegressions).
		checks = append([]check{{"./internal/modeltest/", "TestModel"}}, checks...)
	}
	start := time.Now()
	for _, c := range checks {
		cmd := exec.CommandContext(ctx, "go", "test", "-trimpath", "-count=1", "-timeout", "10m", "-run", c.run, c.pkg)
		cmd.Dir = dir
		b, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		switch {
		case err == nil && bytes.Contains(b, []byte("[no tests to run]")):
			return res, fmt.Errorf("%s -run %s: no test matches", c.pkg, c.run)
		case err == nil:
			res.by = append(res.by, c.run+": passed")
		case errors.As(err, &exit) && bytes.Contains(b, []byte("panic: test timed out")):
			// Not a verdict: a loaded machine (or a stopped process) ran
			// out of time.
			return res, fmt.Errorf("%s -run %s timed out; run the mutation again", c.pkg, c.run)
		case errors.As(err, &exit) && (bytes.Contains(b, []byte("[build failed]")) || bytes.Contains(b, []byte("[setup failed]"))):
			res.broken = true
			res.by = append(res.by, c.run+": build failed")
			fmt.Fprintf(os.Stderr, "%s\n", b)
		case errors.As(err, &exit):
			res.caught = true
			res.by = append(res.by, c.run+": CAUGHT by "+strings.Join(failed(b), ", ")+" ("+firstError(b)+")")
		default:
			return res, err
		}
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
	}
	res.elapsed = time.Since(start)
	res.caught = res.caught && !res.broken
	return res, nil
}

// lastWith is the last file (in name order) matching pattern in dir that
// contains text: the migration whose definition of a function stands.
func lastWith(dir, pattern, text string) (string, error) {
	files, err := filepath.Glob(filepath.Join(dir, pattern))
	if err != nil {
		return "", err
	}
	slices.Sort(files)
	for i := len(files) - 1; i >= 0; i-- {
		b, err := os.ReadFile(files[i])
		if err != nil {
			return "", err
		}
		if bytes.Contains(b, []byte(text)) {
			return filepath.Rel(dir, files[i])
		}
	}
	return "", fmt.Errorf("no file %s contains %q", pattern, text)
}

// failed lists the tests that go test's output says failed, innermost
// first.
func failed(out []byte) []string {
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if _, name, ok := strings.Cut(strings.TrimSpace(line), "--- FAIL: "); ok {
			name, _, _ = strings.Cut(name, " ")
			names = append(names, name)
		}
	}
	return names
}

// firstError is the first line of go test's output that says why a test
// failed, shortened.
func firstError(out []byte) string {
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		for _, p := range []string{"Error:", "Messages:", "panic:"} {
			if rest, ok := strings.CutPrefix(line, p); ok {
				rest = strings.TrimSpace(rest)
				if len(rest) > 120 {
					rest = rest[:120] + "…"
				}
				return rest
			}
		}
	}
	return "no error line"
}

// copyTree copies the repository's files (tracked, and untracked ones git
// does not ignore) from root to dir.
func copyTree(ctx context.Context, root, dir string) error {
	list, err := output(ctx, root, "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	if err != nil {
		return err
	}
	for _, f := range strings.Split(strings.TrimRight(list, "\x00"), "\x00") {
		b, err := os.ReadFile(filepath.Join(root, f))
		if errors.Is(err, os.ErrNotExist) {
			continue // deleted in the work tree
		}
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func output(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	b, err := cmd.Output()
	return string(b), err
}
