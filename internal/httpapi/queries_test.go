package httpapi_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/httpapi"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/orderdetails"
	"github.com/readside/readside/projectors/orderstatistics"
	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/products"
	"github.com/readside/readside/projectors/readmodel"
)

// newQueryEnv is newEnv with the query routes, reading through wrap(pool)
// (the pool when wrap is nil).
func newQueryEnv(t *testing.T, wrap func(*pgxpool.Pool) httpapi.QueryDB) *env {
	t.Helper()
	e := newEnv(t, aggregate.Config{})
	var db httpapi.QueryDB = e.pool
	if wrap != nil {
		db = wrap(e.pool)
	}
	require.NoError(t, e.srv.HandleQueries(httpapi.QueryConfig{DB: db, ConsistencyWait: 10 * time.Second}))
	return e
}

// startWorker runs the projections in the background until the test ends.
func startWorker(t *testing.T, pool *pgxpool.Pool, ps ...projectors.Projection) {
	t.Helper()
	w, err := projectors.NewWorker(projectors.Config{Pool: pool, Projections: ps, PollInterval: 10 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(func() { require.NoError(t, w.Stop(context.Background())) })
}

// get is a GET with optional header name, value pairs. Safe to call from
// another goroutine: it reports failures in the response, not through t.
func (e *env) get(path string, header ...string) response {
	req := httptest.NewRequest("GET", path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	e.srv.ServeHTTP(rec, req)
	res := response{code: rec.Code, header: rec.Header(), raw: rec.Body.String()}
	if err := json.Unmarshal(rec.Body.Bytes(), &res.body); err != nil {
		res.code, res.raw = -1, fmt.Sprintf("not JSON (%v): %s", err, rec.Body.String())
	}
	return res
}

func orderIDs(t *testing.T, res response) []string {
	t.Helper()
	require.Equal(t, http.StatusOK, res.code, res.raw)
	var ids []string
	for _, o := range res.body["orders"].([]any) {
		ids = append(ids, o.(map[string]any)["order_id"].(string))
	}
	return ids
}

func TestListOrdersPaging(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, nil)
	// Ties on placed_at are broken by order_id, descending.
	base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	rows := []struct {
		id, customer, status string
		placed               time.Time
	}{
		{"o-1", "Alice", "pending", base},
		{"o-2", "Bob", "shipped", base.Add(time.Minute)},
		{"o-3", "Alice", "shipped", base.Add(time.Minute)},
		{"o-4", "Alice", "confirmed", base.Add(2 * time.Minute)},
		{"o-5", "Carol", "shipped", base.Add(3*time.Minute + time.Microsecond)},
		{"o-6", "Alice", "shipped", base.Add(3 * time.Minute)},
		{"o-7", "Bob", "cancelled", base.Add(-time.Hour)},
	}
	for _, r := range rows {
		_, err := e.pool.Exec(context.Background(), `INSERT INTO readside.order_summary (order_id, customer_name, total_amount, status, placed_at, version)
			VALUES ($1, $2, 12.5, $3, $4, 1)`, r.id, r.customer, r.status, r.placed)
		require.NoError(t, err)
	}

	// walk pages through a query and returns the ids in order and the
	// number of pages.
	walk := func(query string, limit int) ([]string, int) {
		var all []string
		path := fmt.Sprintf("/orders?limit=%d%s", limit, query)
		for pages := 1; ; pages++ {
			res := e.get(path)
			ids := orderIDs(t, res)
			require.LessOrEqual(t, len(ids), limit)
			all = append(all, ids...)
			next, _ := res.body["next_cursor"].(string)
			if next == "" {
				return all, pages
			}
			require.Len(t, ids, limit, "only the last page is short")
			path = fmt.Sprintf("/orders?limit=%d%s&after=%s", limit, query, url.QueryEscape(next))
		}
	}
	all := []string{"o-5", "o-6", "o-4", "o-3", "o-2", "o-1", "o-7"}
	for _, tc := range []struct {
		name, query string
		limit       int
		want        []string
		pages       int
	}{
		{"one page", "", 50, all, 1},
		{"pages of 3", "", 3, all, 3},
		{"pages of 1", "", 1, all, 7},
		{"exact fit", "", 7, all, 1},
		{"shipped", "&status=shipped", 2, []string{"o-5", "o-6", "o-3", "o-2"}, 2},
		{"customer", "&customer=Alice", 2, []string{"o-6", "o-4", "o-3", "o-1"}, 2},
		{"customer and status", "&customer=Alice&status=shipped", 1, []string{"o-6", "o-3"}, 2},
		{"nobody", "&customer=Zed", 5, nil, 1},
	} {
		got, pages := walk(tc.query, tc.limit)
		require.Equal(t, tc.want, got, tc.name)
		require.Equal(t, tc.pages, pages, tc.name)
	}

	res := e.get("/orders?limit=1")
	o := res.body["orders"].([]any)[0].(map[string]any)
	require.Equal(t, "2025-03-01T12:03:00.000001Z", o["placed_at"])
	require.Contains(t, res.raw, `"total_amount":12.50`, "money keeps two decimals")
}

func TestListProducts(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, nil)
	for _, p := range []struct {
		id, name string
		deleted  bool
	}{{"p-1", "Widget", false}, {"p-2", "Anvil", true}, {"p-3", "Bolt", false}, {"p-4", "Bolt", false}} {
		_, err := e.pool.Exec(context.Background(), `INSERT INTO readside.products (product_id, name, price, sku, created_at, deleted, version)
			VALUES ($1, $2, 3, 'SKU', now(), $3, 1)`, p.id, p.name, p.deleted)
		require.NoError(t, err)
	}
	ids := func(res response) []string {
		require.Equal(t, http.StatusOK, res.code, res.raw)
		var out []string
		for _, p := range res.body["products"].([]any) {
			out = append(out, p.(map[string]any)["product_id"].(string))
		}
		return out
	}
	require.Equal(t, []string{"p-3", "p-4", "p-1"}, ids(e.get("/products")))
	require.Equal(t, []string{"p-2", "p-3", "p-4", "p-1"}, ids(e.get("/products?include_deleted=true")))

	first := e.get("/products?limit=2")
	require.Equal(t, []string{"p-3", "p-4"}, ids(first))
	second := e.get("/products?limit=2&after=" + first.body["next_cursor"].(string))
	require.Equal(t, []string{"p-1"}, ids(second))
	require.Nil(t, second.body["next_cursor"])
	require.Contains(t, first.raw, `"price":3.00`)
}

func TestQueryBadRequests(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, nil)
	productCursor := base64.RawURLEncoding.EncodeToString([]byte(`{"n":"Bolt","id":"p-1"}`))
	for _, tc := range []struct {
		name, path string
		header     string
	}{
		{"zero limit", "/orders?limit=0", ""},
		{"negative limit", "/orders?limit=-1", ""},
		{"limit above max", "/orders?limit=501", ""},
		{"limit not a number", "/orders?limit=ten", ""},
		{"empty cursor", "/orders?after=", ""},
		{"cursor not base64", "/orders?after=!!!", ""},
		{"cursor not JSON", "/orders?after=" + base64.RawURLEncoding.EncodeToString([]byte("hello")), ""},
		{"cursor without id", "/orders?after=" + base64.RawURLEncoding.EncodeToString([]byte(`{"t":1}`)), ""},
		{"cursor of another list", "/orders?after=" + productCursor, ""},
		{"unknown status", "/orders?status=lost", ""},
		{"product limit", "/products?limit=1000", ""},
		{"product cursor", "/products?after=xyz", ""},
		{"include_deleted", "/products?include_deleted=maybe", ""},
		{"malformed token", "/orders?consistency_token=abc", ""},
		{"token without position", "/statistics?consistency_token=12", ""},
		{"negative position", "/orders/o-1?consistency_token=12/-3", ""},
		{"malformed token header", "/products", "12/x"},
		{"zero wait", "/orders?consistency_token=1/1&wait=0s", ""},
		{"wait above max", "/orders?consistency_token=1/1&wait=11s", ""},
		{"wait not a duration", "/orders?consistency_token=1/1&wait=soon", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var res response
			if tc.header != "" {
				res = e.get(tc.path, httpapi.ConsistencyTokenHeader, tc.header)
			} else {
				res = e.get(tc.path)
			}
			require.Equal(t, http.StatusBadRequest, res.code, res.raw)
			require.NotEmpty(t, res.body["error"], res.raw)
		})
	}
}

