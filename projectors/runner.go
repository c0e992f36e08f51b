package projectors

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/internal/backoff"
	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/internal/deadletter"
	"github.com/readside/readside/internal/printable"
	"github.com/readside/readside/outbox"
)

// errHalted ends a segment's task after its failing event halted it.
var errHalted = errors.New("segment halted")

type fetched struct {
	batch *outbox.Batch
	err   error
}

// runSegment applies a segment's batches until it has caught up with the
// read window, the lease is lost, or the worker stops. The next batch is
// fetched while the current one is applied. Batches in flight finish on a
// soft stop (softCtx) and roll back on a hard one (hardCtx).
func (w *Worker) runSegment(softCtx, hardCtx context.Context, s *segment) error {
	s.held, s.retry = false, false
	batch, err := w.fetchInSlot(hardCtx, s, s.cursor)
	for {
		if err != nil {
			// What was announced is read by no one else: the coordinator
			// runs the segment again (segment.retry), after the others
			// queued meanwhile, so that a fetch failing at this cursor
			// every time does not keep an executor from them, and a lease
			// given back or lost in the meantime takes effect.
			if err := w.transient(softCtx, s, "fetch", err); err != nil {
				return err
			}
			s.retry = true
			return nil
		}
		if batch.Scanned == 0 && batch.Next == s.cursor {
			s.retries, s.held = 0, batch.Held
			return nil // caught up
		}
		// A batch that reached the byte budget is not applied while the
		// next one is fetched: two batches of large events in memory at
		// once is what the budget is there to prevent. Nor is one when
		// every slot is taken: the server is busy with as many of this
		// worker's statements as it should run.
		heavy := batch.Cut || w.heavy(batch)
		// A batch that stopped short of the fetch's limits reached the end
		// of the read window: what commits next is announced by a
		// notification, which runs the segment again (segment.again), so
		// nothing is fetched beside it or after it. Without notifications
		// (PollOnly), and for a rebuild's copy (which stops behind the live
		// projection, not at the window), the next fetch finds out.
		atEnd := !heavy && batch.Scanned < w.scanLimit(s) && !w.cfg.PollOnly && s.schema == ""
		if err := w.acquire(hardCtx); err != nil {
			return err
		}
		var next <-chan fetched
		if !heavy && !atEnd {
			next = w.prefetch(hardCtx, s, batch.Next)
		}
		to, applyErr := w.apply(hardCtx, s, batch)
		<-w.slots
		var pre fetched
		if next != nil {
			pre = <-next
		}
		if applyErr != nil {
			if errors.Is(applyErr, checkpoint.ErrFenced) || errors.Is(applyErr, errHalted) {
				return applyErr
			}
			if err := w.transient(softCtx, s, "apply", applyErr); err != nil {
				return err
			}
			batch, err = w.fetchInSlot(hardCtx, s, s.cursor)
			continue
		}
		s.advanced(to)
		if !w.pause(softCtx, s) {
			return nil // soft stop: the batch in flight has finished
		}
		if to != batch.Next {
			// Part of the batch is waiting for a retry of a failing event:
			// the prefetched batch does not follow on; read again from here.
			batch, err = w.fetchInSlot(hardCtx, s, to)
			continue
		}
		if atEnd {
			s.held = batch.Held
			return nil
		}
		if next == nil {
			after := batch.Next
			if heavy {
				// The heavy batch's payloads are garbage now: collect
				// them before the next fetch allocates as much again,
				// rather than let the heap grow to twice what is live
				// (GOGC) first.
				batch = nil
				runtime.GC()
			}
			pre.batch, pre.err = w.fetchInSlot(hardCtx, s, after)
		}
		batch, err = pre.batch, pre.err
	}
}

// heavy reports whether a batch's payloads reached the fetch's byte budget.
func (w *Worker) heavy(b *outbox.Batch) bool {
	budget := cmp.Or(w.cfg.BatchBytes, outbox.FetchMaxBytesDefault)
	var n int64
	for i := range b.Events {
		n += int64(len(b.Events[i].Data) + len(b.Events[i].Metadata))
		if n >= budget {
			return true
		}
	}
	return false
}

