// Package checkpoint is the data model of readside's checkpoints: per
// (projection, segment), the read cursor, its high-water mark, the lease
// that says which worker may advance it, and the operator's status
// (running, paused, or halted by a failing event).
//
// Checkpoints are read and changed through readside.Client (Status, Reset,
// Pause, Resume, ...); the runtime's claims, fenced advances and operator
// locks are internal, since calling them out of order would break the
// guarantees. Fencing: every apply transaction starts by moving the cursor
// only if the caller's lease (owner and epoch) is still current and the
// cursor is where the caller read from; that UPDATE takes the checkpoint's
// row lock, so no other worker can claim the segment until the transaction
// ends, and a worker that lost its lease commits nothing (ErrFenced).
package checkpoint

import (
	"errors"
	"time"

	"github.com/readside/readside/outbox"
)

// Status of a segment.
type Status string

const (
	Running Status = "running"
	Paused  Status = "paused"
	Failed  Status = "failed" // halted by a failing event; see LastError
)

// ErrFenced means the caller's lease is gone (expired, taken over, released)
// or the checkpoint moved under it (reset): its transaction must roll back.
var ErrFenced = errors.New("lease lost: checkpoint fenced")

// ErrUnknownProjection is returned for a projection that was never
// registered.
var ErrUnknownProjection = errors.New("unknown projection")

// Checkpoint is one segment's row.
type Checkpoint struct {
	Projection     string
	Segment        int
	Cursor         outbox.Cursor
	HighWater      outbox.Cursor // furthest cursor ever committed
	Status         Status
	LeaseOwner     string // empty when unowned
	LeaseEpoch     int64
	LeaseExpiresAt time.Time // zero when unowned
	LastError      string
	EventsApplied  int64
	AdvancedAt     time.Time // zero if never advanced
	UpdatedAt      time.Time
}