func TestOrderDetailsNotFound(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, nil)
	for _, path := range []string{"/orders/nope", "/orders/bad%20id", "/orders/" + strings.Repeat("x", 300)} {
		res := e.get(path)
		require.Equal(t, http.StatusNotFound, res.code, res.raw)
		require.Contains(t, res.body["error"], "not found")
	}
}

// TestQueriesThroughPipeline drives commands through the Server and the
// shipped projections through a worker, and reads each read model with the
// last write's token.
func TestQueriesThroughPipeline(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, nil)
	startWorker(t, e.pool, ordersummary.New(), orderdetails.New(), products.New(), orderstatistics.New())

	var token string
	post := func(method, path, body string, code int) {
		t.Helper()
		res := e.do(method, path, body)
		require.Equal(t, code, res.code, res.raw)
		token = res.body["consistency_token"].(string)
	}
	post("POST", "/products", `{"product_id":"p-1","name":"Widget","price":12.50,"sku":"W-1"}`, http.StatusCreated)
	post("POST", "/products", `{"product_id":"p-2","name":"Gadget","price":3}`, http.StatusCreated)
	post("DELETE", "/products/p-2", ``, http.StatusOK)
	post("POST", "/orders", `{"order_id":"o-1","customer_name":"Alice","items":[
		{"product_id":"p-1","product_name":"Widget","quantity":2,"unit_price":12.50},
		{"product_name":"Gift wrap","quantity":1,"unit_price":"1.99"}]}`, http.StatusCreated)
	post("POST", "/orders", `{"order_id":"o-2","customer_name":"Bob","items":[{"product_name":"W","quantity":1,"unit_price":10}]}`, http.StatusCreated)
	post("POST", "/orders", `{"order_id":"o-3","customer_name":"Alice","items":[{"product_name":"W","quantity":3,"unit_price":5}]}`, http.StatusCreated)
	post("POST", "/orders/o-1/confirm", ``, http.StatusOK)
	post("POST", "/orders/o-1/ship", `{"tracking_number":"TRK-1"}`, http.StatusOK)
	post("POST", "/orders/o-2/cancel", `{"reason":"changed mind"}`, http.StatusOK)
	tok := "consistency_token=" + url.QueryEscape(token)

	// Ties on placed_at (the Server's clock is fixed): order_id descending.
	require.Equal(t, []string{"o-3", "o-2", "o-1"}, orderIDs(t, e.get("/orders?"+tok)))
	require.Equal(t, []string{"o-1"}, orderIDs(t, e.get("/orders?status=shipped&"+tok)))
	require.Equal(t, []string{"o-3"}, orderIDs(t, e.get("/orders?customer=Alice&status=pending&"+tok)))

	res := e.get("/orders/o-1?" + tok)
	require.Equal(t, http.StatusOK, res.code, res.raw)
	require.Equal(t, "shipped", res.body["status"])
	require.Equal(t, "TRK-1", res.body["tracking_number"])
	require.Contains(t, res.raw, `"total_amount":26.99`)
	require.Contains(t, res.raw, `"unit_price":12.50,"subtotal":25.00`)
	items := res.body["items"].([]any)
	require.Len(t, items, 2)
	require.Equal(t, "Gift wrap", items[1].(map[string]any)["product_name"])

	res = e.get("/statistics", httpapi.ConsistencyTokenHeader, token)
	require.Equal(t, http.StatusOK, res.code, res.raw)
	require.Contains(t, res.raw, `{"status":"pending","order_count":1,"total_revenue":15.00,"average_order_value":15.00}`)
	require.Contains(t, res.raw, `{"status":"confirmed","order_count":0,"total_revenue":0.00,"average_order_value":0.00}`)
	require.Contains(t, res.raw, `{"status":"shipped","order_count":1,"total_revenue":26.99,"average_order_value":26.99}`)
	require.Contains(t, res.raw, `{"status":"cancelled","order_count":1,"total_revenue":10.00,"average_order_value":10.00}`)

	res = e.get("/products?" + tok)
	require.Equal(t, http.StatusOK, res.code, res.raw)
	require.Len(t, res.body["products"], 1)
	require.Contains(t, res.raw, `"product_id":"p-1","name":"Widget","price":12.50`)
	res = e.get("/products?include_deleted=true&" + tok)
	require.Len(t, res.body["products"], 2)
}

