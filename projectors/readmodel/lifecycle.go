package readmodel

import (
	"fmt"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/outbox"
)

// Lifecycle is the legal steps of one aggregate type (package domain's
// transition table), as the read models check them: every event of a batch
// must be a legal step from its aggregate's status. An aggregate's first
// event of the batch is checked against the stored row, inside the upsert
// (see Steps.Before); the later ones against the status the batch's events
// fold to, here.
type Lifecycle[S ~string] struct {
	aggregate string // in messages: "order", "product"
	before    func(domain.Event) []S
	after     func(S, domain.Event) (S, error)
}

// The life cycles of the seed domain.
var (
	Orders   = Lifecycle[domain.OrderStatus]{"order", domain.OrderStatusesBefore, domain.OrderStatusAfter}
	Products = Lifecycle[domain.ProductStatus]{"product", domain.ProductStatusesBefore, domain.ProductStatusAfter}
)

// Steps is what a batch did to one aggregate's status. The zero value is an
// aggregate the batch has not reached yet; embed it in the row a read model
// folds the batch into.
type Steps[S ~string] struct {
	first      *outbox.Event // the batch's first event of the aggregate
	firstEvent domain.Event
	before     string // domain.StatusesBeforeSQL(firstEvent)
	status     S      // after the batch's events so far
}

// FirstVersion is the version of the aggregate's first event of the batch:
// a stored row at this version or later already reflects it (a replay).
func (s *Steps[S]) FirstVersion() int32 { return int32(s.first.Version) }

// Before is the statuses the stored row may be in for the first event to
// follow it, as ",a,b," (",," when the aggregate must not exist yet): the
// upsert matches it with strpos and returns the aggregates that fail.
func (s *Steps[S]) Before() string { return s.before }

// Follow decodes e, the aggregate's next event of the batch, and folds it
// into s. An event that does not decode, is not a step of this life cycle,
// or (after the first) is not a legal step from the folded status is an
// error naming the event (EventError), with domain.ErrInvalidEvent in its
// chain: the runtime parks it.
func (l Lifecycle[S]) Follow(projection string, s *Steps[S], e *outbox.Event) (domain.Event, error) {
	v, err := domain.Decode(e.Type, e.SchemaVersion, e.Data)
	if err != nil {
		return nil, EventError(projection, e, err)
	}
	ev, ok := v.(domain.Event)
	if !ok || l.before(ev) == nil {
		return nil, EventError(projection, e, fmt.Errorf("%s does not handle %T", projection, v))
	}
	if s.first == nil {
		s.first, s.firstEvent, s.before = e, ev, domain.StatusesBeforeSQL(ev)
		s.status, _ = l.after(l.before(ev)[0], ev)
		return ev, nil
	}
	if s.status, err = l.after(s.status, ev); err != nil {
		return nil, EventError(projection, e, fmt.Errorf("%s %s: %w", l.aggregate, e.AggregateID, err))
	}
	return ev, nil
}

// Refused is a row the upsert returns for an aggregate whose stored status
// its first event of the batch cannot follow: the upsert then writes
// nothing.
type Refused struct {
	ID     string
	Status string // stored; "" when there is no row
}

// Refuse is the error for r: the first event of the aggregate is not a
// legal step from its stored status.
func (l Lifecycle[S]) Refuse(projection string, s *Steps[S], r Refused) error {
	_, err := l.after(S(r.Status), s.firstEvent)
	return EventError(projection, s.first, fmt.Errorf("%s %s: %w", l.aggregate, r.ID, err))
}
