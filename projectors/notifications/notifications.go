// Package notifications is the shipped example of a projection with side
// effects: for every OrderShipped it enqueues a River job (which "sends" the
// customer a notification) with InsertManyTx inside the runtime's apply
// transaction, so the job exists exactly when the checkpoint has passed the
// event: once. Before it enqueues, it asks readside's side-effect ledger
// (Batch.SideEffectsDue) which events have had their job already: a replay
// after a reset, a rebuild's copy, a repair or a dead-letter retry enqueue
// only for an event applied for the first time.
package notifications

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/projectors"
)

// Name is the projection's name.
const Name = "order_notifications"

// Queue is the River queue the notification jobs go to.
const Queue = "readside_side_effects"

// OrderShippedArgs is the job that notifies a customer that an order
// shipped.
type OrderShippedArgs struct {
	EventID        int64  `json:"event_id"`
	OrderID        string `json:"order_id"`
	TrackingNumber string `json:"tracking_number,omitempty"`
}

// Kind implements river.JobArgs.
func (OrderShippedArgs) Kind() string { return "order_shipped_notification" }

// InsertOpts implements river.JobArgsWithInsertOpts.
func (OrderShippedArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{Queue: Queue} }

// Projection enqueues notification jobs.
type Projection struct {
	client *river.Client[pgx.Tx] // insert-only: it only ever uses the runtime's tx
}

// New returns the projection.
func New() *Projection {
	client, err := river.NewClient(riverpgxv5.New(nil), &river.Config{})
	if err != nil {
		panic(err) // an empty config is always valid
	}
	return &Projection{client: client}
}

// Spec implements projectors.Projection. It has no tables of its own, so it
// cannot be rebuilt (there is nothing to rebuild: sent is sent).
func (*Projection) Spec() projectors.Spec {
	return projectors.Spec{Name: Name, EventTypes: []string{domain.OrderShippedType}, AggregateTypes: []string{domain.OrderAggregate}}
}

// Apply implements projectors.Projection.
func (p *Projection) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	due, err := b.SideEffectsDue(ctx, tx, nil)
	if err != nil {
		return err
	}
	params := make([]river.InsertManyParams, 0, len(due))
	for _, e := range due {
		v, err := domain.Decode(e.Type, e.SchemaVersion, e.Data)
		if err != nil {
			return fmt.Errorf("%s: event %d: %w", Name, e.ID(), err)
		}
		s, ok := v.(*domain.OrderShipped)
		if !ok {
			return fmt.Errorf("%s: event %d: unexpected type %s", Name, e.ID(), e.Type)
		}
		params = append(params, river.InsertManyParams{Args: OrderShippedArgs{EventID: e.ID(), OrderID: s.OrderID, TrackingNumber: s.TrackingNumber}})
	}
	if len(params) == 0 {
		return nil
	}
	_, err = p.client.InsertManyTx(ctx, tx, params)
	return err
}

// Reset implements projectors.Projection: nothing to undo.
func (*Projection) Reset(context.Context, pgx.Tx) error { return nil }

// Worker "sends" the notification: it records it in order_notifications,
// once per event even if River runs the job twice.
type Worker struct {
	river.WorkerDefaults[OrderShippedArgs]
	DB projectors.DB // readside's pool, in its schema
}

// Work implements river.Worker.
func (w *Worker) Work(ctx context.Context, job *river.Job[OrderShippedArgs]) error {
	_, err := w.DB.Exec(ctx, `INSERT INTO readside.order_notifications (event_id, order_id, tracking_number) VALUES ($1, $2, $3)
		ON CONFLICT (event_id) DO NOTHING`, job.Args.EventID, job.Args.OrderID, job.Args.TrackingNumber)
	return err
}

// RiverWorkers implements projectors.SideEffects: it registers the
// notification worker.
func (*Projection) RiverWorkers(db projectors.DB, w *river.Workers) {
	river.AddWorker(w, &Worker{DB: db})
}

// RiverQueues is the queue the notification jobs go to, with its workers.
func (*Projection) RiverQueues() map[string]river.QueueConfig {
	return map[string]river.QueueConfig{Queue: {MaxWorkers: 4}}
}
