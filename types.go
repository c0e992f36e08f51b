package readside

import (
	"github.com/readside/readside/internal/control"
	"github.com/readside/readside/internal/deadletter"
	"github.com/readside/readside/internal/observe"
)

// What the operations take and return, defined with the machinery that
// produces them.
type (
	// SegmentStatus is one segment's checkpoint with its lag, stall,
	// parked events and whether a live worker owns it.
	SegmentStatus = observe.SegmentStatus
	// UnsubscribedType is an aggregate type of the log that no projection
	// takes, with its event count.
	UnsubscribedType = observe.UnsubscribedType
	// NotCaughtUpError ends WaitFor and WaitCaughtUp when ctx ends first:
	// the first projection behind, and its segments behind.
	NotCaughtUpError = observe.NotCaughtUpError
	// DeadLetter is a parked event and what became of it.
	DeadLetter = deadletter.Letter
	// DeadLetterFilter selects dead letters (parked ones by default).
	DeadLetterFilter = deadletter.Filter
	// DeadLetterStatus is parked, retried or discarded.
	DeadLetterStatus = deadletter.Status
	// DeadLetterReason is failed (the event itself) or blocked (an earlier
	// event of its aggregate is parked).
	DeadLetterReason = deadletter.Reason
	// RepairOptions names the aggregates Repair rebuilds.
	RepairOptions = control.RepairOptions
	// RepairedAggregate is what Repair did to one aggregate.
	RepairedAggregate = control.RepairedAggregate
	// Verification is what Verify found (and repaired).
	Verification = control.Verification
	// VerifiedTable is what Verify found in one table.
	VerifiedTable = control.VerifiedTable
	// DifferingAggregate is an aggregate whose rows differ from the
	// log's.
	DifferingAggregate = control.DifferingAggregate
)

// Dead-letter statuses and reasons.
const (
	DeadLetterParked    = deadletter.Parked
	DeadLetterRetried   = deadletter.Retried
	DeadLetterDiscarded = deadletter.Discarded
	// DeadLetterAnyStatus in a DeadLetterFilter matches every status.
	DeadLetterAnyStatus = deadletter.AnyStatus

	DeadLetterFailed  = deadletter.Failed
	DeadLetterBlocked = deadletter.Blocked
)

// UnsubscribedCountCap is up to where UnsubscribedType.Events counts.
const UnsubscribedCountCap = observe.UnsubscribedCountCap

// Errors WaitFor returns at once, without waiting: no wait could see the
// token passed.
var (
	// ErrTokenBeyondHead: no transaction of the database has had the
	// token's transaction id (a forged token, or one of another cluster).
	ErrTokenBeyondHead = observe.ErrTokenBeyondHead
	// ErrTokenRolledBack: the token's transaction rolled back, so the write
	// it was given for never happened.
	ErrTokenRolledBack = observe.ErrTokenRolledBack
)
