package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/internal/httpapi"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

type env struct {
	t    *testing.T
	pool *pgxpool.Pool
	srv  *httpapi.Server
}

func newEnv(t *testing.T, repoCfg aggregate.Config) *env {
	t.Helper()
	pool := pgtest.NewDB(t)
	reg := prometheus.NewRegistry()
	repoCfg.Registerer = reg
	repo, err := aggregate.New(pool, repoCfg)
	require.NoError(t, err)
	srv, err := httpapi.New(httpapi.Config{Repository: repo, DB: pool, Registerer: reg,
		Now: func() time.Time { return time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC) }})
	require.NoError(t, err)
	return &env{t: t, pool: pool, srv: srv}
}

type response struct {
	code   int
	header http.Header
	body   map[string]any
	raw    string
}

func (e *env) do(method, path, body string) response {
	e.t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(httpapi.CorrelationIDHeader, "corr-42")
	rec := httptest.NewRecorder()
	e.srv.ServeHTTP(rec, req)
	res := response{code: rec.Code, header: rec.Header(), raw: rec.Body.String()}
	if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
		require.NoError(e.t, json.Unmarshal(rec.Body.Bytes(), &res.body), rec.Body.String())
	}
	return res
}

const validOrder = `{"customer_name":"Alice","items":[{"product_id":"p-1","product_name":"Widget","quantity":2,"unit_price":12.50}]}`

func TestErrorPaths(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aggregate.Config{})
	// An order in status pending and a deleted product for the 409 cases.
	placed := e.do("POST", "/orders", `{"order_id":"o-pending","customer_name":"Bob","items":[{"product_name":"W","quantity":1,"unit_price":"3.00"}]}`)
	require.Equal(t, http.StatusCreated, placed.code, placed.raw)
	require.Equal(t, http.StatusCreated, e.do("POST", "/products", `{"product_id":"p-del","name":"Gone","price":1}`).code)
	require.Equal(t, http.StatusOK, e.do("DELETE", "/products/p-del", ``).code)

	oversized := `{"customer_name":"` + strings.Repeat("a", 2<<20) + `","items":[]}`
	for _, tc := range []struct {
		name, method, path, body string
		code                     int
		field                    string
	}{
		{"malformed JSON", "POST", "/orders", `{"customer_name":`, http.StatusBadRequest, ""},
		{"not JSON", "POST", "/orders", `hello`, http.StatusBadRequest, ""},
		{"empty body", "POST", "/orders", ``, http.StatusBadRequest, ""},
		{"unknown field", "POST", "/orders", `{"customer_name":"A","items":[],"coupon":"X"}`, http.StatusBadRequest, ""},
		{"unknown item field", "POST", "/orders", `{"customer_name":"A","items":[{"product_name":"W","quantity":1,"unit_price":1,"colour":"red"}]}`, http.StatusBadRequest, ""},
		{"trailing data", "POST", "/orders", validOrder + `{}`, http.StatusBadRequest, ""},
		{"wrong type", "POST", "/orders", `{"customer_name":"A","items":[{"product_name":"W","quantity":"two","unit_price":1}]}`, http.StatusBadRequest, ""},
		{"oversized", "POST", "/orders", oversized, http.StatusRequestEntityTooLarge, ""},
		{"unknown field on confirm", "POST", "/orders/o-pending/confirm", `{"force":true}`, http.StatusBadRequest, ""},

		{"zero quantity", "POST", "/orders", `{"customer_name":"A","items":[{"product_name":"W","quantity":0,"unit_price":1}]}`, http.StatusUnprocessableEntity, "items[0].quantity"},
		{"negative quantity", "POST", "/orders", `{"customer_name":"A","items":[{"product_name":"W","quantity":-3,"unit_price":1}]}`, http.StatusUnprocessableEntity, "items[0].quantity"},
		{"zero unit price", "POST", "/orders", `{"customer_name":"A","items":[{"product_name":"W","quantity":1,"unit_price":0}]}`, http.StatusUnprocessableEntity, "items[0].unit_price"},
		{"empty customer", "POST", "/orders", `{"customer_name":" ","items":[{"product_name":"W","quantity":1,"unit_price":1}]}`, http.StatusUnprocessableEntity, "customer_name"},
		{"no items", "POST", "/orders", `{"customer_name":"A","items":[]}`, http.StatusUnprocessableEntity, "items"},
		{"bad order id", "POST", "/orders", `{"order_id":"a b","customer_name":"A","items":[{"product_name":"W","quantity":1,"unit_price":1}]}`, http.StatusUnprocessableEntity, "order_id"},
		{"NUL in order id", "POST", "/orders", `{"order_id":"a\u0000b","customer_name":"A","items":[{"product_name":"W","quantity":1,"unit_price":1}]}`, http.StatusUnprocessableEntity, "order_id"},
		{"NUL in item product id", "POST", "/orders", `{"customer_name":"A","items":[{"product_id":"p\u0000","product_name":"W","quantity":1,"unit_price":1}]}`, http.StatusUnprocessableEntity, "items[0].product_id"},
		{"NUL in product id", "POST", "/products", `{"product_id":"p\u0000x","name":"W","price":1}`, http.StatusUnprocessableEntity, "product_id"},
		{"NUL in category id", "POST", "/products", `{"name":"W","price":1,"category_id":"c\u0000"}`, http.StatusUnprocessableEntity, "category_id"},
		{"NUL in customer", "POST", "/orders", `{"customer_name":"A\u0000","items":[{"product_name":"W","quantity":1,"unit_price":1}]}`, http.StatusUnprocessableEntity, "customer_name"},
		{"product price zero", "POST", "/products", `{"name":"W","price":0}`, http.StatusUnprocessableEntity, "price"},
		{"product price negative", "POST", "/products", `{"name":"W","price":-5}`, http.StatusUnprocessableEntity, "price"},
		{"product no name", "POST", "/products", `{"price":5}`, http.StatusUnprocessableEntity, "name"},
		{"three decimals", "POST", "/products", `{"name":"W","price":1.234}`, http.StatusUnprocessableEntity, ""},

		{"unknown order", "POST", "/orders/nope/confirm", ``, http.StatusNotFound, ""},
		{"unknown order ship", "POST", "/orders/nope/ship", `{"tracking_number":"T"}`, http.StatusNotFound, ""},
		{"invalid order id", "POST", "/orders/bad%20id/cancel", ``, http.StatusNotFound, ""},
		{"unknown product", "POST", "/products/nope/price", `{"price":1}`, http.StatusNotFound, ""},
		{"unknown product delete", "DELETE", "/products/nope", ``, http.StatusNotFound, ""},

		{"ship pending", "POST", "/orders/o-pending/ship", `{}`, http.StatusConflict, ""},
		{"place twice", "POST", "/orders", `{"order_id":"o-pending","customer_name":"Bob","items":[{"product_name":"W","quantity":1,"unit_price":1}]}`, http.StatusConflict, ""},
		{"price deleted", "POST", "/products/p-del/price", `{"price":2}`, http.StatusConflict, ""},
		{"delete deleted", "DELETE", "/products/p-del", ``, http.StatusConflict, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := e.do(tc.method, tc.path, tc.body)
			require.Equal(t, tc.code, res.code, res.raw)
			require.NotNil(t, res.body, "error bodies are JSON: %s", res.raw)
			require.NotEmpty(t, res.body["error"])
			if tc.field != "" {
				require.Equal(t, tc.field, res.body["field"])
			}
			require.Empty(t, res.header.Get(httpapi.ConsistencyTokenHeader))
		})
	}

	var events int
	require.NoError(t, e.pool.QueryRow(context.Background(), `SELECT count(*) FROM readside.events`).Scan(&events))
	require.Equal(t, 3, events, "failed commands write nothing")
}

