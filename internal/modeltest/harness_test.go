package modeltest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/deadletter"
	"github.com/readside/readside/internal/pgerr"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// tb is what the harness needs from *testing.T and *rapid.T.
type tb interface {
	require.TestingT
	Helper()
	Logf(format string, args ...any)
}

// config is what a history runs with, besides its steps.
type config struct {
	BatchSize   int
	MaxAttempts int  // 0 means 1
	Halt        bool // mt_one's policy is Halt instead of Park
}

type harness struct {
	t      tb
	ctx    context.Context
	pool   *pgxpool.Pool
	cfg    config
	m      *model
	probes []*probe
	names  []string
	txs    []pgx.Tx // per slot

	mu      sync.Mutex
	thieves sync.WaitGroup
	// midRun, when set, is called once by the next run while its worker
	// runs, after it has applied something (a scale in mid-run).
	midRun func()
}

var projectionNames = []string{"mt_one", "mt_four"}

// newHarness empties the database (one is reused across checks: cloning a
// template per check costs seconds here) and registers the projections.
func newHarness(t tb, pool *pgxpool.Pool, cfg config) *harness {
	t.Helper()

	ctx := context.Background()
	cfg.MaxAttempts = max(cfg.MaxAttempts, 1)
	h := &harness{t: t, ctx: ctx, pool: pool, cfg: cfg, m: newModel(projectionNames, maxHeld+1), names: projectionNames}
	h.txs = make([]pgx.Tx, maxHeld+1)
	crashed, stolen := map[int64]bool{}, map[int64]bool{}
	for i, n := range projectionNames {
		h.probes = append(h.probes, &probe{name: n, segments: []int{1, 4}[i], mu: &h.mu, crashed: crashed, stolen: stolen,
			pool: pool, thieves: &h.thieves, halt: cfg.Halt && i == 0})
		h.m.proj(n).halt = cfg.Halt && i == 0
	}
	var ddl strings.Builder
	for _, p := range h.probes {
		ddl.WriteString(p.ddl())
	}
	_, err := pool.Exec(ctx, ddl.String())
	require.NoError(t, err)
	// The log is append-only for writers: a trigger may refuse to delete
	// events. The test's own cleanup bypasses user triggers (replica role).
	// DELETE: TRUNCATE costs far more on tables this small.
	tables := []string{"readside.events", "readside.outbox", "readside.outbox_horizon", "readside.dead_letters", "readside.checkpoints",
		"readside.projections", "readside.checkpoint_buckets", "readside.workers", "readside.side_effects", "mt_effects", "mt_cured", "readside.river_job"}
	for _, p := range h.probes {
		tables = append(tables, p.state(), p.count())
	}
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL session_replication_role = replica`); err != nil {
			return err
		}
		for _, table := range tables {
			if _, err := tx.Exec(ctx, `DELETE FROM `+table); err != nil {
				return err
			}
		}
		for _, n := range projectionNames {
			for _, schema := range []string{control.ShadowSchema("readside", n), "readside_retired_" + n} {
				if _, err := tx.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`); err != nil {
					return err
				}
			}
		}
		return nil
	}))
	projs := make([]projectors.Projection, len(h.probes))
	for i, p := range h.probes {
		projs[i] = p
	}
	require.NoError(t, projectors.Register(ctx, pool, projs...))
	return h
}

func (h *harness) probe(name string) *probe {
	for _, p := range h.probes {
		if p.name == name {
			return p
		}
	}
	panic("modeltest: unknown projection " + name)
}

// candidates returns the events a reset of projection name may target, in
// read order: those its checkpoint has passed and, once every visible
// event is passed (so that a move to the end of the window skips nothing),
// those beyond the read window.
func (h *harness) candidates(name string) []*event {
	p := h.m.proj(name)
	var out []*event
	all := true
	for _, e := range h.m.all {
		if h.m.visible(e) && !p.processed[e.id] {
			all = false
		}
	}
	for _, e := range h.m.all {
		if p.processed[e.id] || (enabled.ResetPastWindow && all && !h.m.visible(e)) {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].cursor().Less(out[j].cursor()) })
	return out
}

// close rolls back the slots still open (cleanup after a failed check).
func (h *harness) close() {
	for i, tx := range h.txs {
		if tx != nil {
			_ = tx.Rollback(context.Background())
			h.txs[i] = nil
		}
	}
	h.thieves.Wait()
}

