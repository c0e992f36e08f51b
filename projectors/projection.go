package projectors

import (
	"context"
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/readside/readside/outbox"
)

// Projection turns events into a read model. The runtime calls Apply inside
// its own transaction, which also advances the projection's checkpoint: the
// effect is exactly once as long as Apply writes only through tx. Apply
// should still be idempotent (guard upserts by event version or position) so
// that replays converge.
type Projection interface {
	// Spec describes the projection; it must return the same value every
	// time.
	Spec() Spec
	// Apply applies a batch of events, in order, inside tx. Events of one
	// aggregate arrive in version order. An error rolls the batch back; the
	// runtime retries transient database errors and isolates the failing
	// event of anything else (see Spec.OnError). An error that has, in its
	// chain, a method Permanent() bool returning true (a payload that can
	// never decode, an illegal transition) is parked, or halts the
	// segment, at its first failure instead of after Config.MaxAttempts.
	Apply(ctx context.Context, tx pgx.Tx, b *Batch) error
	// Reset empties the read model (for example TRUNCATE of its tables),
	// before a replay from the start.
	Reset(ctx context.Context, tx pgx.Tx) error
}

// Schema is implemented by a projection that owns tables: `projector
// migrate` (migrations.Config.Projections) runs its SQL after readside's
// migrations, in the same transaction, every time, so it must be
// idempotent (CREATE TABLE IF NOT EXISTS ...). Unqualified names are
// created in readside's schema, where Apply, Reset and Forget find them:
// the runtime sets the search_path of the transactions it hands a
// projection to that schema (a rebuild's copy's schema first).
type Schema interface {
	Schema() string
}

// SideEffects is implemented by a projection whose Apply enqueues River
// jobs (projectors/notifications): a fleet member registers its workers and
// queues in the control plane's River client, so the jobs are worked. db is
// readside's pool: its statements run in readside's schema
// (`readside.order_notifications` names the table there). Apply enqueues
// only for the events Batch.SideEffectsDue returns, so that each event's
// jobs are enqueued once, whichever path applies it first.
type SideEffects interface {
	RiverWorkers(db DB, w *river.Workers)
	RiverQueues() map[string]river.QueueConfig
}

// DB is a database handle: *pgxpool.Pool, *pgx.Conn, pgx.Tx.
type DB = outbox.DB

// Spec describes a projection.
type Spec struct {
	// Name identifies the projection and its checkpoints: lower case
	// letters, digits and underscores, starting with a letter.
	Name string
	// EventTypes the projection receives; empty means all. Other events
	// are passed over without being fetched.
	EventTypes []string
	// AggregateTypes the projection receives; empty means all.
	AggregateTypes []string
	// Segments splits the projection by hash of aggregate id into
	// independently checkpointed parts that different workers can apply in
	// parallel. 0 means 1. It is the count the projection is registered
	// with the first time; afterwards the registry holds it and `projector
	// scale` (Client.Scale) changes it while the fleet runs.
	Segments int
	// OnError is what happens to an event that keeps failing: Park (the
	// default) or Halt.
	OnError ErrorPolicy
	// Tables are the read model's tables, unqualified, in readside's
	// schema. A rebuild builds copies of them and swaps them in when
	// caught up.
	Tables []string
	// Keys maps a table of Tables to its column holding the id of the
	// aggregate a row belongs to (order_summary: order_id). `projector
	// verify` names by it the aggregates whose rows differ from a rebuild
	// of the log, and repairs them with --repair. A table without one (a
	// counter over every aggregate) is still compared, but a difference
	// there names no aggregate.
	Keys map[string]string
	// Volatile lists columns, as "table.column", whose values depend on
	// when a row was written rather than on the events (updated_at set to
	// now()): `projector verify` leaves them out of the comparison.
	Volatile []string
}

// ErrorPolicy says what to do with an event whose apply keeps failing.
type ErrorPolicy string

const (
	// Park moves the failing event, and every later event of the same
	// aggregate, to the dead-letter table; other aggregates keep flowing and
	// per-aggregate order survives.
	Park ErrorPolicy = "park"
	// Halt stops the segment (status failed) until an operator resumes it.
	Halt ErrorPolicy = "halt"
)

