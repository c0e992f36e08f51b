package projectors

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/readside/readside/checkpoint"
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

// backoff returns the delay before retry attempt n (1-based): exponential
// from base, capped, with full jitter in [d/2, d).
func backoff(n int, base, maxDelay time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