func sqlstate(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func data(r row) string {
	b, _ := json.Marshal(payload{Poison: r.Mark == "poison", Crash: r.Mark == "crash", Steal: r.Mark == "steal"})
	return string(b)
}

// insert runs one statement's rows and returns the events it wrote.
func (h *harness) insert(tx pgx.Tx, st stmt) ([]*event, error) {
	if st.Via == "append" {
		evs := make([]outbox.NewEvent, len(st.Rows))
		for i, r := range st.Rows {
			evs[i] = outbox.NewEvent{Type: "Touched", Data: json.RawMessage(data(r))}
		}
		res, err := outbox.Append(h.ctx, tx, outbox.Aggregate{Type: "Thing", ID: st.Rows[0].Agg}, st.Rows[0].Version-1, evs)
		if err != nil {
			return nil, err
		}
		out := make([]*event, len(st.Rows))
		for i, r := range st.Rows {
			out[i] = &event{id: res.Positions[i], txid: res.TxID, agg: r.Agg, version: r.Version, pl: payloadOf(r)}
		}
		return out, nil
	}
	if st.Via == "update" || st.Via == "delete" {
		e := h.m.committed[st.Rows[0].Agg][st.Rows[0].Version-1]
		sql := `UPDATE readside.events SET aggregate_id = aggregate_id || 'x' WHERE id = $1`
		if st.Via == "delete" {
			sql = `DELETE FROM readside.events WHERE id = $1`
		}
		_, err := tx.Exec(h.ctx, sql, e.id)
		return nil, err
	}
	var vals []string
	var args []any
	txid := ""
	if st.Via == "forge" {
		txid = ", '1'"
	}
	for _, r := range st.Rows {
		n := len(args)
		vals = append(vals, fmt.Sprintf("('Thing', $%d, 'Touched', $%d, $%d%s)", n+1, n+2, n+3, txid))
		args = append(args, r.Agg, data(r), r.Version)
	}
	cols := "aggregate_type, aggregate_id, event_type, event_data, version"
	if txid != "" {
		cols += ", txid"
	}
	rows, err := tx.Query(h.ctx, `INSERT INTO readside.events (`+cols+`) VALUES `+
		strings.Join(vals, ", ")+` RETURNING id, txid, aggregate_id, version`, args...)
	if err != nil {
		return nil, err
	}
	evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*event, error) {
		var e event
		return &e, r.Scan(&e.id, &e.txid, &e.agg, &e.version)
	})
	if err != nil {
		return nil, err
	}
	for _, e := range evs {
		for _, r := range st.Rows {
			if r.Agg == e.agg && r.Version == e.version {
				e.pl = payloadOf(r)
			}
		}
	}
	return evs, nil
}

func payloadOf(r row) payload {
	return payload{Poison: r.Mark == "poison", Crash: r.Mark == "crash", Steal: r.Mark == "steal"}
}

// begin opens slot i.
func (h *harness) begin(i int, early bool) {
	t, s := h.t, h.m.slots[i]
	require.False(t, s.open, "slot %d is open", i)
	tx, err := h.pool.Begin(h.ctx)
	require.NoError(t, err)
	h.txs[i] = tx
	*s = slot{open: true}
	if early {
		require.NoError(t, tx.QueryRow(h.ctx, `SELECT pg_current_xact_id()`).Scan(&s.xid))
	}
}

