// Package backoff holds the waits between retries that readside's writers,
// projector runtime and load generator share: an exponential delay with
// jitter, and a sleep that ends early when its context is done.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Delay returns the wait before retry attempt n (1-based): base doubled per
// attempt, capped at maxDelay, with equal jitter in [d/2, d] so that
// clients that failed together spread out but still back off.
func Delay(n int, base, maxDelay time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d/2+1)
}

// Sleep waits for d or until ctx is done, and returns ctx's error in that
// case. A d of 0 or less does not wait.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