// prefetch fetches the batch after `after` on another connection while the
// current one is applied, when a slot is free (nil otherwise). The
// goroutine always delivers, and runSegment always receives, so it never
// outlives the segment's task.
func (w *Worker) prefetch(ctx context.Context, s *segment, after outbox.Cursor) <-chan fetched {
	select {
	case w.slots <- struct{}{}:
	default:
		return nil
	}
	next := make(chan fetched, 1)
	go func() {
		defer func() { <-w.slots }()
		b, err := w.fetch(ctx, s, after)
		next <- fetched{b, err}
	}()
	return next
}

// fetchInSlot is fetch in one of the worker's slots.
func (w *Worker) fetchInSlot(ctx context.Context, s *segment, after outbox.Cursor) (*outbox.Batch, error) {
	if err := w.acquire(ctx); err != nil {
		return nil, err
	}
	defer func() { <-w.slots }()
	return w.fetch(ctx, s, after)
}

// acquire waits for a free slot.
func (w *Worker) acquire(ctx context.Context) error {
	select {
	case w.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// advanced records a committed batch: the cursor moved to to.
func (s *segment) advanced(to outbox.Cursor) {
	s.retries = 0
	s.cursor = to
	if s.high.Less(to) {
		s.high = to
	}
}

// pause waits out the backoff of a failing event before its next attempt
// (s.wait). It returns false when the worker is stopping: a soft stop need
// not wait for the attempt.
func (w *Worker) pause(softCtx context.Context, s *segment) bool {
	if softCtx.Err() != nil {
		return false
	}
	d := s.wait
	s.wait = 0
	return d <= 0 || backoff.Sleep(softCtx, d) == nil
}

// transient logs and counts a retryable error, waits out the backoff and
// returns nil to retry, or returns the error when the worker is stopping.
func (w *Worker) transient(softCtx context.Context, s *segment, op string, err error) error {
	if softCtx.Err() != nil {
		return softCtx.Err()
	}
	reason := retryReason(err)
	if reason == "" {
		reason = "unknown"
	}
	s.retries++
	w.metrics.retries.WithLabelValues(s.spec.Name, reason).Inc()
	w.metrics.batches.WithLabelValues(s.spec.Name, "retried").Inc()
	d := backoff.Delay(s.retries, w.cfg.RetryBackoff, w.cfg.MaxRetryBackoff)
	w.log.Warn("batch failed; retrying", "op", op, "projection", s.spec.Name, "segment", s.lease.Segment,
		"cursor", s.cursor.String(), "reason", reason, "attempt", s.retries, "backoff", d, "err", printable.Cap(err.Error(), logErrorBytes))
	return backoff.Sleep(softCtx, d)
}

func (w *Worker) fetch(ctx context.Context, s *segment, after outbox.Cursor) (*outbox.Batch, error) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.LeaseTTL)
	defer cancel()
	// A segment keeps about 1/Segments of the rows it passes over: pass over
	// that many more, so that its batches hold about BatchSize events
	// instead of a fraction of it (fewer, fuller transactions).
	limit := w.scanLimit(s)
	f := s.spec.filter(s.lease.Segment)
	f.MaxBytes = w.cfg.BatchBytes
	if s.schema != "" {
		return fetchBehindLive(ctx, w.db, s.proj.Spec().Name, s.lease.Segment, after, limit, f)
	}
	return outbox.Fetch(ctx, w.db, after, limit, f)
}

// scanLimit is how many outbox rows one fetch of s passes over at most.
func (w *Worker) scanLimit(s *segment) int {
	return min(w.cfg.BatchSize*s.spec.Segments, max(w.cfg.BatchSize, maxScan))
}

// maxScan bounds the outbox rows one fetch passes over.
const maxScan = 16_000

// begin opens an apply transaction and, in one round trip (its BEGIN
// included: dbschema.BeginBatch), bounds how long the transaction may sit
// idle (a stopped or paused worker must not hold the
// checkpoint's row lock past its lease), fences it with the lease by moving
// the checkpoint, and asks which of the batch's aggregates are parked and,
// when it replays history, which of its events an operator discarded.
func (w *Worker) begin(ctx context.Context, s *segment, from, to outbox.Cursor, applied int, events []outbox.Event) (pgx.Tx, skips, error) {
	// Dead letters lie at or below the cursor that parked them (see
	// parkUpTo), so only a batch that replays history can hold a discarded
	// event.
	// A rebuild's copy replays everything, and skips what an operator
	// discarded from the live projection as well as from the copy.
	replay := s.replaying(events)
	check := s.parked || replay
	s.replays = nil
	c, err := w.cfg.Pool.Acquire(ctx)
	if err != nil {
		return nil, skips{}, err
	}
	b := &pgx.Batch{}
	checkpoint.QueueAdvance(b, s.lease, from, to, applied, w.cfg.LeaseTTL)
	if check {
		queueSkips(b, s, events, replay)
	}
	floors := queueFloors(b, s, events)
	tx, res := w.db.Schema().BeginBatch(ctx, c, b, true, s.schema, w.txSettings...)
	sk, err := readBegin(res, tx, s, from, check, floors)
	if err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, sk, err
	}
	return tx, sk, nil
}