// exec runs statement st in slot i and checks its outcome against the
// model's prediction. A failure outside a savepoint rolls the slot back (a
// client would), and exec returns false.
func (h *harness) exec(i int, st stmt) bool {
	t, s, tx := h.t, h.m.slots[i], h.txs[i]
	// No reader runs during a write step: the fence stands still.
	fence := h.fence()
	want := h.m.predict(s, st, fence)
	registered := s.registered
	if st.Savepoint != "" {
		_, err := tx.Exec(h.ctx, `SAVEPOINT sp`)
		require.NoError(t, err)
	}
	evs, err := h.insert(tx, st)
	if want == nil {
		require.NoError(t, err, "statement %+v in slot %d (xid %d) must succeed", st, i, s.xid)
	} else {
		require.Error(t, err, "statement %+v in slot %d (xid %d) must fail with one of %v", st, i, s.xid, want)
		require.Contains(t, want, sqlstate(err), "statement %+v in slot %d (xid %d): %v", st, i, s.xid, err)
	}
	switch {
	case st.Savepoint == "rollback" || (err != nil && st.Savepoint != ""):
		_, err := tx.Exec(h.ctx, `ROLLBACK TO SAVEPOINT sp`)
		require.NoError(t, err)
		s.registered = registered // the registration goes with the savepoint
	case err != nil:
		h.end(i, "rollback")
		return false
	default:
		s.pending = append(s.pending, evs...)
		s.registered = s.registered || len(evs) > 0
	}
	var xid *uint64
	require.NoError(t, tx.QueryRow(h.ctx, `SELECT pg_current_xact_id_if_assigned()`).Scan(&xid))
	if xid != nil {
		s.xid = *xid
	}
	return true
}

// fence returns the read fence.
func (h *harness) fence() uint64 {
	var f uint64
	require.NoError(h.t, h.pool.QueryRow(h.ctx, `SELECT coalesce(pg_sequence_last_value('readside.read_fence'), 0)`).Scan(&f))
	return f
}

// passFence has readers advance the read fence past every open slot's xid,
// as readers do while transactions stay open: the registered ones hold
// the window still, the others may no longer write events.
func (h *harness) passFence() {
	var top uint64
	for _, s := range h.m.slots {
		if s.open {
			top = max(top, s.xid)
		}
	}
	// The fence moves to an xmax readers saw: a transaction younger than
	// every slot must end first.
	_, err := h.pool.Exec(h.ctx, `SELECT pg_current_xact_id()`)
	require.NoError(h.t, err)
	for deadline := time.Now().Add(30 * time.Second); h.fence() <= top; time.Sleep(10 * time.Millisecond) {
		require.True(h.t, time.Now().Before(deadline), "the read fence did not pass xid %d: %s", top, h.fenceState())
		_, err := outbox.ReadHead(h.ctx, h.pool)
		require.NoError(h.t, err)
	}
}

// fenceState describes the read fence's sequences, the advancing lock's
// holder and the sessions of the database, for a fence that stands still.
func (h *harness) fenceState() string {
	var out string
	err := h.pool.QueryRow(h.ctx, `SELECT format('fence %s, pending %s, pending_at %s µs ago, xmax %s; lock holders %s; sessions %s',
		pg_sequence_last_value('readside.read_fence'), pg_sequence_last_value('readside.read_fence_pending'),
		(extract(epoch FROM clock_timestamp()) * 1000000)::bigint - pg_sequence_last_value('readside.read_fence_pending_at'),
		pg_snapshot_xmax(pg_current_snapshot()),
		(SELECT string_agg(pid::text || ' ' || mode || ' ' || granted, '; ') FROM pg_locks
		  WHERE locktype = 'advisory' AND classid = 1920168548 AND objid = 0),
		(SELECT string_agg(format('%s %s xid %s xmin %s: %s', pid, state, backend_xid, backend_xmin, left(query, 80)), ' | ')
		   FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()))`).Scan(&out)
	if err != nil {
		return err.Error()
	}
	return out
}

func (h *harness) end(i int, how string) {
	t, s, tx := h.t, h.m.slots[i], h.txs[i]
	if how == "commit" {
		require.NoError(t, tx.Commit(h.ctx))
		h.m.commit(s.pending)
	} else {
		require.NoError(t, tx.Rollback(h.ctx))
	}
	*s = slot{}
	h.txs[i] = nil
}