func TestHappyPath(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aggregate.Config{})

	checkToken := func(res response, version int) outbox.Cursor {
		t.Helper()
		tok, _ := res.body["consistency_token"].(string)
		require.NotEmpty(t, tok, res.raw)
		require.Equal(t, tok, res.header.Get(httpapi.ConsistencyTokenHeader))
		c, err := outbox.ParseCursor(tok)
		require.NoError(t, err)
		require.NotZero(t, c.TxID)
		require.EqualValues(t, version, res.body["version"])
		return c
	}

	res := e.do("POST", "/orders", validOrder)
	require.Equal(t, http.StatusCreated, res.code, res.raw)
	id, _ := res.body["order_id"].(string)
	require.NotEmpty(t, id)
	require.Equal(t, "/orders/"+id, res.header.Get("Location"))
	c1 := checkToken(res, 1)

	res = e.do("POST", "/orders/"+id+"/confirm", ``)
	require.Equal(t, http.StatusOK, res.code, res.raw)
	c2 := checkToken(res, 2)
	require.True(t, c1.Less(c2))

	res = e.do("POST", "/orders/"+id+"/ship", `{"tracking_number":"TN-1"}`)
	require.Equal(t, http.StatusOK, res.code, res.raw)
	checkToken(res, 3)

	res = e.do("POST", "/orders/"+id+"/cancel", `{"reason":"too late"}`)
	require.Equal(t, http.StatusConflict, res.code, res.raw)

	res = e.do("POST", "/orders", `{"order_id":"o-2","customer_name":"Carol","items":[{"product_name":"W","quantity":1,"unit_price":1}]}`)
	require.Equal(t, http.StatusCreated, res.code, res.raw)
	res = e.do("POST", "/orders/o-2/cancel", `{"reason":"changed mind"}`)
	require.Equal(t, http.StatusOK, res.code, res.raw)
	checkToken(res, 2)

	res = e.do("POST", "/products", `{"name":"Gadget","price":"19.99","category_id":"tools"}`)
	require.Equal(t, http.StatusCreated, res.code, res.raw)
	pid, _ := res.body["product_id"].(string)
	require.NotEmpty(t, pid)
	checkToken(res, 1)
	res = e.do("POST", "/products/"+pid+"/price", `{"price":24.5}`)
	require.Equal(t, http.StatusOK, res.code, res.raw)
	checkToken(res, 2)
	res = e.do("POST", "/products/"+pid+"/price", `{"price":24.50}`)
	require.Equal(t, http.StatusOK, res.code, res.raw)
	require.EqualValues(t, 2, res.body["version"])
	require.Nil(t, res.body["consistency_token"], "an unchanged price writes nothing")
	res = e.do("DELETE", "/products/"+pid, ``)
	require.Equal(t, http.StatusOK, res.code, res.raw)
	checkToken(res, 3)

	var total, corr string
	require.NoError(t, e.pool.QueryRow(context.Background(),
		`SELECT event_data->>'total_amount', metadata->>'correlation_id' FROM readside.events WHERE aggregate_id = $1 AND version = 1`, id).Scan(&total, &corr))
	require.Equal(t, "25.00", total)
	require.Equal(t, "corr-42", corr)

	require.Equal(t, http.StatusOK, e.do("GET", "/healthz", "").code)
	require.Equal(t, http.StatusOK, e.do("GET", "/readyz", "").code)
	metrics := e.do("GET", "/metrics", "")
	require.Equal(t, http.StatusOK, metrics.code)
	for _, want := range []string{
		`readside_writer_appends_total{aggregate_type="Order"} 5`,
		`readside_writer_append_duration_seconds_count{aggregate_type="Product"} 3`,
		`readside_http_requests_total{code="201",route="POST /orders"} 2`,
		`readside_http_requests_total{code="409",route="POST /orders/{id}/cancel"} 1`,
	} {
		require.Contains(t, metrics.raw, want)
	}
}

