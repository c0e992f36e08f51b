package domain

import (
	"errors"
	"fmt"
)

// Sentinel errors that command callers branch on (the HTTP API maps them to
// status codes). Decisions return them wrapped with details; test with
// errors.Is.
var (
	// ErrValidation: the command carries an invalid value (quantity <= 0,
	// price <= 0, empty customer name, no items, ...). Retrying the same
	// command cannot succeed.
	ErrValidation = errors.New("validation failed")
	// ErrInvalidTransition: the command is not allowed in the aggregate's
	// current state (shipping a cancelled order, pricing a deleted product).
	ErrInvalidTransition = errors.New("invalid state transition")
	// ErrNotFound: the command addresses an aggregate that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a creating command addresses an aggregate that
	// already exists.
	ErrAlreadyExists = errors.New("already exists")
)

// ValidationError says which field of a command is invalid and why. It
// unwraps to ErrValidation.
type ValidationError struct {
	Field  string // JSON name of the field, e.g. "items[0].quantity"
	Reason string // e.g. "must be greater than 0"
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("%s %s", e.Field, e.Reason)
}

func (e *ValidationError) Unwrap() error { return ErrValidation }

func invalid(field, reason string) error { return &ValidationError{Field: field, Reason: reason} }

// nulReason: PostgreSQL cannot store a NUL character in text or jsonb
// (SQLSTATE 22P05), so a command carrying one is refused up front.
const nulReason = "must not contain a NUL character"

// TransitionError says which command an aggregate refused in which state. It
// unwraps to ErrInvalidTransition.
type TransitionError struct {
	Aggregate string // aggregate type, e.g. "Order"
	ID        string
	Command   string // e.g. "ShipOrder"
	Status    string // the aggregate's current status
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("%s %s is %s: %s is not allowed", e.Aggregate, e.ID, e.Status, e.Command)
}

func (e *TransitionError) Unwrap() error { return ErrInvalidTransition }

func notFound(aggType, id string) error { return fmt.Errorf("%s %s: %w", aggType, id, ErrNotFound) }

func alreadyExists(aggType, id string) error {
	return fmt.Errorf("%s %s: %w", aggType, id, ErrAlreadyExists)
}