// gated holds a projection's batches until the gate opens: a projector
// lagging for as long as the test wants.
type gated struct {
	projectors.Projection
	entered chan struct{} // receives when a batch is held
	gate    chan struct{}
	once    sync.Once
}

func newGated(p projectors.Projection) *gated {
	return &gated{Projection: p, entered: make(chan struct{}, 1), gate: make(chan struct{})}
}

func (g *gated) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	select {
	case <-g.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.Projection.Apply(ctx, tx, b)
}

func (g *gated) open() { g.once.Do(func() { close(g.gate) }) }

// pollSignal is the query side's database, telling the test when a
// read-your-writes wait polls the checkpoints.
type pollSignal struct {
	*pgxpool.Pool
	polled chan struct{}
}

func (p pollSignal) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if strings.Contains(sql, "checkpoints") {
		select {
		case p.polled <- struct{}{}:
		default:
		}
	}
	return p.Pool.Query(ctx, sql, args...)
}

func receive(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestReadYourWrites(t *testing.T) {
	t.Parallel()
	var signal pollSignal
	e := newQueryEnv(t, func(pool *pgxpool.Pool) httpapi.QueryDB {
		signal = pollSignal{Pool: pool, polled: make(chan struct{}, 1)}
		return signal
	})
	summary := newGated(ordersummary.New())
	startWorker(t, e.pool, summary)
	t.Cleanup(summary.open) // before the worker's Stop (cleanups run last first)

	placed := e.do("POST", "/orders", `{"order_id":"o-ryw","customer_name":"Alice","items":[{"product_name":"W","quantity":1,"unit_price":1}]}`)
	require.Equal(t, http.StatusCreated, placed.code, placed.raw)
	token := placed.header.Get(httpapi.ConsistencyTokenHeader)
	require.Equal(t, placed.body["consistency_token"], token)
	receive(t, summary.entered, "the projector to hold the order's batch")

	// Without a token the query answers at once, from before the write.
	require.Empty(t, orderIDs(t, e.get("/orders")))
	// With a token and a short wait, it times out naming the projection.
	res := e.get("/orders?wait=50ms&consistency_token=" + url.QueryEscape(token))
	require.Equal(t, http.StatusGatewayTimeout, res.code, res.raw)
	require.Equal(t, ordersummary.Name, res.body["projection"])
	require.Equal(t, "running", res.body["status"])
	require.Equal(t, token, res.body["consistency_token"])
	require.NotEmpty(t, res.body["segments"], "the segments behind the token (the held one, and any not yet read past it)")
	require.Equal(t, "1", res.header.Get("Retry-After"), "a running projection will catch up")

	// With a token, it waits for the lagging projector and sees its write.
	drain(signal.polled)
	got := make(chan response, 1)
	go func() { got <- e.get("/orders", httpapi.ConsistencyTokenHeader, token) }()
	receive(t, signal.polled, "the query to poll the checkpoints")
	summary.open()
	select {
	case res = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the query did not answer")
	}
	require.Equal(t, []string{"o-ryw"}, orderIDs(t, res))
}

func drain(c chan struct{}) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

func TestConsistencyTimeout(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, nil)
	placed := e.do("POST", "/orders", validOrder)
	require.Equal(t, http.StatusCreated, placed.code, placed.raw)
	tok := "consistency_token=" + url.QueryEscape(placed.body["consistency_token"].(string))

	// No projector has ever run: nothing to wait on.
	start := time.Now()
	res := e.get("/orders/x?wait=100ms&" + tok)
	require.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond, "the wait is bounded, not skipped")
	require.Equal(t, http.StatusGatewayTimeout, res.code, res.raw)
	require.Equal(t, orderdetails.Name, res.body["projection"])
	require.Equal(t, "unregistered", res.body["status"])
	require.Contains(t, res.body["error"], "order_details")
	require.Contains(t, res.body["error"], "not registered")
	require.Empty(t, res.header.Get("Retry-After"))

	// Registered, no worker running: behind, and running.
	require.NoError(t, projectors.Register(context.Background(), e.pool, orderstatistics.New()))
	res = e.get("/statistics?wait=500ms&" + tok)
	require.Equal(t, http.StatusGatewayTimeout, res.code, res.raw)
	require.Equal(t, orderstatistics.Name, res.body["projection"])
	require.Equal(t, "running", res.body["status"])
	// The segments with rows of their own: the order's (a segment whose
	// buckets hold nothing before the token has nothing to apply).
	var behind []any
	rows, err := e.pool.Query(context.Background(), `SELECT DISTINCT bucket % $1 FROM readside.outbox ORDER BY 1`, readmodel.DefaultSegments)
	require.NoError(t, err)
	segs, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	require.NoError(t, err)
	require.Len(t, segs, 1, "one order, one bucket")
	for _, seg := range segs {
		behind = append(behind, map[string]any{"segment": float64(seg), "cursor": "0/0", "status": "running"})
	}
	require.Equal(t, behind, res.body["segments"], "the order's segment, not read yet")

	// Paused: say that it will not catch up.
	_, err = e.pool.Exec(context.Background(), `UPDATE readside.checkpoints SET status = 'paused' WHERE projection = $1`, orderstatistics.Name)
	require.NoError(t, err)
	res = e.get("/statistics?wait=500ms&" + tok)
	require.Equal(t, http.StatusGatewayTimeout, res.code, res.raw)
	require.Equal(t, "paused", res.body["status"])
	require.Contains(t, res.body["error"], "will not catch up until resumed")
}

