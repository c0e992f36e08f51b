package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// RetryAfter is the Retry-After, in seconds, of a 503 answered because a
// bound ran out: the server is busy or something holds what the request
// needs, and the same request may well succeed a moment later.
const RetryAfter = "1"

// gate admits at most a fixed number of requests of one class (commands,
// or reads of the read models) at once. Each class has its own, so that
// one cannot take every connection and starve the other; a request that
// finds no place within the acquire timeout is answered 503 at once
// rather than queued without bound.
type gate struct {
	class string
	slots chan struct{}
	wait  time.Duration
}

func newGate(class string, n int, wait time.Duration) *gate {
	return &gate{class: class, slots: make(chan struct{}, n), wait: wait}
}

// enter waits up to the gate's acquire timeout, and not past ctx, for a
// place, and returns the function that gives it back.
func (g *gate) enter(ctx context.Context) (leave func(), err error) {
	select {
	case g.slots <- struct{}{}:
		return g.leave, nil
	default:
	}
	timer := time.NewTimer(g.wait)
	defer timer.Stop()
	select {
	case g.slots <- struct{}{}:
		return g.leave, nil
	case <-timer.C:
		return nil, &busyError{class: g.class, n: cap(g.slots), wait: g.wait}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (g *gate) leave() { <-g.slots }

// busyError is a request that found no place in its gate in time.
type busyError struct {
	class string
	n     int
	wait  time.Duration
}

func (e *busyError) Error() string {
	return fmt.Sprintf("server busy: %d %s in progress and none finished within %v", e.n, e.class, e.wait)
}

// unavailable returns the 503 message for err when it is a bound that ran
// out: no place in a gate, a lock held by another transaction past
// lock_timeout (SQLSTATE 55P03), a statement past statement_timeout
// (57014), or the request's own deadline.
func unavailable(err error) (string, bool) {
	var busy *busyError
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &busy):
		return busy.Error() + "; retry later", true
	case errors.As(err, &pgErr) && pgErr.Code == "55P03":
		return "another transaction holds a lock this request needs (lock_timeout); retry later", true
	case errors.As(err, &pgErr) && pgErr.Code == "57014":
		return "the database did not answer in time (statement_timeout); retry later", true
	case errors.Is(err, context.DeadlineExceeded), pgconn.Timeout(err):
		return "the request did not finish in time; retry later", true
	}
	return "", false
}

func isUnavailable(err error) bool {
	_, ok := unavailable(err)
	return ok
}

// writeUnavailable answers 503 with Retry-After.
func writeUnavailable(w http.ResponseWriter, msg string) {
	w.Header().Set("Retry-After", RetryAfter)
	WriteError(w, http.StatusServiceUnavailable, msg)
}
