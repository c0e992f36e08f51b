package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/printable"
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

// maxErrorBytes caps an error message: whatever it quotes, an answer stays
// small.
const maxErrorBytes = 1024

// WriteError writes {"error": msg} with status.
func WriteError(w http.ResponseWriter, status int, msg string) {
	WriteJSON(w, status, ErrorResponse{Error: printable.Cap(msg, maxErrorBytes)})
}

// maxEchoBytes is how much of a client's value an error quotes.
const maxEchoBytes = 200

// echo quotes v, a value the client sent, for an error message: at most
// maxEchoBytes of it, and its length when it was cut.
func echo(v string) string {
	if len(v) <= maxEchoBytes {
		return strconv.Quote(v)
	}
	return fmt.Sprintf("%s (%d bytes)", strconv.Quote(printable.Cap(v, maxEchoBytes)), len(v))
}

// storable reports whether PostgreSQL can hold s as text: UTF-8 without a
// NUL character.
func storable(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// unstorableReason is the 422 for text that is not storable.
const unstorableReason = "must be UTF-8 without a NUL character"

// isJSON reports whether the request says its body is JSON:
// application/json, with no parameter but charset=utf-8.
func isJSON(r *http.Request) bool {
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return false
	}
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") {
			return false
		}
	}
	return true
}

// isUnstorable reports whether err is PostgreSQL refusing a character it
// cannot hold (a NUL, bytes not in the encoding): the client's input, a
// 422, wherever a check before it missed it.
func isUnstorable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "22021" || pgErr.Code == "22P05")
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
		return &requestError{http.StatusUnprocessableEntity, printable.Cap(money.Error(), maxEchoBytes)}
	case errors.As(err, &tooBig):
		return &requestError{http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", tooBig.Limit)}
	case errors.Is(err, io.EOF):
		return &requestError{http.StatusBadRequest, "request body is empty; want a JSON object"}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &requestError{http.StatusBadRequest, "malformed JSON: unexpected end of input"}
	default:
		// encoding/json quotes unknown field names: cap what it echoes.
		return &requestError{http.StatusBadRequest, "malformed JSON: " + printable.Cap(err.Error(), maxEchoBytes)}
	}
}
