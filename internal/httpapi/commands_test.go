package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/projectors/orderdetails"
	"github.com/readside/readside/projectors/orderstatistics"
	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/products"
)

// TestAmountsTheReadModelsCannotHold: every amount a command accepts fits
// numeric(12,2) (below 10^10), malformed amounts and signs are refused with
// 422, and a NUL character (which PostgreSQL cannot store: 22P05) is a 422,
// not a 500. Nothing refused is written.
func TestAmountsTheReadModelsCannotHold(t *testing.T) {
	t.Parallel()
	e := newEnv(t, aggregate.Config{})
	require.Equal(t, http.StatusCreated, e.do("POST", "/orders", `{"order_id":"o-1","customer_name":"Bob","items":[{"product_name":"W","quantity":1,"unit_price":"3.00"}]}`).code)
	require.Equal(t, http.StatusCreated, e.do("POST", "/orders", `{"order_id":"o-2","customer_name":"Bob","items":[{"product_name":"W","quantity":1,"unit_price":"3.00"}]}`).code)
	require.Equal(t, http.StatusOK, e.do("POST", "/orders/o-2/confirm", ``).code)
	require.Equal(t, http.StatusCreated, e.do("POST", "/products", `{"product_id":"p-1","name":"W","price":1}`).code)

	order := func(qty int, price string) string {
		return fmt.Sprintf(`{"customer_name":"A","items":[{"product_name":"W","quantity":%d,"unit_price":%s}]}`, qty, price)
	}
	for _, tc := range []struct {
		name, method, path, body string
		field                    string
	}{
		{"unit price 10^10", "POST", "/orders", order(1, `"10000000000"`), ""},
		{"unit price 10^10 as number", "POST", "/orders", order(1, `10000000000`), ""},
		{"quantity times price beyond 10^10", "POST", "/orders", order(2, `"9999999999.99"`), "items"},
		{"total beyond 10^10", "POST", "/orders", `{"customer_name":"A","items":[
			{"product_name":"W","quantity":1,"unit_price":6000000000},{"product_name":"V","quantity":1,"unit_price":4000000000}]}`, "items"},
		{"double minus", "POST", "/orders", order(1, `"--5"`), ""},
		{"minus in decimals", "POST", "/orders", order(1, `"12.-5"`), ""},
		{"plus sign", "POST", "/orders", order(1, `"+7"`), ""},
		{"int64 overflow", "POST", "/orders", order(1, `"--92233720368547758.07"`), ""},
		{"overflow without sign", "POST", "/orders", order(1, `"92233720368547758.07"`), ""},
		{"exponent", "POST", "/orders", order(1, `"1e3"`), ""},
		{"no digits after the point", "POST", "/orders", order(1, `"12."`), ""},
		{"three decimals", "POST", "/products", `{"name":"W","price":1.234}`, ""},
		{"product price 10^10", "POST", "/products", `{"name":"W","price":"10000000000"}`, ""},
		{"new price 10^10", "POST", "/products/p-1/price", `{"price":10000000000.00}`, ""},
		{"new price plus sign", "POST", "/products/p-1/price", `{"price":"+2"}`, ""},

		{"NUL in customer", "POST", "/orders", `{"customer_name":"A\u0000B","items":[{"product_name":"W","quantity":1,"unit_price":1}]}`, "customer_name"},
		{"NUL in product name", "POST", "/orders", `{"customer_name":"A","items":[{"product_name":"W\u0000","quantity":1,"unit_price":1}]}`, "items[0].product_name"},
		{"NUL in name", "POST", "/products", `{"name":"\u0000W","price":1}`, "name"},
		{"NUL in sku", "POST", "/products", `{"name":"W","price":1,"sku":"S\u0000"}`, "sku"},
		{"NUL in tracking number", "POST", "/orders/o-2/ship", `{"tracking_number":"T\u0000"}`, "tracking_number"},
		{"NUL in cancel reason", "POST", "/orders/o-1/cancel", `{"reason":"\u0000"}`, "reason"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := e.do(tc.method, tc.path, tc.body)
			require.Equal(t, http.StatusUnprocessableEntity, res.code, res.raw)
			require.NotEmpty(t, res.body["error"])
			if tc.field != "" {
				require.Equal(t, tc.field, res.body["field"])
			}
		})
	}
	var events int
	require.NoError(t, e.pool.QueryRow(context.Background(), `SELECT count(*) FROM readside.events`).Scan(&events))
	require.Equal(t, 4, events, "refused commands write nothing")
	// The orders are still usable.
	require.Equal(t, http.StatusOK, e.do("POST", "/orders/o-1/confirm", ``).code)
	require.Equal(t, http.StatusOK, e.do("POST", "/orders/o-2/ship", `{"tracking_number":"T"}`).code)
}

// TestLargestAmountReachesTheReadModels: the largest amount a command
// accepts is applied by every projection, not parked with 22003.
func TestLargestAmountReachesTheReadModels(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, nil)
	startWorker(t, e.pool, ordersummary.New(), orderdetails.New(), products.New(), orderstatistics.New())
	var tok string
	for _, c := range []struct{ path, body string }{
		{"/orders", `{"order_id":"o-max","customer_name":"A","items":[{"product_name":"W","quantity":1,"unit_price":"9999999999.99"}]}`},
		{"/orders", `{"order_id":"o-sum","customer_name":"A","items":[{"product_name":"W","quantity":3,"unit_price":"3333333333.33"}]}`},
		{"/products", `{"product_id":"p-max","name":"W","price":9999999999.99}`},
		{"/orders", `{"order_id":"o-last","customer_name":"A","items":[{"product_name":"W","quantity":1,"unit_price":1}]}`},
	} {
		res := e.do("POST", c.path, c.body)
		require.Equal(t, http.StatusCreated, res.code, res.raw)
		tok = "consistency_token=" + url.QueryEscape(res.body["consistency_token"].(string))
		if c.path == "/orders" {
			got := e.get("/orders/" + res.body["order_id"].(string) + "?" + tok)
			require.Equal(t, http.StatusOK, got.code, got.raw)
		} else {
			require.Equal(t, http.StatusOK, e.get("/products?"+tok).code)
		}
	}
	stats := e.get("/statistics?" + tok)
	require.Equal(t, http.StatusOK, stats.code, stats.raw)
	var parked int
	require.NoError(t, e.pool.QueryRow(context.Background(), `SELECT count(*) FROM readside.dead_letters`).Scan(&parked))
	require.Zero(t, parked, "nothing the writer accepts is parked")
	var total string
	require.NoError(t, e.pool.QueryRow(context.Background(), `SELECT total_amount::text FROM readside.order_details WHERE order_id = 'o-max'`).Scan(&total))
	require.Equal(t, "9999999999.99", total)
}