// run starts a worker, waits until every segment has passed the last
// visible event, and stops it. With a projection to switch, it also runs
// the control plane, which switches the projection's rebuild in. With s
// (a run step): Kill hard-stops a first worker once it has applied
// something; Fleet 2 runs two workers, the first of which is hard-stopped
// once it has applied something, so that the second takes its segments
// over when their leases expire; Race is an operator command (retry, or
// discard) run while the worker runs.
func (h *harness) run(s step, switching ...string) {
	t := h.t
	target := h.m.target()
	kill := s.Kill
	before := map[int64]bool{}
	if s.Race != "" {
		maps.Copy(before, h.m.proj(s.Proj).processed)
	}
	if target != outbox.Start || len(switching) > 0 || s.Race != "" {
		projs := make([]projectors.Projection, len(h.probes))
		for i, p := range h.probes {
			projs[i] = p
		}
		cfg := projectors.Config{Pool: h.pool, Projections: projs, Concurrency: 2,
			BatchSize: h.cfg.BatchSize, PollInterval: 20 * time.Millisecond, LeaseTTL: time.Second, MaxAttempts: h.cfg.MaxAttempts,
			RetryBackoff: time.Millisecond, MaxRetryBackoff: 5 * time.Millisecond, SoftStopTimeout: 10 * time.Second,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		if kill && target != outbox.Start {
			// A worker killed with batches in flight: they roll back, and
			// the next worker takes over from the committed checkpoints.
			applied := func() (n int64) {
				require.NoError(t, h.pool.QueryRow(h.ctx, `SELECT coalesce(sum(events_applied), 0) FROM readside.checkpoints`).Scan(&n))
				return n
			}
			before := applied()
			first, err := projectors.NewWorker(cfg)
			require.NoError(t, err)
			require.NoError(t, first.Start(h.ctx))
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && applied() == before; {
				time.Sleep(2 * time.Millisecond)
			}
			ctx, cancel := context.WithCancel(h.ctx)
			cancel()
			require.NoError(t, first.Stop(ctx))
			h.thieves.Wait()
		}
		w, err := projectors.NewWorker(cfg)
		require.NoError(t, err)
		appliedBefore := h.applied()
		require.NoError(t, w.Start(h.ctx))
		if h.midRun != nil {
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && h.applied() == appliedBefore; {
				time.Sleep(time.Millisecond)
			}
			h.midRun()
			h.midRun = nil
		}
		if s.Fleet > 1 {
			// A second worker that dies with its leases held: the first
			// takes its segments over once they expire.
			other, err := projectors.NewWorker(cfg)
			require.NoError(t, err)
			require.NoError(t, other.Start(h.ctx))
			var held int
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && held == 0; time.Sleep(2 * time.Millisecond) {
				require.NoError(t, h.pool.QueryRow(h.ctx, `SELECT count(*) FROM readside.checkpoints WHERE lease_owner = $1`, other.ID()).Scan(&held))
			}
			ctx, cancel := context.WithCancel(h.ctx)
			cancel()
			require.NoError(t, other.Stop(ctx))
		}
		switch s.Race {
		case "retry":
			h.retryDB(s.Proj, true)
		case "discard":
			h.discardDB(s.Proj, s.Pick)
		}
		for _, name := range switching {
			h.switchIn(name)
		}
		// Generous: the machines this runs on are often shared and loaded.
		deadline := time.Now().Add(2 * time.Minute)
		for {
			// Paused and halted (failed) segments stand still; a rebuild's
			// copy of a stopped segment goes as far as it.
			var behind int
			require.NoError(t, h.pool.QueryRow(h.ctx, `SELECT count(*) FROM readside.checkpoints c
				  LEFT JOIN unnest($3::text[], $4::text[]) AS x(live, copy) ON x.copy = c.projection
				  LEFT JOIN readside.checkpoints l ON l.projection = x.live AND l.segment = c.segment
				 WHERE c.status = 'running'
				   AND CASE WHEN l.status IS NOT NULL AND l.status <> 'running'
				            THEN (c.cursor_txid, c.cursor_position) < (l.cursor_txid, l.cursor_position)
				            ELSE (c.cursor_txid, c.cursor_position) < ($1::xid8, $2::bigint) END`,
				target.TxID, target.Position, h.names, h.shadows()).Scan(&behind))
			if behind == 0 {
				break
			}
			if time.Now().After(deadline) {
				_ = w.Stop(h.ctx)
				holder, _ := outbox.WindowHolder(h.ctx, h.pool)
				require.Failf(t, "worker did not catch up", "target %s; window holder %+v; checkpoints:\n%s", target, holder, h.dumpCheckpoints())
			}
			time.Sleep(10 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(h.ctx, 30*time.Second)
		defer cancel()
		require.NoError(t, w.Stop(ctx))
		h.thieves.Wait()
	}
	h.m.run()
	for _, name := range switching {
		h.m.proj(name).switchIn()
	}
	if len(switching) > 0 {
		// The worker runs on after the switch until caught up: a Halt
		// projection's copy stopped where the live one had halted (it
		// never passes it) without failing, so the switched-in
		// projection runs into the failing event again and halts there.
		h.m.run()
	}
	var loose map[int64]bool
	switch s.Race {
	case "retry":
		// The retry ran before, during or after the run: events of a
		// retried aggregate that the run read may have been parked and
		// retried, or applied as they came.
		p := h.m.proj(s.Proj)
		h.m.retry(p)
		loose = map[int64]bool{}
		var earlier []int64
		for id, d := range p.dl {
			if d.status == "retried" && !before[id] {
				loose[id] = true
			}
			if before[id] {
				earlier = append(earlier, id)
			}
		}
		// (For a failing check: which dead letters may be missing, and
		// which events the model had passed before the run.)
		h.t.Logf("racing retry of %s: loose %v, dead letters of events passed before the run %v", s.Proj,
			slices.Sorted(maps.Keys(loose)), slices.Sorted(slices.Values(earlier)))
	case "discard":
		h.m.proj(s.Proj).discard(h.discardIDs(s.Proj, s.Pick))
	}
	h.compareLoose("run", s.Proj, loose)
}

// scale changes projection name's segment count to n, as the control job
// does, in the middle of a run: while a worker applies, once it has
// applied something, so that the segments merged or split stand at
// different cursors (refused while a rebuild of it runs). The model does
// not change: the run must still apply every event once.
func (h *harness) scale(name string, n int) {
	h.midRun = func() {
		_, err := control.ScaleCheckpoints(h.ctx, h.pool, name, n)
		if h.m.proj(name).shadow != nil {
			require.ErrorIs(h.t, err, control.ErrRebuildRunning, "scale %s to %d", name, n)
			return
		}
		require.NoError(h.t, err, "scale %s to %d", name, n)
	}
	h.run(step{})
	if h.midRun != nil { // nothing to run
		h.midRun()
		h.midRun = nil
		h.compare(fmt.Sprintf("scale %s to %d", name, n))
	}
}

// applied is how many events every projection has applied so far.
func (h *harness) applied() (n int64) {
	require.NoError(h.t, h.pool.QueryRow(h.ctx, `SELECT coalesce(sum(events_applied), 0) FROM readside.checkpoints`).Scan(&n))
	return n
}

// shadows names the projections' rebuilds' copies, in the order of names.
func (h *harness) shadows() []string {
	out := make([]string, len(h.names))
	for i, n := range h.names {
		out[i] = control.ShadowName(n)
	}
	return out
}

// rebuild starts a rebuild of projection name.
func (h *harness) rebuild(name string) {
	p := h.m.proj(name)
	err := control.StartRebuild(h.ctx, h.pool, h.probe(name))
	if p.shadow != nil {
		require.Error(h.t, err, "a second rebuild of %s", name)
		return
	}
	require.NoError(h.t, err)
	p.rebuild(control.ShadowName(name))
}

// switchIn runs the control plane until it has switched projection name's
// rebuild in (a worker runs meanwhile).
func (h *harness) switchIn(name string) {
	t := h.t
	projs := make([]projectors.Projection, len(h.probes))
	for i, p := range h.probes {
		projs[i] = p
	}
	ctl, err := control.New(control.Config{Pool: h.pool, Projections: projs, PruneInterval: -1,
		RebuildCheck: 20 * time.Millisecond, SwitchWait: 5 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	require.NoError(t, ctl.Start(h.ctx))
	defer func() {
		ctx, cancel := context.WithTimeout(h.ctx, 30*time.Second)
		defer cancel()
		require.NoError(t, ctl.Stop(ctx))
	}()
	res, err := ctl.Client().Insert(h.ctx, control.RebuildArgs{Projection: name}, nil)
	require.NoError(t, err)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var state string
		require.NoError(t, h.pool.QueryRow(h.ctx, `SELECT state FROM readside.river_job WHERE id = $1`, res.Job.ID).Scan(&state))
		if state == "completed" {
			return
		}
		require.NotContains(t, []string{"cancelled", "discarded"}, state, "rebuild job of %s", name)
		require.True(t, time.Now().Before(deadline), "rebuild of %s not switched in (job %s); checkpoints:\n%s", name, state, h.dumpCheckpoints())
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *harness) dumpCheckpoints() string {
	rows, err := h.pool.Query(h.ctx, `SELECT projection, segment, cursor_txid::text, cursor_position, status,
		coalesce(lease_owner, ''), lease_epoch, coalesce(last_error, '') FROM readside.checkpoints ORDER BY 1, 2`)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		vals, _ := rows.Values()
		fmt.Fprintln(&b, vals...)
	}
	return b.String()
}

// transient repeats f while it fails with a transient error (the crash
// and steal marks fire in retries too), as River would.
func (h *harness) transient(f func() error) error {
	for attempt := 0; ; attempt++ {
		err := f()
		if err == nil || pgerr.Transient(err) == "" || attempt == 5 {
			h.thieves.Wait()
			return err
		}
	}
}

func (h *harness) retry(name string) {
	h.retryDB(name, false)
	h.m.retry(h.m.proj(name))
	h.compare("retry " + name)
}

// retryDB retries the dead letters of projection name in the database.
// While a worker runs (racing), the run may park more, and there may be
// nothing to retry until it has.
func (h *harness) retryDB(name string, racing bool) {
	t, p := h.t, h.m.proj(name)
	parked := len(p.parkedIDs())
	err := h.transient(func() error {
		_, err := control.RetryDeadLetters(h.ctx, h.pool, h.probe(name), nil)
		return err
	})
	switch {
	case racing && errors.Is(err, control.ErrNothingToRetry):
	case parked == 0 && !racing:
		require.ErrorIs(t, err, control.ErrNothingToRetry)
	default:
		require.NoError(t, err)
	}
}

// compareLoose is compare, except that projection name's dead letters of
// the events in loose may be missing from the database. The model then
// takes the database's account: the event was applied as it came, after
// the retry had cleared its aggregate, not parked and retried; either way
// it is applied once, and the later steps cannot tell the two apart (a
// retried dead letter is neither parked nor discarded). Kept in the
// model, it failed the next strict comparison (seed 11015701647638143655).
func (h *harness) compareLoose(after, name string, loose map[int64]bool) {
	for _, n := range h.names {
		want := h.m.proj(n).snapshot()
		got := h.observe(n)
		if n == name {
			for id := range loose {
				if _, ok := got.Dead[id]; !ok {
					delete(want.Dead, id)
					delete(h.m.proj(n).dl, id)
				}
			}
		}
		require.Equal(h.t, want, got, "%s after %s: model (expected) vs database (actual)", n, after)
	}
}

func (h *harness) repair(name, agg string) {
	t, p := h.t, h.m.proj(name)
	err := h.transient(func() error {
		_, err := control.Repair(h.ctx, h.pool, h.probe(name), control.RepairOptions{AggregateType: "Thing", AggregateIDs: []string{agg}})
		return err
	})
	if p.shadow != nil {
		require.ErrorIs(t, err, control.ErrRebuildRunning, "repair %s %s", name, agg)
		return
	}
	if h.m.repair(p, agg) {
		require.NoError(t, err, "repair %s %s", name, agg)
	} else {
		require.Error(t, err, "repair %s %s: an event of it still fails", name, agg)
	}
	h.compare("repair " + name + " " + agg)
}

func (h *harness) discard(name string, pick int) {
	events := h.discardIDs(name, pick)
	h.discardDB(name, pick)
	h.m.proj(name).discard(events)
	h.compare("discard " + name)
}

// discardIDs are the events a discard of projection name's dead letters
// picks (see step.Pick): all parked ones, or one.
func (h *harness) discardIDs(name string, pick int) []int64 {
	parked := h.m.proj(name).parkedIDs()
	if pick >= 0 && pick < len(parked) {
		return []int64{parked[pick]}
	}
	return parked
}

// discardDB discards the dead letters discardIDs picks in the database.
func (h *harness) discardDB(name string, pick int) {
	t := h.t
	events := h.discardIDs(name, pick)
	var ids []int64 // dead-letter ids, none for all
	if pick >= 0 && len(events) == 1 {
		var id int64
		require.NoError(t, h.pool.QueryRow(h.ctx, `SELECT id FROM readside.dead_letters WHERE projection = $1 AND event_id = $2`, name, events[0]).Scan(&id))
		ids = []int64{id}
	}
	_, err := control.DiscardDeadLetters(h.ctx, h.pool, name, ids)
	if len(events) == 0 {
		require.ErrorIs(t, err, deadletter.ErrNothingToDiscard)
	} else {
		require.NoError(t, err)
	}
}

// pause pauses or resumes projection name.
func (h *harness) pause(name string, paused bool) {
	status := checkpoint.Running
	if paused {
		status = checkpoint.Paused
	}
	_, err := checkpoint.SetStatus(h.ctx, h.pool, name, status)
	require.NoError(h.t, err)
	p := h.m.proj(name)
	p.paused, p.halted = paused, false // a failed segment is paused, or resumed, too
	h.compare(fmt.Sprintf("pause %s (%t)", name, paused))
}

func (h *harness) reset(name, to string, pick int) {
	t, p := h.t, h.m.proj(name)
	var c outbox.Cursor
	switch {
	case pick >= 0:
		c = h.candidates(name)[pick].cursor()
	case pick == -2:
		var head uint64
		require.NoError(t, h.pool.QueryRow(h.ctx, `SELECT pg_snapshot_xmax(pg_current_snapshot())`).Scan(&head))
		c = outbox.Cursor{TxID: head + 1_000_000}
	}
	target := to
	switch to {
	case "cursor":
		target = "cursor:" + c.String()
	case "time":
		var at time.Time
		require.NoError(t, h.pool.QueryRow(h.ctx, `SELECT occurred_at FROM readside.events WHERE id = $1`, c.Position).Scan(&at))
		target = "time:" + at.Format(time.RFC3339Nano)
		// The first event, in read order, that occurred at or after it.
		rows, err := h.pool.Query(h.ctx, `SELECT id FROM readside.events WHERE occurred_at >= $1`, at)
		require.NoError(t, err)
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		require.NoError(t, err)
		first := c
		for _, id := range ids {
			if e := h.m.byID[id]; e != nil && e.cursor().Less(first) {
				first = e.cursor()
			}
		}
		c = outbox.Cursor{TxID: first.TxID, Position: first.Position - 1}
	}
	err := control.MoveCheckpoints(h.ctx, h.pool, h.probe(name), target)
	if p.shadow != nil {
		require.ErrorIs(t, err, control.ErrRebuildRunning, "reset %s %s", name, target)
		return
	}
	if pick == -2 {
		require.ErrorIs(t, err, control.ErrBeyondHead, "reset %s %s", name, target)
		h.compare("refused reset " + name + " " + target)
		return
	}
	require.NoError(t, err)
	if to == "start" {
		p.resetToStart()
		h.compare("reset " + name + " " + target)
		return
	}
	// The target is clamped to the end of the read window, which other
	// databases' transactions can hold further back than ours: take the
	// cursor the reset chose, and check that no event of a transaction
	// still running lies behind it.
	var got []outbox.Cursor
	rows, err := h.pool.Query(h.ctx, `SELECT DISTINCT cursor_txid, cursor_position FROM readside.checkpoints WHERE projection = $1`, name)
	require.NoError(t, err)
	got, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (outbox.Cursor, error) {
		var c outbox.Cursor
		return c, r.Scan(&c.TxID, &c.Position)
	})
	require.NoError(t, err)
	require.Len(t, got, 1, "reset %s %s: every segment at one cursor", name, target)
	if enabled.ResetPastWindow {
		require.False(t, c.Less(got[0]), "reset %s %s moved to %s, past its target", name, target, got[0])
		if hz := h.m.horizon(); hz != 0 {
			require.Less(t, got[0].TxID, hz, "reset %s %s moved to %s, at or past a running transaction (xid %d)", name, target, got[0], hz)
		}
		c = got[0]
	} else {
		require.Equal(t, c, got[0], "reset %s %s", name, target)
	}
	h.m.resetTo(p, c)
	h.compare("reset " + name + " " + target)
}

func (h *harness) prune() {
	_, _, err := control.PruneOutbox(h.ctx, h.pool, -1)
	require.NoError(h.t, err)
}

func (h *harness) cure(agg string) {
	_, err := h.pool.Exec(h.ctx, `INSERT INTO mt_cured (aggregate_id) VALUES ($1) ON CONFLICT DO NOTHING`, agg)
	require.NoError(h.t, err)
	h.m.cured[agg] = true
}

// observe reads a projection's state from the database.
func (h *harness) observe(name string) snapshot {
	t, p := h.t, h.probe(name)
	s := snapshot{State: map[string]string{}, Effects: map[int64]int{}, Dead: map[int64]string{}}
	rows, err := h.pool.Query(h.ctx, `SELECT aggregate_id, last_version::text || '|' || seq FROM `+p.state())
	require.NoError(t, err)
	for rows.Next() {
		var agg, v string
		require.NoError(t, rows.Scan(&agg, &v))
		s.State[agg] = v
	}
	require.NoError(t, rows.Err())
	require.NoError(t, h.pool.QueryRow(h.ctx, `SELECT coalesce((SELECT n FROM `+p.count()+`), 0)`).Scan(&s.Count))
	rows, err = h.pool.Query(h.ctx, `SELECT event_id, count(*)::int FROM mt_effects WHERE projection = $1 GROUP BY 1`, name)
	require.NoError(t, err)
	for rows.Next() {
		var id int64
		var n int
		require.NoError(t, rows.Scan(&id, &n))
		s.Effects[id] = n
	}
	require.NoError(t, rows.Err())
	require.NoError(t, h.pool.QueryRow(h.ctx, `SELECT EXISTS (SELECT 1 FROM readside.checkpoints WHERE projection = $1 AND status = 'failed')`,
		name).Scan(&s.Halted))
	rows, err = h.pool.Query(h.ctx, `SELECT event_id, status || '/' || reason FROM readside.dead_letters WHERE projection = $1`, name)
	require.NoError(t, err)
	for rows.Next() {
		var id int64
		var v string
		require.NoError(t, rows.Scan(&id, &v))
		s.Dead[id] = v
	}
	require.NoError(t, rows.Err())
	return s
}

func (h *harness) compare(after string) {
	for _, name := range h.names {
		want := h.m.proj(name).snapshot()
		got := h.observe(name)
		require.Equal(h.t, want, got, "%s after %s: model (expected) vs database (actual)", name, after)
	}
}

// do runs one fully specified step.
func (h *harness) do(s step) {
	switch s.Op {
	case "write":
		h.begin(s.Slot, s.Early)
		fallthrough
	case "more":
		for _, st := range s.Stmts {
			if !h.exec(s.Slot, st) {
				return
			}
		}
		if s.Op == "write" && s.End != "hold" {
			h.end(s.Slot, s.End)
		}
	case "idle":
		h.begin(s.Slot, true)
	case "fence":
		h.passFence()
	case "end":
		h.end(s.Slot, s.End)
	case "run":
		h.run(s)
	case "pause", "resume":
		h.pause(s.Proj, s.Op == "pause")
	case "cure":
		h.cure(s.Agg)
	case "retry":
		h.retry(s.Proj)
	case "discard":
		h.discard(s.Proj, s.Pick)
	case "repair":
		h.repair(s.Proj, s.Agg)
	case "reset":
		h.reset(s.Proj, s.To, s.Pick)
	case "scale":
		h.scale(s.Proj, s.N)
	case "prune":
		h.prune()
	case "rebuild":
		h.rebuild(s.Proj)
	case "switch":
		if !enabled.SwitchWithBacklog {
			h.run(step{})
		}
		if h.m.proj(s.Proj).shadow == nil {
			h.rebuild(s.Proj)
		}
		h.run(step{}, s.Proj)
	default:
		panic("modeltest: unknown step " + s.Op)
	}
}

// finish commits every held slot, resumes every paused projection and runs
// to the end: nothing may be left behind.
func (h *harness) finish() {
	for i, s := range h.m.slots {
		if s.open {
			h.end(i, "commit")
		}
	}
	for _, p := range h.m.projs {
		if p.paused {
			h.pause(p.name, false)
		}
	}
	h.run(step{})
}

// replay runs a literal history (a regression case).
func replay(t tb, pool *pgxpool.Pool, cfg config, steps []step) {
	h := newHarness(t, pool, cfg)
	defer h.close()
	for _, s := range steps {
		h.do(s)
	}
	h.finish()
}