// Batch is what Apply receives.
type Batch struct {
	Events  []outbox.Event
	Segment int
	// Replay is true when every event in the batch was, as far as the
	// runner can tell from its cursors, already applied by this projection
	// before a reset moved its checkpoint back, or, in a rebuild's copy,
	// by the live projection. It is a hint for work that may be skipped;
	// it does not say whether an event's side effects fired (an event
	// parked the first time round is applied for the first time in a
	// replay): ask SideEffectsDue before firing side effects outside the
	// read model (emails, webhooks, River jobs).
	Replay bool

	ledger ledger // where SideEffectsDue records; zero in a Batch built by hand
	// queue holds what Queue deferred; nil in a Batch built by hand. tx is
	// the transaction Apply was handed: Queue defers only statements for it.
	queue *pgx.Batch
	tx    pgx.Tx
}

// Queue runs sql in tx as tx.Exec would, later: the runtime sends what
// Apply queued after Apply returns, before the batch commits, in one round
// trip, and when Apply used tx for nothing else, together with the
// transaction's BEGIN, its checkpoint advance and its COMMIT. A batch whose
// writes need no answer from the database is then applied in one round
// trip instead of one for the BEGIN, one per statement and one for the
// COMMIT (README, "Throughput at the defaults": latency).
//
// Nothing reads a queued statement's result: a statement that must
// refuse the batch (an illegal transition) has to fail, not return rows
// saying so. Its error is Apply's: the batch rolls back and the failing
// event is found, retried and parked as for any error of Apply. Queued
// statements run after everything Apply ran on tx itself, in the order
// queued, under the same search_path; pgx describes them all before the
// first runs, so one must not depend on what an earlier queued one
// creates.
//
// Each distinct statement text a batch sends with its BEGIN is prepared
// once per connection; past dbschema.MaxPrepared on one connection they
// are all prepared again. So keep the text independent of the batch: pass
// the batch's rows as arrays (unnest), not as a VALUES list of its length.
//
// Queue is tx.Exec at once for a statement without arguments (pgx sends
// one by the simple protocol, which takes several statements: DDL), for
// a tx other than the one Apply was handed (a savepoint of it), and in a
// Batch built by hand and passed to Apply directly (ApplyBatch, which
// projectortest uses, defers as the runtime does).
func (b *Batch) Queue(ctx context.Context, tx pgx.Tx, sql string, args ...any) error {
	if b.queue == nil || len(args) == 0 || tx != b.tx {
		_, err := tx.Exec(ctx, sql, args...)
		return err
	}
	b.queue.Queue(sql, args...)
	return nil
}

// Deferring has b defer what Apply queues on tx until flush.
func (b *Batch) deferring(tx pgx.Tx) *Batch {
	b.queue, b.tx = &pgx.Batch{}, tx
	return b
}

// flush sends, in tx, what Apply queued.
func (b *Batch) flush(ctx context.Context, tx pgx.Tx) error {
	if b.queue == nil || b.queue.Len() == 0 {
		return nil
	}
	q := b.queue
	b.queue = &pgx.Batch{}
	res := tx.SendBatch(ctx, q)
	var err error
	for i := 0; err == nil && i < q.Len(); i++ {
		_, err = res.Exec()
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	return err
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

func (s Spec) withDefaults() Spec {
	if s.Segments == 0 {
		s.Segments = 1
	}
	if s.OnError == "" {
		s.OnError = Park
	}
	return s
}

func (s Spec) validate() error {
	switch {
	case !nameRE.MatchString(s.Name):
		return fmt.Errorf("projection name %q: want lower case letters, digits and underscores, starting with a letter", s.Name)
	case s.Segments < 1 || s.Segments > 1024:
		return fmt.Errorf("projection %s: segments %d out of range [1, 1024]", s.Name, s.Segments)
	case s.OnError != Park && s.OnError != Halt:
		return fmt.Errorf("projection %s: on-error policy %q: want park or halt", s.Name, s.OnError)
	}
	return nil
}

func (s Spec) filter(segment int) outbox.Filter {
	return outbox.Filter{EventTypes: s.EventTypes, AggregateTypes: s.AggregateTypes, Segment: segment, Segments: s.Segments}
}
