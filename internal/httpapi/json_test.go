package httpapi_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/aggregate"
)

// Commands take JSON only: a cross-site form (text/plain, urlencoded,
// multipart), which a browser sends without asking, is refused with 415
// before anything runs, body or no body.
func TestCommandsRequireJSON(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aggregate.Config{})
	post := func(path, contentType, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", path, strings.NewReader(body))
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		rec := httptest.NewRecorder()
		e.srv.ServeHTTP(rec, req)
		return rec
	}
	for _, ct := range []string{"", "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
		"multipart/form-data; boundary=x", "application/json; charset=latin1", "application/jsonx", "application/json;;"} {
		rec := post("/orders", ct, validOrder)
		require.Equal(t, http.StatusUnsupportedMediaType, rec.Code, "%q: %s", ct, rec.Body.String())
		require.Contains(t, rec.Body.String(), "application/json")
	}
	require.Equal(t, http.StatusCreated, post("/orders", "application/json; charset=utf-8",
		`{"order_id":"o-ct","customer_name":"A","items":[{"product_name":"W","quantity":1,"unit_price":1}]}`).Code)
	require.Equal(t, http.StatusUnsupportedMediaType, post("/orders/o-ct/confirm", "text/plain", "").Code, "even without a body")
	require.Equal(t, http.StatusUnsupportedMediaType, post("/orders/o-ct/confirm", "", "").Code)
	require.Equal(t, http.StatusOK, post("/orders/o-ct/confirm", "Application/JSON", "").Code)
}

// A malformed body is not quoted back whole.
func TestBodyErrorsDoNotEchoWholeInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aggregate.Config{})
	big := strings.Repeat("A", 60<<10)
	for _, body := range []string{
		`{"` + big + `":1}`,
		`{"customer_name":"A","items":[{"product_name":"W","quantity":1,"unit_price":"` + big + `"}]}`,
		`{"customer_name":"A","items":[],"x":` + big + `}`,
	} {
		res := e.do("POST", "/orders", body)
		require.Contains(t, []int{http.StatusBadRequest, http.StatusUnprocessableEntity}, res.code, "%.300s", res.raw)
		require.Less(t, len(res.raw), 1024, "%.300s", res.raw)
	}
}