// replaying says whether a batch of events may replay history: a
// rebuild's copy's, or one that starts at or below the segment's
// high-water mark or its buckets' floors.
func (s *segment) replaying(events []outbox.Event) bool {
	return len(events) > 0 && (s.schema != "" || !s.high.Less(events[0].Cursor) || !s.floorsUntil.Less(events[0].Cursor))
}

// applySettings are the apply transaction's settings, made with
// readside's search_path at its BEGIN: the idle timeout and the commit's
// synchronous_commit (see Config.SynchronousApply).
func applySettings(cfg Config) []dbschema.Setting {
	idle := dbschema.Setting{Name: "idle_in_transaction_session_timeout", Value: strconv.FormatInt(cfg.LeaseTTL.Milliseconds(), 10)}
	if cfg.SynchronousApply {
		// The session's own synchronous_commit (its role's, its
		// database's or the server's).
		return []dbschema.Setting{idle}
	}
	return []dbschema.Setting{idle, {Name: "synchronous_commit", Value: "off"}}
}

// readBegin reads the results of the advance, when check queueSkips,
// and when floors queueFloors queued, and closes res.
func readBegin(res pgx.BatchResults, tx pgx.Tx, s *segment, from outbox.Cursor, check, floors bool) (skips, error) {
	sk := skips{parked: map[aggKey]bool{}, discarded: map[int64]bool{}}
	err := dbschema.ReadBegin(res)
	if err == nil {
		err = checkpoint.AdvanceResult(res.Exec())(s.lease, from)
	}
	if err == nil && check {
		err = readSkips(res, sk)
	}
	if err == nil && floors {
		sk.done, s.replays, err = checkpoint.ReadFloors(res)
	}
	if err == nil {
		err = dbschema.ReadProjection(res, tx)
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	return sk, err
}

// queueSkips queues the question which of the events' aggregates are
// parked and, when replay, which of the events an operator discarded.
func queueSkips(b *pgx.Batch, s *segment, events []outbox.Event, replay bool) {
	types, ids := aggregates(events)
	var eventIDs []int64
	if replay {
		eventIDs = make([]int64, len(events))
		for i, e := range events {
			eventIDs[i] = e.ID()
		}
	}
	b.Queue(`SELECT aggregate_type, aggregate_id, 0::bigint FROM readside.dead_letters
			WHERE projection = $1 AND status = 'parked'
			  AND (aggregate_type, aggregate_id) IN (SELECT * FROM unnest($2::text[], $3::text[]))
			UNION ALL
			SELECT '', '', event_id FROM readside.dead_letters
			WHERE cardinality($4::bigint[]) > 0 AND projection IN ($1, $5) AND status = 'discarded' AND event_id = ANY ($4::bigint[])`,
		s.spec.Name, types, ids, eventIDs, s.proj.Spec().Name)
}

// readSkips reads the answer to queueSkips into sk.
func readSkips(res pgx.BatchResults, sk skips) error {
	rows, err := res.Query()
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var k aggKey
		var discarded int64
		if err := rows.Scan(&k.typ, &k.id, &discarded); err != nil {
			return err
		}
		if discarded != 0 {
			sk.discarded[discarded] = true
		} else {
			sk.parked[k] = true
		}
	}
	return rows.Err()
}

// skips are the events of a batch not to apply: those of parked aggregates
// (they are parked behind the failed one), those discarded by an operator
// (neither applied nor parked), and those at or below their bucket's floor
// (applied before a scale).
type skips struct {
	parked    map[aggKey]bool
	discarded map[int64]bool
	done      map[int64]bool
}

type aggKey struct{ typ, id string }

