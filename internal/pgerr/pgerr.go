// Package pgerr classifies PostgreSQL and connection errors as transient
// (worth retrying the transaction after a backoff) by SQLSTATE and pgconn,
// never by message text.
package pgerr

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Transient returns why err is worth retrying (serialization, deadlock,
// lock_timeout, timeout, connection) or "" when it is not: a constraint
// violation, bad data, a bug.
func Transient(err error) string {
	if err == nil {
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
		case pgErr.Code == "53300" || pgErr.Code == "53400": // too many connections
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
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, pgconn.ErrConnClosed), errors.Is(err, pgx.ErrTxClosed):
		return "connection"
	}
	return ""
}
