package httpapi_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestQueryAnswersExact pins every query route's answer to the byte (body
// and ETag, the hash of the body): field order, omitted empty fields,
// amounts with two decimals, times in UTC to the microsecond, the cursor's
// encoding and the error bodies. The reads live beside the read models; the
// answers must not change with where they live.
func TestQueryAnswersExact(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, nil)
	ctx := context.Background()
	for _, sql := range []string{
		`INSERT INTO readside.order_summary (order_id, customer_name, total_amount, status, placed_at, confirmed_at, shipped_at, cancelled_at, version) VALUES
		   ('o-1', 'Alice', 26.99, 'shipped', '2025-03-01 12:00:00.123456+01', '2025-03-01 13:00:00+00', '2025-03-02 09:30:00+00', NULL, 3),
		   ('o-2', 'Bob', 10, 'cancelled', '2025-03-01 12:00:00.123456+01', NULL, NULL, '2025-03-03 00:00:00+00', 2),
		   ('o-3', 'Alice', 0.5, 'pending', '2025-02-28 23:59:59+00', NULL, NULL, NULL, 1)`,
		`INSERT INTO readside.order_details (order_id, customer_name, total_amount, status, item_count, placed_at, confirmed_at, shipped_at,
		                            tracking_number, cancelled_at, cancel_reason, version) VALUES
		   ('o-1', 'Alice', 26.99, 'shipped', 2, '2025-03-01 12:00:00.123456+01', '2025-03-01 13:00:00+00', '2025-03-02 09:30:00+00', 'TRK-1', NULL, NULL, 3),
		   ('o-2', 'Bob', 10, 'cancelled', 1, '2025-03-01 12:00:00+01', NULL, NULL, NULL, '2025-03-03 00:00:00+00', 'changed mind', 2),
		   ('o-4', 'Carol', 7, 'pending', 0, '2025-03-01 12:00:00+00', NULL, NULL, NULL, NULL, NULL, 1)`,
		`INSERT INTO readside.order_items (order_id, line_no, product_id, product_name, quantity, unit_price, subtotal) VALUES
		   ('o-1', 1, 'p-1', 'Widget', 2, 12.5, 25), ('o-1', 2, NULL, 'Gift wrap', 1, 1.99, 1.99), ('o-2', 1, 'p-2', 'W', 1, 10, 10)`,
		`UPDATE readside.order_statistics SET order_count = 1, total_revenue = 26.99 WHERE status = 'shipped'`,
		`UPDATE readside.order_statistics SET order_count = 3, total_revenue = 10 WHERE status = 'pending'`,
		`INSERT INTO readside.products (product_id, name, price, category_id, sku, created_at, deleted, deleted_at, version) VALUES
		   ('p-1', 'Widget', 12.5, 'c-1', 'W-1', '2025-01-01 10:00:00+02', false, NULL, 2),
		   ('p-2', 'Anvil', 99.99, NULL, 'A-1', '2025-01-01 10:00:00.5+00', true, '2025-02-01 00:00:00+00', 2),
		   ('p-3', 'Bolt', 0.05, NULL, '', '2025-01-02 00:00:00+00', false, NULL, 1)`,
	} {
		_, err := e.pool.Exec(ctx, sql)
		require.NoError(t, err, sql)
	}
	for _, tc := range []struct {
		path string
		code int
		body string
		etag string
	}{
		{"/orders", http.StatusOK,
			`{"orders":[{"order_id":"o-2","customer_name":"Bob","total_amount":10.00,"status":"cancelled","placed_at":"2025-03-01T11:00:00.123456Z","cancelled_at":"2025-03-03T00:00:00Z","version":2},{"order_id":"o-1","customer_name":"Alice","total_amount":26.99,"status":"shipped","placed_at":"2025-03-01T11:00:00.123456Z","confirmed_at":"2025-03-01T13:00:00Z","shipped_at":"2025-03-02T09:30:00Z","version":3},{"order_id":"o-3","customer_name":"Alice","total_amount":0.50,"status":"pending","placed_at":"2025-02-28T23:59:59Z","version":1}]}`,
			`"fcbyfu3C87ZLWJifTcAgRJcZ"`},
		{"/orders?limit=1", http.StatusOK,
			`{"orders":[{"order_id":"o-2","customer_name":"Bob","total_amount":10.00,"status":"cancelled","placed_at":"2025-03-01T11:00:00.123456Z","cancelled_at":"2025-03-03T00:00:00Z","version":2}],"next_cursor":"eyJ0IjoxNzQwODI2ODAwMTIzNDU2LCJpZCI6Im8tMiJ9"}`,
			`"BmVacm5Yn6tuHI6Gt7HrynGl"`},
		{"/orders?limit=1&after=", http.StatusOK,
			`{"orders":[{"order_id":"o-1","customer_name":"Alice","total_amount":26.99,"status":"shipped","placed_at":"2025-03-01T11:00:00.123456Z","confirmed_at":"2025-03-01T13:00:00Z","shipped_at":"2025-03-02T09:30:00Z","version":3}],"next_cursor":"eyJ0IjoxNzQwODI2ODAwMTIzNDU2LCJpZCI6Im8tMSJ9"}`,
			`"A9fSuDNXXlRHPNH_1-rLl-vX"`},
		{"/orders?status=shipped&customer=Alice", http.StatusOK,
			`{"orders":[{"order_id":"o-1","customer_name":"Alice","total_amount":26.99,"status":"shipped","placed_at":"2025-03-01T11:00:00.123456Z","confirmed_at":"2025-03-01T13:00:00Z","shipped_at":"2025-03-02T09:30:00Z","version":3}]}`,
			`"2OR6X206PV6McPF_wJT6HI0g"`},
		{"/orders?customer=Nobody", http.StatusOK,
			`{"orders":[]}`,
			`"v8eGRf_5bacEju9p7BKWM24P"`},
		{"/orders?status=lost", http.StatusBadRequest,
			`{"error":"status=\"lost\": want one of pending, confirmed, shipped, cancelled"}`,
			``},
		{"/orders/o-1", http.StatusOK,
			`{"order_id":"o-1","customer_name":"Alice","total_amount":26.99,"status":"shipped","item_count":2,"placed_at":"2025-03-01T11:00:00.123456Z","confirmed_at":"2025-03-01T13:00:00Z","shipped_at":"2025-03-02T09:30:00Z","tracking_number":"TRK-1","version":3,"items":[{"line_no":1,"product_id":"p-1","product_name":"Widget","quantity":2,"unit_price":12.50,"subtotal":25.00},{"line_no":2,"product_name":"Gift wrap","quantity":1,"unit_price":1.99,"subtotal":1.99}]}`,
			`"zpqZinf1bjRjSPN72WWNV9nC"`},
		{"/orders/o-2", http.StatusOK,
			`{"order_id":"o-2","customer_name":"Bob","total_amount":10.00,"status":"cancelled","item_count":1,"placed_at":"2025-03-01T11:00:00Z","cancelled_at":"2025-03-03T00:00:00Z","cancel_reason":"changed mind","version":2,"items":[{"line_no":1,"product_id":"p-2","product_name":"W","quantity":1,"unit_price":10.00,"subtotal":10.00}]}`,
			`"zhQiRXBlHW4uOlTLgii02uB0"`},
		{"/orders/o-4", http.StatusOK,
			`{"order_id":"o-4","customer_name":"Carol","total_amount":7.00,"status":"pending","item_count":0,"placed_at":"2025-03-01T12:00:00Z","version":1,"items":[]}`,
			`"drJ-unuBFaCw3DE_4BiuxdA_"`},
		{"/orders/o-9", http.StatusNotFound,
			`{"error":"order \"o-9\" not found"}`,
			``},
		{"/statistics", http.StatusOK,
			`{"statistics":[{"status":"pending","order_count":3,"total_revenue":10.00,"average_order_value":3.33},{"status":"confirmed","order_count":0,"total_revenue":0.00,"average_order_value":0.00},{"status":"shipped","order_count":1,"total_revenue":26.99,"average_order_value":26.99},{"status":"cancelled","order_count":0,"total_revenue":0.00,"average_order_value":0.00}]}`,
			`"BfH2gE4rkHYkGeEgFG7UO-mI"`},
		{"/products", http.StatusOK,
			`{"products":[{"product_id":"p-3","name":"Bolt","price":0.05,"sku":"","created_at":"2025-01-02T00:00:00Z","deleted":false,"version":1},{"product_id":"p-1","name":"Widget","price":12.50,"category_id":"c-1","sku":"W-1","created_at":"2025-01-01T08:00:00Z","deleted":false,"version":2}]}`,
			`"lr2wPagcmV8hczRf6aQ3LQP8"`},
		{"/products?include_deleted=true&limit=2", http.StatusOK,
			`{"products":[{"product_id":"p-2","name":"Anvil","price":99.99,"sku":"A-1","created_at":"2025-01-01T10:00:00.5Z","deleted":true,"deleted_at":"2025-02-01T00:00:00Z","version":2},{"product_id":"p-3","name":"Bolt","price":0.05,"sku":"","created_at":"2025-01-02T00:00:00Z","deleted":false,"version":1}],"next_cursor":"eyJuIjoiQm9sdCIsImlkIjoicC0zIn0"}`,
			`"cYhhHcXFEyfQQuveWFb4Vlsa"`},
		{"/products?limit=1&after=", http.StatusOK,
			`{"products":[{"product_id":"p-1","name":"Widget","price":12.50,"category_id":"c-1","sku":"W-1","created_at":"2025-01-01T08:00:00Z","deleted":false,"version":2}]}`,
			`"XtyyMMqNq2S8X9U3Rbaj6z7b"`},
		{"/products?after=eyJ0IjoxLCJpZCI6Im8tMSJ9", http.StatusBadRequest,
			`{"error":"after: not a cursor of /products"}`,
			``},
	} {
		path := tc.path
		if before, ok := strings.CutSuffix(path, "&after="); ok {
			// The cursor the same query's first page returned.
			first := e.get(before)
			require.Equal(t, http.StatusOK, first.code, first.raw)
			path += url.QueryEscape(first.body["next_cursor"].(string))
		}
		res := e.get(path)
		require.Equal(t, tc.code, res.code, path)
		require.Equal(t, tc.body+"\n", res.raw, path)
		require.Equal(t, tc.etag, res.header.Get("ETag"), path)
	}
}