func aggregates(events []outbox.Event) (types, ids []string) {
	seen := map[aggKey]bool{}
	for _, e := range events {
		k := aggKey{e.AggregateType, e.AggregateID}
		if !seen[k] {
			seen[k] = true
			types = append(types, k.typ)
			ids = append(ids, k.id)
		}
	}
	if types == nil {
		types, ids = []string{}, []string{}
	}
	return types, ids
}

// apply applies one batch and returns the cursor committed: batch.Next, or
// less when a failing event waits for another attempt. The fast path is one
// transaction with no savepoints; only when the projection fails does the
// slow path split the batch to find the failing event. When the batch
// needs no read before Apply (deferrable), the transaction begins only
// when the projection's code uses it (lazyTx), and not at all when it
// only queues (Batch.Queue): then the whole batch is one round trip.
func (w *Worker) apply(ctx context.Context, s *segment, batch *outbox.Batch) (outbox.Cursor, error) {
	return w.applyBatch(ctx, s, batch, w.deferrable(s, batch.Events))
}

func (w *Worker) applyBatch(ctx context.Context, s *segment, batch *outbox.Batch, lazy bool) (outbox.Cursor, error) {
	start := time.Now()
	from := s.cursor
	var tx pgx.Tx
	var lt *lazyTx
	var sk skips
	if lazy {
		lt = &lazyTx{ctx: ctx, begin: func(ctx context.Context) (pgx.Tx, error) {
			tx, _, err := w.begin(ctx, s, from, batch.Next, len(batch.Events), batch.Events)
			if err != nil {
				return nil, w.fencedOr(s, err)
			}
			ptx, err := dbschema.Projection(ctx, tx, "")
			if err != nil {
				_ = tx.Rollback(context.WithoutCancel(ctx))
				return nil, err
			}
			return ptx, nil
		}}
		tx = lt
	} else {
		var err error
		if tx, sk, err = w.begin(ctx, s, from, batch.Next, len(batch.Events), batch.Events); err != nil {
			return from, w.fencedOr(s, err)
		}
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	events, blocked, discarded := split(batch.Events, sk)
	if len(blocked) > 0 || discarded > 0 {
		if err := w.park(ctx, tx, s, blocked, "blocked", blockedMsg, 0); err != nil {
			return from, err
		}
		// Advance counted the whole batch before the parked aggregates
		// were known: count only what is applied.
		if err := checkpoint.AdvanceHeld(ctx, tx, s.lease, batch.Next, batch.Next, -len(blocked)-discarded, w.cfg.LeaseTTL); err != nil {
			return from, w.fencedOr(s, err)
		}
	}
	if len(events) > 0 {
		if err := w.applyEvents(ctx, tx, s, events); err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			if lt != nil && lt.err != nil {
				// The BEGIN the projection's code asked for failed (fenced,
				// or a transient error): the projection did not fail.
				return from, lt.err
			}
			if retryReason(err) != "" {
				return from, err
			}
			w.metrics.batches.WithLabelValues(s.spec.Name, "isolated").Inc()
			return w.applyIsolating(ctx, s, batch)
		}
	}
	if lt != nil && !lt.begun() {
		done, err := w.commitQueued(ctx, s, batch, lt.queue)
		if !done {
			// Nothing was applied: the ordinary way meets the cause, if
			// there is one, and handles it.
			return w.applyBatch(ctx, s, batch, false)
		}
		if err != nil {
			return from, err
		}
	} else if err := tx.Commit(ctx); err != nil {
		if lt != nil && lt.err != nil {
			return from, lt.err // counted when it failed
		}
		return from, w.fencedOr(s, err)
	}
	w.committed(s, events, start)
	return batch.Next, nil
}

// deferrable says whether a batch's transaction can wait for the
// projection's code (lazyTx): the runtime has nothing to read first, no
// parked aggregates, no replay (a reset's, a rebuild's copy's, below a
// scale's floors) and no side-effect ledger of a SideEffects projection.
func (w *Worker) deferrable(s *segment, events []outbox.Event) bool {
	if _, fx := s.proj.(SideEffects); fx {
		return false
	}
	return w.queueing && len(events) > 0 && !s.parked && !s.replaying(events) && len(s.belowFloors(events)) == 0
}

