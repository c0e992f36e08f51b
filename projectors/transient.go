package projectors

import (
	"errors"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/pgerr"
)

// retryReason classifies err as transient (retry the same batch after a
// backoff) and names the reason for metrics, or returns "" for an error of
// the projection itself (bad event, bug), which is isolated and parked.
func retryReason(err error) string {
	if errors.Is(err, checkpoint.ErrFenced) {
		return ""
	}
	return pgerr.Transient(err)
}

// permanent reports whether err says that applying the event again cannot
// succeed: an error in its chain has a method Permanent() bool that returns
// true (domain.InvalidEventError does).
func permanent(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}
