package httpapi

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors/readmodel"
)

// Querier is what the query routes and WaitFor need from the database (a
// *pgxpool.Pool, *pgx.Conn or pgx.Tx): what the read models' queries need.
type Querier = readmodel.Querier

// Query parameters of read-your-writes. The token may also come in the
// ConsistencyTokenHeader.
const (
	ConsistencyTokenParam = "consistency_token"
	WaitParam             = "wait"
)

// NotCaughtUpResponse is the body of a 504: the query's consistency token
// was not reached in time.
type NotCaughtUpResponse struct {
	Error      string `json:"error"`
	Projection string `json:"projection"`
	// Status is running (lagging: retry later), paused or failed (it will
	// not catch up without an operator), or unregistered.
	Status           string `json:"status"`
	ConsistencyToken string `json:"consistency_token"`
	// TokenUncommitted: the transaction that wrote the token had not
	// committed when the wait ended (a token is for after the commit).
	TokenUncommitted bool             `json:"token_uncommitted,omitempty"`
	Segments         []SegmentLagJSON `json:"segments,omitempty"`
}

// SegmentLagJSON is a segment behind the token.
type SegmentLagJSON struct {
	Segment int    `json:"segment"`
	Cursor  string `json:"cursor"`
	Status  string `json:"status"`
}

// awaitToken makes a query read its writer's writes: when the request
// carries a consistency token it waits, up to the request's wait, until the
// projections have passed it. It returns false after answering the request
// itself (400 for a malformed token or wait, 504 when the projections did
// not catch up in time).
func (q *queries) awaitToken(w http.ResponseWriter, r *http.Request, projections ...string) bool {
	params := r.URL.Query()
	wait := q.cfg.ConsistencyWait
	if v := params.Get(WaitParam); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > q.cfg.MaxConsistencyWait {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("%s=%s: want a duration such as 500ms, above 0 and at most %v", WaitParam, echo(v), q.cfg.MaxConsistencyWait))
			return false
		}
		wait = d
	}
	raw := cmp.Or(params.Get(ConsistencyTokenParam), r.Header.Get(ConsistencyTokenHeader))
	if raw == "" {
		return true
	}
	token, err := outbox.ParseCursor(raw)
	if err != nil {
		WriteError(w, http.StatusBadRequest, fmt.Sprintf("malformed consistency token %s: want TXID/POSITION, as a command answered it", echo(raw)))
		return false
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	err = observe.WaitFor(ctx, q.db, token, projections...)
	var lag *observe.NotCaughtUpError
	switch {
	case err == nil:
		return true
	case errors.Is(err, observe.ErrTokenBeyondHead), errors.Is(err, observe.ErrTokenRolledBack):
		// Waiting cannot help: answer at once, and without Retry-After.
		WriteError(w, http.StatusBadRequest, err.Error())
	case r.Context().Err() != nil:
		// The client has gone; the answer is for the access log only.
		WriteError(w, http.StatusServiceUnavailable, "request cancelled while waiting for the consistency token")
	case errors.As(err, &lag):
		res := NotCaughtUpResponse{
			Error:            fmt.Sprintf("timed out after %v: %v", wait, lag),
			Projection:       lag.Projection,
			Status:           lag.Status(),
			ConsistencyToken: token.String(),
			TokenUncommitted: lag.Uncommitted,
		}
		for _, s := range lag.Behind {
			res.Segments = append(res.Segments, SegmentLagJSON{Segment: s.Segment, Cursor: s.Cursor.String(), Status: string(s.Status)})
		}
		if !lag.Stuck() {
			w.Header().Set("Retry-After", "1")
		}
		WriteJSON(w, http.StatusGatewayTimeout, res)
	default:
		q.internalError(w, r, err)
	}
	return false
}