// commitQueued applies a batch in one round trip: the checkpoint's
// advance, which fails when fenced, what Apply queued and the COMMIT in
// one pipeline (dbschema.CommitBatch). done is true when the batch
// committed, or when the lease was fenced (err ErrFenced). Otherwise
// nothing was applied: a queued statement failed, or pgx could not encode
// its arguments, or the statements could not be prepared, or a transient
// error; err is the reason, for the log.
func (w *Worker) commitQueued(ctx context.Context, s *segment, batch *outbox.Batch, q *pgx.Batch) (done bool, err error) {
	from := s.cursor
	s.replays = nil
	c, err := w.cfg.Pool.Acquire(ctx)
	if err != nil {
		return false, err
	}
	b := &pgx.Batch{}
	checkpoint.QueueAdvance(b, s.lease, from, batch.Next, len(batch.Events), w.cfg.LeaseTTL)
	p, err := w.db.Schema().CommitBatch(ctx, c, b, q, w.prepare, w.txSettings...)
	if err != nil {
		c.Release()
	} else {
		res := p.Results()
		err = dbschema.ReadBegin(res)
		if err == nil {
			err = checkpoint.AdvanceResult(res.Exec())(s.lease, from)
		}
		if err == nil {
			err = p.Commit()
		}
		if cerr := p.End(ctx); err == nil {
			err = cerr
		}
	}
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, checkpoint.ErrFenced):
		return true, w.fencedOr(s, err)
	}
	w.log.Debug("queued batch not applied; applying it again, beginning first", "projection", s.spec.Name, "segment", s.lease.Segment,
		"err", printable.Cap(err.Error(), logErrorBytes))
	return false, err
}

func (w *Worker) committed(s *segment, events []outbox.Event, start time.Time) {
	now := time.Now()
	name := s.spec.Name
	w.metrics.batches.WithLabelValues(name, "committed").Inc()
	w.metrics.batchDuration.WithLabelValues(name).Observe(now.Sub(start).Seconds())
	w.metrics.batchSize.WithLabelValues(name).Observe(float64(len(events)))
	w.metrics.eventsApplied.WithLabelValues(name).Add(float64(len(events)))
	if s.schema != "" {
		return // a rebuild's copy replays history: not end-to-end latency
	}
	lat := w.metrics.latency.WithLabelValues(name)
	for _, e := range events {
		// Events at or below the high-water mark are a replay after a
		// reset: their age is the age of history, not latency.
		if !e.AppendedAt.IsZero() && !s.replayed(e) {
			lat.Observe(now.Sub(e.AppendedAt).Seconds())
		}
	}
}

func (w *Worker) fencedOr(s *segment, err error) error {
	if errors.Is(err, checkpoint.ErrFenced) {
		w.metrics.fenced.WithLabelValues(s.spec.Name).Inc()
		w.metrics.batches.WithLabelValues(s.spec.Name, "fenced").Inc()
	}
	return err
}

// split drops discarded events and those a scale's floors pass over
// (returning how many) and separates those of parked aggregates from the
// rest.
func split(events []outbox.Event, sk skips) (keep, blocked []outbox.Event, discarded int) {
	if len(sk.parked) == 0 && len(sk.discarded) == 0 && len(sk.done) == 0 {
		return events, nil, 0
	}
	for _, e := range events {
		if sk.discarded[e.ID()] || sk.done[e.ID()] {
			discarded++
		} else if sk.parked[aggKey{e.AggregateType, e.AggregateID}] {
			blocked = append(blocked, e)
		} else {
			keep = append(keep, e)
		}
	}
	return keep, blocked, discarded
}

