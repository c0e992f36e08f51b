package backoff_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/backoff"
)

func TestDelay(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		n      int
		lo, hi time.Duration
	}{
		{1, 50 * time.Millisecond, 100 * time.Millisecond},
		{2, 100 * time.Millisecond, 200 * time.Millisecond},
		{4, 400 * time.Millisecond, 800 * time.Millisecond},
		{50, 500 * time.Millisecond, time.Second}, // capped, no overflow
	} {
		for range 100 {
			d := backoff.Delay(tc.n, 100*time.Millisecond, time.Second)
			require.GreaterOrEqual(t, d, tc.lo, "attempt %d", tc.n)
			require.LessOrEqual(t, d, tc.hi, "attempt %d", tc.n)
		}
	}
	require.Zero(t, backoff.Delay(3, 0, time.Second))
}

func TestSleep(t *testing.T) {
	t.Parallel()
	require.NoError(t, backoff.Sleep(context.Background(), time.Millisecond))
	require.NoError(t, backoff.Sleep(context.Background(), 0))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, backoff.Sleep(ctx, time.Hour), context.Canceled)
	require.ErrorIs(t, backoff.Sleep(ctx, 0), context.Canceled)
}
