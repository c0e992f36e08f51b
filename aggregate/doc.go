// Package aggregate is the writer's repository for event-sourced aggregates.
//
// Load rebuilds an aggregate from its latest snapshot and the events after
// it (older event schema versions are upcast by domain.Decode); Save appends
// new events with outbox.Append inside the caller's transaction and, every
// Config.SnapshotEvery events, writes a snapshot in the same transaction.
// Execute runs load, decide and save in one transaction and retries
// optimistic-concurrency conflicts a bounded number of times:
//
//	res, err := aggregate.Execute(ctx, repo, orderID, meta,
//		func(o *domain.Order) ([]domain.Event, error) {
//			return o.Confirm(domain.ConfirmOrder{OrderID: orderID}, time.Now())
//		})
package aggregate