// applyIsolating is the slow path: in one transaction, it applies the batch
// in savepoints, bisecting to find the first failing event. A failing event
// below MaxAttempts ends the transaction just before it (the events before
// it commit) and is retried after a backoff; at MaxAttempts it is parked
// together with every later event of its aggregate (policy Park) and the
// rest of the batch goes on, or the segment halts (policy Halt).
func (w *Worker) applyIsolating(ctx context.Context, s *segment, batch *outbox.Batch) (outbox.Cursor, error) {
	start := time.Now()
	from := s.cursor
	// Fence without moving (from -> from); the final Advance moves it.
	tx, sk, err := w.begin(ctx, s, from, from, 0, batch.Events)
	if err != nil {
		return from, w.fencedOr(s, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	iso, err := w.isolate(ctx, tx, s, batch, sk)
	if err != nil {
		return from, err
	}
	if iso.retryAttempts > 0 && iso.to == from {
		// The failing event is the first: nothing to commit before it.
		_ = tx.Rollback(ctx)
		s.wait = backoff.Delay(iso.retryAttempts, w.cfg.RetryBackoff, w.cfg.MaxRetryBackoff)
		return from, nil
	}
	if err := w.commitIsolated(ctx, tx, s, from, iso); err != nil {
		return from, err
	}
	w.committed(s, iso.applied, start)
	switch {
	case iso.halt != "":
		w.metrics.batches.WithLabelValues(s.spec.Name, "halted").Inc()
		return iso.to, errHalted
	case iso.retryAttempts > 0:
		s.wait = backoff.Delay(iso.retryAttempts, w.cfg.RetryBackoff, w.cfg.MaxRetryBackoff)
	}
	return iso.to, nil
}

// isolated is what an isolating transaction commits.
type isolated struct {
	applied []outbox.Event
	parking []parked
	to      outbox.Cursor // where the checkpoint moves
	// retryAttempts is > 0 when the failing event after to waits for
	// another attempt.
	retryAttempts int
	// halt is the checkpoint's last_error when the failing event after to
	// halts the segment (policy Halt); "" otherwise.
	halt string
}

// isolate applies the batch's events in savepoints, inside tx, until the
// first failing event that is to be tried again or halts the segment;
// failing events that are to be parked (policy Park) are set aside with
// the later events of their aggregate, and the rest goes on.
func (w *Worker) isolate(ctx context.Context, tx pgx.Tx, s *segment, batch *outbox.Batch, sk skips) (isolated, error) {
	from := s.cursor
	// Events are parked only once the cursor they lie under is known, in the
	// transaction that commits it: an event parked beyond the committed
	// cursor would be read again, and if an operator had retried or
	// discarded it meanwhile, applied (again).
	remaining, blocked, _ := split(batch.Events, sk)
	iso := isolated{to: batch.Next, parking: []parked{{events: blocked, reason: "blocked", msg: blockedMsg}}}
	for len(remaining) > 0 {
		i, cause, err := w.find(ctx, tx, s, remaining)
		if err != nil {
			return iso, err
		}
		if i < 0 {
			iso.applied = append(iso.applied, remaining...)
			break
		}
		iso.applied = append(iso.applied, remaining[:i]...)
		bad := remaining[i]
		s.attempts[bad.ID()]++
		attempts := s.attempts[bad.ID()]
		log := w.failureLog(s, from, bad, attempts, cause)
		// A permanent error (see Projection.Apply) cannot succeed on
		// another attempt: it is parked, or halts, at once.
		exhausted := attempts >= w.cfg.MaxAttempts || permanent(cause)
		if exhausted && s.spec.OnError != Halt {
			log.Error("event keeps failing; parking it and later events of its aggregate (policy park)")
			remaining = iso.parkAggregate(remaining[i:], attempts, cause)
			continue
		}
		// Commit what came before the failing event; it is retried (or
		// halts the segment) from there.
		iso.to = before(batch, i, remaining, from)
		if exhausted {
			log.Error("event keeps failing; halting the segment (policy halt)")
			iso.halt = haltReason(bad, attempts, cause)
		} else {
			log.Warn("event failed; retrying after backoff")
			w.metrics.retries.WithLabelValues(s.spec.Name, "projection").Inc()
			iso.retryAttempts = attempts
		}
		break
	}
	return iso, nil
}

// parkAggregate adds events[0], the failed event, and the later events of
// its aggregate to the events to park, and returns the rest.
func (iso *isolated) parkAggregate(events []outbox.Event, attempts int, cause error) (rest []outbox.Event) {
	bad := events[0]
	k := aggKey{bad.AggregateType, bad.AggregateID}
	var sameAgg []outbox.Event
	for _, e := range events[1:] {
		if (aggKey{e.AggregateType, e.AggregateID}) == k {
			sameAgg = append(sameAgg, e)
		} else {
			rest = append(rest, e)
		}
	}
	iso.parking = append(iso.parking,
		parked{events: []outbox.Event{bad}, reason: "failed", msg: cause.Error(), attempts: attempts},
		parked{events: sameAgg, reason: "blocked", msg: blockedMsg})
	return rest
}

// commitIsolated parks the events at or below iso.to, moves the checkpoint
// there, marks the segment failed when iso.halt says why, and commits.
func (w *Worker) commitIsolated(ctx context.Context, tx pgx.Tx, s *segment, from outbox.Cursor, iso isolated) error {
	if err := w.parkUpTo(ctx, tx, s, iso.to, iso.parking); err != nil {
		return err
	}
	if err := checkpoint.AdvanceHeld(ctx, tx, s.lease, from, iso.to, len(iso.applied), w.cfg.LeaseTTL); err != nil {
		return w.fencedOr(s, err)
	}
	if iso.halt != "" {
		if err := checkpoint.Fail(ctx, tx, s.lease, iso.halt); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return w.fencedOr(s, err)
	}
	return nil
}

// haltReason is the checkpoint's last_error when bad halts its segment.
func haltReason(bad outbox.Event, attempts int, cause error) string {
	return fmt.Sprintf("event %d (%s %s/%s v%d) failed %d times: %v",
		bad.ID(), bad.Type, bad.AggregateType, bad.AggregateID, bad.Version, attempts, cause)
}

// Caps of what a log line quotes from an event, which a writer through
// the SQL contract chose: a field of it, or an error that may quote it.
const (
	logFieldBytes = 200
	logErrorBytes = 2000
)

// failureLog is the logger for a failing event.
func (w *Worker) failureLog(s *segment, from outbox.Cursor, bad outbox.Event, attempts int, cause error) *slog.Logger {
	return w.log.With("projection", s.spec.Name, "segment", s.lease.Segment, "cursor", from.String(),
		"event_id", bad.ID(), "event_type", printable.Cap(bad.Type, logFieldBytes),
		"aggregate", printable.Cap(bad.AggregateType, logFieldBytes)+"/"+printable.Cap(bad.AggregateID, logFieldBytes),
		"correlation_id", printable.Cap(correlationID(bad), logFieldBytes), "attempt", attempts,
		"err", printable.Cap(cause.Error(), logErrorBytes))
}

// before is the cursor just before remaining[i]: the previous matching
// event's cursor, or `from` when it is the first.
func before(batch *outbox.Batch, i int, remaining []outbox.Event, from outbox.Cursor) outbox.Cursor {
	target := remaining[i].Cursor
	prev := from
	for _, e := range batch.Events {
		if !e.Cursor.Less(target) {
			break
		}
		prev = e.Cursor
	}
	return prev
}

// find applies events in savepoints and returns the index of the first one
// that fails on its own, with its error, having applied everything before
// it; -1 when all applied. A transient error aborts the search.
func (w *Worker) find(ctx context.Context, tx pgx.Tx, s *segment, events []outbox.Event) (int, error, error) {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return 0, nil, err
	}
	applyErr := w.applyEvents(ctx, sp, s, events)
	if applyErr == nil {
		return -1, nil, sp.Commit(ctx)
	}
	if err := sp.Rollback(ctx); err != nil {
		return 0, nil, err
	}
	if retryReason(applyErr) != "" {
		return 0, nil, applyErr
	}
	if len(events) == 1 {
		return 0, applyErr, nil
	}
	mid := len(events) / 2
	i, cause, err := w.find(ctx, tx, s, events[:mid])
	if err != nil || i >= 0 {
		return i, cause, err
	}
	j, cause, err := w.find(ctx, tx, s, events[mid:])
	if err != nil || j < 0 {
		return j, cause, err
	}
	return mid + j, cause, nil
}

const blockedMsg = "an earlier event of this aggregate is parked"

// parked is a group of events to park with one reason.
type parked struct {
	events      []outbox.Event
	reason, msg string
	attempts    int // of a failed event; 0 for blocked ones
}

// parkUpTo parks the events at or below the cursor the transaction
// commits. The rest are read again: whatever parks them then (their
// aggregate is parked, they fail again) is decided at that read.
func (w *Worker) parkUpTo(ctx context.Context, tx pgx.Tx, s *segment, to outbox.Cursor, parking []parked) error {
	for _, p := range parking {
		var events []outbox.Event
		for _, e := range p.events {
			if !to.Less(e.Cursor) {
				events = append(events, e)
			}
		}
		if err := w.park(ctx, tx, s, events, p.reason, p.msg, p.attempts); err != nil {
			return err
		}
		if p.reason == "failed" && len(events) > 0 {
			delete(s.attempts, events[0].ID())
		}
	}
	return nil
}

// park writes events to the dead-letter table inside tx. An event already
// parked (read again after a reset moved the cursor back) keeps its row as
// it is: its reason and attempts say why it was parked. One that an
// operator retried is parked again; one discarded stays discarded. An
// event at or below the high-water mark (or read by a rebuild's copy) was
// applied once before, side effects included: its dead letter is a replay
// (dead_letters.replay), and so is a retried one parked again.
func (w *Worker) park(ctx context.Context, tx pgx.Tx, s *segment, events []outbox.Event, reason, msg string, attempts int) error {
	if len(events) == 0 {
		return nil
	}
	replay := func(e outbox.Event) bool { return s.schema != "" || s.replayed(e) }
	if err := deadletter.Park(ctx, tx, deadletter.Parking{Projection: s.spec.Name, Segment: s.lease.Segment,
		Reason: deadletter.Reason(reason), Error: msg, Attempts: attempts, Replay: replay}, events); err != nil {
		return err
	}
	s.parked = true
	w.metrics.parked.WithLabelValues(s.spec.Name, reason).Add(float64(len(events)))
	return nil
}

func correlationID(e outbox.Event) string {
	var m outbox.Metadata
	_ = json.Unmarshal(e.Metadata, &m) // best effort: for the log line only
	return m.CorrelationID
}

// parkedSegments returns which of the claimed segments have parked dead
// letters (nil on error: then every batch checks).
func parkedSegments(ctx context.Context, db checkpoint.DB, claimed []checkpoint.Checkpoint) (map[checkpoint.Segment]bool, error) {
	if len(claimed) == 0 {
		return map[checkpoint.Segment]bool{}, nil
	}
	projs := make([]string, len(claimed))
	segs := make([]int32, len(claimed))
	for i, c := range claimed {
		projs[i], segs[i] = c.Projection, int32(c.Segment)
	}
	rows, err := db.Query(ctx, `SELECT DISTINCT d.projection, d.segment FROM readside.dead_letters d
		JOIN unnest($1::text[], $2::int[]) AS c(projection, segment) ON c.projection = d.projection AND c.segment = d.segment
		WHERE d.status = 'parked'`, projs, segs)
	if err != nil {
		return nil, err
	}
	out := map[checkpoint.Segment]bool{}
	for rows.Next() {
		var k checkpoint.Segment
		if err := rows.Scan(&k.Projection, &k.Segment); err != nil {
			rows.Close()
			return nil, err
		}
		out[k] = true
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// applyEvents calls the projection with events in order, split at the
// segment's high-water mark: events at or below it were passed once before
// a reset moved the cursor back, and go in a Batch flagged Replay; the rest
// go in a second call. Whether side effects fire is the ledger's answer
// (Batch.SideEffectsDue), not the flag's.
func (w *Worker) applyEvents(ctx context.Context, tx pgx.Tx, s *segment, events []outbox.Event) error {
	if lt, ok := tx.(*lazyTx); ok {
		// deferrable: no replay, the live projection, its search_path set
		// when the transaction begins.
		b := (&Batch{Events: events, Segment: s.lease.Segment, ledger: ledger{schema: w.db.Schema(), projection: s.proj.Spec().Name}}).deferring(lt)
		if err := lt.apply(ctx, s.proj, b); err != nil {
			return err
		}
		if !lt.begun() && dbschema.Pipelineable(b.queue) {
			lt.queue = b.queue // sent with the BEGIN and the COMMIT
			return nil
		}
		return b.flush(ctx, lt)
	}
	// The live projection's ledger, also for a rebuild's copy.
	l := ledgerOf(tx, s.proj)
	tx, err := dbschema.Projection(ctx, tx, s.schema)
	if err != nil {
		return err
	}
	apply := func(b *Batch) error {
		b.ledger = l
		if err := s.proj.Apply(ctx, tx, b.deferring(tx)); err != nil {
			return err
		}
		return b.flush(ctx, tx)
	}
	if s.schema != "" && len(events) > 0 {
		// A rebuild's copy applies only what the live projection has
		// passed (fetchBehindLive): a replay, whose side effects the
		// ledger says fired unless the live projection parked the event.
		return apply(&Batch{Events: events, Segment: s.lease.Segment, Replay: true})
	}
	events, split := s.replayFirst(events)
	if split > 0 {
		if err := apply(&Batch{Events: events[:split], Segment: s.lease.Segment, Replay: true}); err != nil {
			return err
		}
	}
	if split < len(events) {
		return apply(&Batch{Events: events[split:], Segment: s.lease.Segment})
	}
	return nil
}
