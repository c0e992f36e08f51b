package httpapi_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/httpapi"
)

// Every read answer carries a strong ETag and Cache-Control: no-cache;
// If-None-Match with it answers 304 without a body until the answer
// changes, also when a row is rewritten at the same version (a repair).
func TestQueryETag(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, nil)
	_, err := e.pool.Exec(context.Background(), `INSERT INTO readside.order_details (order_id, customer_name, total_amount, status, item_count, placed_at, version)
		VALUES ('o-1', 'Alice', 12.5, 'pending', 1, now(), 1)`)
	require.NoError(t, err)
	do := func(path, inm string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("GET", path, nil)
		if inm != "" {
			req.Header.Set("If-None-Match", inm)
		}
		rec := httptest.NewRecorder()
		e.srv.ServeHTTP(rec, req)
		return rec
	}
	for _, path := range []string{"/orders/o-1", "/orders", "/statistics", "/products"} {
		first := do(path, "")
		require.Equal(t, http.StatusOK, first.Code, path)
		etag := first.Header().Get("ETag")
		require.NotEmpty(t, etag, path)
		require.Equal(t, httpapi.CacheControl, first.Header().Get("Cache-Control"))
		again := do(path, etag)
		require.Equal(t, http.StatusNotModified, again.Code, path)
		require.Empty(t, again.Body.String())
		require.Equal(t, etag, again.Header().Get("ETag"))
		require.Equal(t, http.StatusNotModified, do(path, `"other", W/`+etag).Code, path)
		require.Equal(t, http.StatusOK, do(path, `"other"`).Code, path)
	}
	etag := do("/orders/o-1", "").Header().Get("ETag")
	// A token the read model has not reached is never answered 304 (nor
	// 200) from what the client holds: the token is checked first.
	behind := do("/orders/o-1?"+httpapi.ConsistencyTokenParam+"=999999999/1&"+httpapi.WaitParam+"=50ms", etag)
	require.NotEqual(t, http.StatusNotModified, behind.Code)
	require.NotEqual(t, http.StatusOK, behind.Code)
	_, err = e.pool.Exec(context.Background(), `UPDATE readside.order_details SET customer_name = 'Alicia' WHERE order_id = 'o-1'`)
	require.NoError(t, err)
	changed := do("/orders/o-1", etag)
	require.Equal(t, http.StatusOK, changed.Code, "same version, other content: not 304")
	require.Contains(t, changed.Body.String(), "Alicia")
	require.NotEqual(t, etag, changed.Header().Get("ETag"))
}