// A NUL character, which PostgreSQL cannot hold in text, is refused with
// 422 wherever a query takes text: the customer filter and the keys inside
// a crafted cursor. Not UTF-8 is refused the same way.
func TestQueryRefusesTextPostgreSQLCannotHold(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, nil)
	cursor := func(js string) string { return base64.RawURLEncoding.EncodeToString([]byte(js)) }
	for _, path := range []string{
		"/orders?customer=a%00b",
		"/orders?customer=a%ffb",
		"/orders?after=" + cursor(`{"t":1,"id":"o\u0000"}`),
		"/products?after=" + cursor(`{"n":"Bolt\u0000","id":"p-1"}`),
		"/products?after=" + cursor(`{"n":"Bolt","id":"p\u0000"}`),
	} {
		res := e.get(path)
		require.Equal(t, http.StatusUnprocessableEntity, res.code, "%s: %s", path, res.raw)
		require.NotEmpty(t, res.body["error"], path)
	}
}

// Error answers quote at most a short prefix of what the client sent.
func TestQueryErrorsDoNotEchoWholeInput(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, nil)
	big := strings.Repeat("A", 60<<10)
	for _, tc := range []struct {
		path   string
		header string
	}{
		{"/orders?consistency_token=" + big, ""},
		{"/orders?consistency_token=1/" + big, ""},
		{"/orders", big},
		{"/orders?status=" + big, ""},
		{"/orders?limit=" + big, ""},
		{"/orders?consistency_token=1/1&wait=" + big, ""},
		{"/products?include_deleted=" + big, ""},
		{"/orders/" + big, ""},
	} {
		var res response
		if tc.header != "" {
			res = e.get(tc.path, httpapi.ConsistencyTokenHeader, tc.header)
		} else {
			res = e.get(tc.path)
		}
		require.Contains(t, []int{http.StatusBadRequest, http.StatusNotFound}, res.code, res.raw[:min(len(res.raw), 300)])
		require.Less(t, len(res.raw), 1024, "%.80s...: %.300s", tc.path, res.raw)
	}
}

