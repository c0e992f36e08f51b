package projectors

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/readside/readside/checkpoint"
)

// retryReason classifies err as transient (retry the same batch after a
// backoff) and names the reason for metrics, or returns "" for an error of
// the projection itself (bad event, bug), which is isolated and parked.
// Classification is by SQLSTATE and pgconn, never by message text.
func retryReason(err error) string {
	if err == nil || errors.Is(err, checkpoint.ErrFenced) {
		return ""
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "40001":
			return "serialization"
		case pgErr.Code == "40P01":
			return "deadlock"
		case pgErr.Code == "55P03":
			return "lock_timeout"
		case pgErr.Code == "57014": // query_canceled: statement_timeout
			return "timeout"
		case pgErr.Code == "53300" || pgErr.Code == "53400": // too many connections, configuration limit
			return "connection"
		case pgErr.Code[:2] == "08" || pgErr.Code[:2] == "57": // connection exception, operator intervention (shutdown, terminated)
			return "connection"
		case pgErr.Code == "25P03": // idle_in_transaction_session_timeout
			return "connection"
		}
		return ""
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case pgconn.SafeToRetry(err), pgconn.Timeout(err),
		errors.As(err, &connectErr), errors.As(err, &netErr),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, context.DeadlineExceeded):
		return "connection"
	}
	if errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, pgx.ErrTxClosed) {
		return "connection" // the connection died under the transaction
	}
	return ""
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
