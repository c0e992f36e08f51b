package outbox

import (
	"context"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgxlisten"
)

// Buckets is a set of the outbox's hash buckets (migration 006): bit b
// for bucket b.
type Buckets uint64

// AllBuckets is every bucket.
const AllBuckets = ^Buckets(0)

// SegmentBuckets is the set of buckets segment seg of n reads: the buckets
// b with b % n == seg when n divides 64, every bucket otherwise (such a
// segment is read by hash, not by bucket).
func SegmentBuckets(n, seg int) Buckets {
	if n <= 1 || bucketCount%n != 0 {
		return AllBuckets
	}
	var m Buckets
	for b := seg; b < bucketCount; b += n {
		m |= 1 << b
	}
	return m
}

// ParseBuckets reads a notification's payload: the buckets of the rows its
// statement wrote, a 64-bit mask in hexadecimal (migration 018). An empty
// or malformed payload (a trigger older than 018, or not readside's) means
// every bucket: a notification is never ignored.
func ParseBuckets(payload string) Buckets {
	m, err := strconv.ParseUint(payload, 16, 64)
	if err != nil || m == 0 {
		return AllBuckets
	}
	return Buckets(m)
}

// Listen holds a dedicated connection LISTENing on Channel and calls notify
// (which must not block) on every notification with the buckets it names,
// and with AllBuckets once after each (re)connect, since notifications sent
// while disconnected are lost. It reconnects after reconnectDelay on
// failure and returns when ctx is done.
func Listen(ctx context.Context, connect func(ctx context.Context) (*pgx.Conn, error), reconnectDelay time.Duration, notify func(Buckets), onError func(error)) {
	l := &pgxlisten.Listener{
		Connect:        connect,
		ReconnectDelay: reconnectDelay,
		LogError: func(_ context.Context, err error) {
			if onError != nil && ctx.Err() == nil {
				onError(err)
			}
		},
	}
	l.Handle(Channel, handler(notify))
	_ = l.Listen(ctx)
}

// handler calls notify on every notification and on every (re)connect
// (HandleBacklog), when notifications may have been missed.
type handler func(Buckets)

func (h handler) HandleNotification(_ context.Context, n *pgconn.Notification, _ *pgx.Conn) error {
	h(ParseBuckets(n.Payload))
	return nil
}

func (h handler) HandleBacklog(context.Context, string, *pgx.Conn) error {
	h(AllBuckets)
	return nil
}