// A token read before its write's transaction committed (an app that
// hands it on from inside the transaction) is waited for, and the query
// answers once the transaction has committed and been applied; its
// transaction's rollback answers 400 at once (the write never happened),
// and a wait that ends while it is still open says so in the 504.
func TestTokenOfAnUncommittedWrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newQueryEnv(t, nil)
	require.NoError(t, projectors.Register(ctx, e.pool, orderstatistics.New()))
	write := func() (pgx.Tx, string) {
		tx, err := e.pool.Begin(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { _ = tx.Rollback(ctx) })
		data, err := json.Marshal(&domain.OrderPlaced{OrderID: "open-1", CustomerName: "A", TotalAmount: 700, PlacedAt: time.Now(),
			Items: []domain.OrderItem{{ProductID: "p-1", ProductName: "Pen", Quantity: 1, UnitPrice: 700}}})
		require.NoError(t, err)
		res, err := outbox.Append(ctx, tx, outbox.Aggregate{Type: domain.OrderAggregate, ID: "open-1"}, 0,
			[]outbox.NewEvent{{Type: domain.OrderPlacedType, Data: data}})
		require.NoError(t, err)
		return tx, url.QueryEscape(res.Cursor().String())
	}

	tx, token := write()
	res := e.get("/statistics?wait=300ms&consistency_token=" + token)
	require.Equal(t, http.StatusGatewayTimeout, res.code, res.raw)
	require.Equal(t, true, res.body["token_uncommitted"], res.raw)
	require.Contains(t, res.body["error"], "has not committed")
	require.NoError(t, tx.Rollback(ctx))
	start := time.Now()
	res = e.get("/statistics?wait=5s&consistency_token=" + token)
	require.Equal(t, http.StatusBadRequest, res.code, res.raw)
	require.Contains(t, res.body["error"], "rolled back")
	require.Empty(t, res.header.Get("Retry-After"))
	require.Less(t, time.Since(start), 2*time.Second, "at once")

	tx, token = write()
	done := make(chan response, 1)
	go func() { done <- e.get("/statistics?wait=10s&consistency_token=" + token) }()
	time.Sleep(200 * time.Millisecond)
	require.NoError(t, tx.Commit(ctx))
	startWorker(t, e.pool, orderstatistics.New())
	res = <-done
	require.Equal(t, http.StatusOK, res.code, res.raw)
}

// A token no write of this database can have issued (its transaction id
// is beyond every one assigned so far) is refused at once with 400, not
// waited on until a 504 that invites the client to retry forever.
func TestTokenBeyondTheLogsHead(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, nil)
	require.NoError(t, projectors.Register(context.Background(), e.pool, orderstatistics.New()))
	for _, token := range []string{"18446744073709551615/1", "9223372036854775807/1"} {
		start := time.Now()
		res := e.get("/statistics?wait=5s&consistency_token=" + token)
		require.Equal(t, http.StatusBadRequest, res.code, res.raw)
		require.Contains(t, res.body["error"], "beyond")
		require.Empty(t, res.header.Get("Retry-After"))
		require.Less(t, time.Since(start), 2*time.Second, "at once")
	}
}
