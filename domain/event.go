package domain

import (
	"crypto/rand"
	"fmt"
	"regexp"
)

// Event is implemented by pointers to the event payload structs (what
// Decode returns and what decisions produce).
type Event interface {
	EventType() string
}

func (*OrderPlaced) EventType() string    { return OrderPlacedType }
func (*OrderConfirmed) EventType() string { return OrderConfirmedType }
func (*OrderShipped) EventType() string   { return OrderShippedType }
func (*OrderCancelled) EventType() string { return OrderCancelledType }
func (*ProductCreated) EventType() string { return ProductCreatedType }
func (*PriceUpdated) EventType() string   { return PriceUpdatedType }
func (*ProductDeleted) EventType() string { return ProductDeletedType }

// State is an aggregate's state, rebuilt by applying its events in version
// order. Implementations are JSON-serialisable (the repository stores them as
// snapshots) and their zero value is the state before the first event.
type State interface {
	// AggregateType is the events' aggregate_type, e.g. "Order".
	AggregateType() string
	// Apply folds one event into the state. An event the aggregate does not
	// know is an error: the stream is corrupt or written by a newer binary.
	Apply(e Event) error
}

// MaxIDLength bounds aggregate ids accepted from clients.
const MaxIDLength = 64

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]*$`)

// ValidID reports whether id is acceptable as an aggregate id: 1 to
// MaxIDLength letters, digits, '_', '.', ':' or '-', starting with a letter
// or digit.
func ValidID(id string) bool { return len(id) <= MaxIDLength && idRE.MatchString(id) }

// CheckID is ValidID as a *ValidationError naming field, for an id a
// client chose (in a request body) that is checked before anything loads
// it: PostgreSQL refuses a NUL character in a query parameter outright.
func CheckID(field, id string) error { return checkID(field, id) }

func checkID(field, id string) error {
	if !ValidID(id) {
		return invalid(field, fmt.Sprintf("must be 1 to %d letters, digits, '_', '.', ':' or '-'", MaxIDLength))
	}
	return nil
}

// NewID returns a random (version 4) UUID for a new aggregate.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
