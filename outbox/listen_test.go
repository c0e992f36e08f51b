package outbox_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/outbox"
)

// TestParseBuckets: a payload names buckets only when it is the events
// trigger's mask (migration 018); anything else, an older trigger's empty
// payload or a forged one, wakes every segment, so no notification is
// ever dropped.
func TestParseBuckets(t *testing.T) {
	require.Equal(t, outbox.Buckets(1<<63), outbox.ParseBuckets("8000000000000000"), "bucket 63 (to_hex of a negative bigint)")
	require.Equal(t, outbox.Buckets(1<<5|1<<13), outbox.ParseBuckets("2020"))
	for _, p := range []string{"", "0", "zz", "-1", "10000000000000000", " 1"} {
		require.Equal(t, outbox.AllBuckets, outbox.ParseBuckets(p), "payload %q", p)
	}
}

func TestSegmentBuckets(t *testing.T) {
	var want outbox.Buckets
	for b := 5; b < 64; b += 8 {
		want |= 1 << b
	}
	require.Equal(t, want, outbox.SegmentBuckets(8, 5))
	require.Equal(t, outbox.AllBuckets, outbox.SegmentBuckets(1, 0), "one segment reads every bucket")
	require.Equal(t, outbox.AllBuckets, outbox.SegmentBuckets(3, 1), "a count not dividing 64 reads by hash")
	var all outbox.Buckets
	for s := range 16 {
		all |= outbox.SegmentBuckets(16, s)
	}
	require.Equal(t, outbox.AllBuckets, all, "the segments of a count cover every bucket")
}