// TestConflictAfterRetries: without retries, concurrent price updates that
// all loaded the same version mostly lose with 409; the winners' versions
// are gap-free.
func TestConflictAfterRetries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aggregate.Config{MaxConflictRetries: -1})
	require.Equal(t, http.StatusCreated, e.do("POST", "/products", `{"product_id":"p-1","name":"W","price":1}`).code)
	const n = 8
	codes := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			res := e.do("POST", "/products/p-1/price", `{"price":`+string(rune('2'+i))+`}`)
			codes[i] = res.code
		})
	}
	wg.Wait()
	ok := 0
	for _, c := range codes {
		require.Contains(t, []int{http.StatusOK, http.StatusConflict}, c)
		if c == http.StatusOK {
			ok++
		}
	}
	var maxVersion int
	require.NoError(t, e.pool.QueryRow(context.Background(), `SELECT max(version) FROM readside.events WHERE aggregate_id = 'p-1'`).Scan(&maxVersion))
	require.Equal(t, ok+1, maxVersion)
}

func TestNotFoundRouteAndMethod(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aggregate.Config{})
	require.Equal(t, http.StatusNotFound, e.do("GET", "/nowhere", "").code)
	require.Equal(t, http.StatusMethodNotAllowed, e.do("GET", "/orders", "").code)

	// Routes added by another file get the same metrics.
	e.srv.Handle("GET /orders/{id}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteJSON(w, http.StatusOK, map[string]string{"id": r.PathValue("id")})
	}))
	res := e.do("GET", "/orders/x", "")
	require.Equal(t, http.StatusOK, res.code)
	require.Equal(t, "x", res.body["id"])
	require.Contains(t, e.do("GET", "/metrics", "").raw, `readside_http_requests_total{code="200",route="GET /orders/{id}"} 1`)
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	_, err := httpapi.New(httpapi.Config{})
	require.Error(t, err)
}

type failingPinger struct{}

func (failingPinger) Ping(context.Context) error {
	return errors.New(`failed to connect to user=app_user database=orders_prod: 10.1.2.3:5432 (db.internal): dial error`)
}

// /readyz is public: it says the database is unreachable, never who or
// where it is; the details go to the log.
func TestReadyzHidesConnectionDetails(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t)
	repo, err := aggregate.New(pool, aggregate.Config{})
	require.NoError(t, err)
	var logs bytes.Buffer
	srv, err := httpapi.New(httpapi.Config{Repository: repo, DB: failingPinger{}, Registerer: prometheus.NewRegistry(),
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Contains(t, rec.Body.String(), "database unreachable")
	for _, secret := range []string{"app_user", "orders_prod", "10.1.2.3", "5432", "db.internal"} {
		require.NotContains(t, rec.Body.String(), secret)
	}
	require.Contains(t, logs.String(), "10.1.2.3:5432", "the details are logged")
}
