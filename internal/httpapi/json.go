package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/readside/readside/domain"
)

// WriteJSON writes v as a JSON response with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client may have gone; nothing to do
}

// ErrorResponse is the body of every error response.
type ErrorResponse struct {
	Error string `json:"error"`
	// Field names the invalid request field of a 422, when known.
	Field string `json:"field,omitempty"`
}

// WriteError writes {"error": msg} with status.
func WriteError(w http.ResponseWriter, status int, msg string) {
	WriteJSON(w, status, ErrorResponse{Error: msg})
}

// requestError is a bad request body, with the status to answer.
type requestError struct {
	status int
	msg    string
}

func (e *requestError) Error() string { return e.msg }

// decodeJSON reads one JSON object from the body into v, refusing unknown
// fields, trailing data and bodies over limit bytes. An empty body leaves v
// unchanged when allowEmpty.
func decodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any, allowEmpty bool) error {
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if errors.Is(err, io.EOF) && allowEmpty {
		return nil
	}
	if err == nil {
		// One JSON value only.
		if err = dec.Decode(&json.RawMessage{}); errors.Is(err, io.EOF) {
			return nil
		} else if err == nil {
			err = errors.New("trailing data after the JSON object")
		}
	}
	var tooBig *http.MaxBytesError
	var money *domain.MoneyError
	switch {
	case errors.As(err, &money):
		// Well-formed JSON with an amount that is not one ("+7", "--5",
		// three decimals) or that the read models cannot hold.
		return &requestError{http.StatusUnprocessableEntity, money.Error()}
	case errors.As(err, &tooBig):
		return &requestError{http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", tooBig.Limit)}
	case errors.Is(err, io.EOF):
		return &requestError{http.StatusBadRequest, "request body is empty; want a JSON object"}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &requestError{http.StatusBadRequest, "malformed JSON: unexpected end of input"}
	default:
		return &requestError{http.StatusBadRequest, "malformed JSON: " + err.Error()}
	}
}
