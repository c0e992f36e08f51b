package httpapi

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/projectors/orderdetails"
	"github.com/readside/readside/projectors/orderstatistics"
	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/products"
)

// Defaults and limits of QueryConfig and of the paging parameters.
const (
	ConsistencyWaitDefault    = 2 * time.Second
	MaxConsistencyWaitDefault = 10 * time.Second
	QueryTimeoutDefault       = 5 * time.Second
	PageSizeDefault           = 50
	MaxPageSize               = 500
)

// QueryConfig configures the query routes.
type QueryConfig struct {
	// DB holds the read models and the checkpoints. Required.
	DB Querier
	// ConsistencyWait is how long a query carrying a consistency token
	// waits for its projections when the request has no ?wait=. 0 means
	// ConsistencyWaitDefault.
	ConsistencyWait time.Duration
	// MaxConsistencyWait is the largest ?wait= accepted. 0 means
	// MaxConsistencyWaitDefault.
	MaxConsistencyWait time.Duration
	// QueryTimeout bounds each read of a read model (the wait for a token
	// is bounded separately). 0 means QueryTimeoutDefault.
	QueryTimeout time.Duration
}

func (c *QueryConfig) setDefaults() {
	c.ConsistencyWait = cmp.Or(c.ConsistencyWait, ConsistencyWaitDefault)
	c.MaxConsistencyWait = cmp.Or(c.MaxConsistencyWait, MaxConsistencyWaitDefault)
	c.QueryTimeout = cmp.Or(c.QueryTimeout, QueryTimeoutDefault)
}

func (c *QueryConfig) validate() error {
	switch {
	case c.DB == nil:
		return errors.New("httpapi: QueryConfig.DB is required")
	case c.ConsistencyWait < 0 || c.MaxConsistencyWait < 0 || c.QueryTimeout < 0:
		return errors.New("httpapi: QueryConfig durations must not be negative")
	case c.ConsistencyWait > c.MaxConsistencyWait:
		return fmt.Errorf("httpapi: ConsistencyWait %v is above MaxConsistencyWait %v", c.ConsistencyWait, c.MaxConsistencyWait)
	}
	return nil
}

type queries struct {
	cfg QueryConfig
	db  Querier
	log *slog.Logger
}

// HandleQueries adds the read side next to the commands (the seed's
// OrdersController):
//
//	GET /orders              orders, recent first, keyset-paged (?limit=, ?after=),
//	                         filtered by ?status= and ?customer=
//	GET /orders/{id}         one order with its items
//	GET /statistics          order count, revenue and average value per status
//	GET /products            the catalog by name, paged; ?include_deleted=true
//
// Each route reads one projection's tables and honours read-your-writes: a
// consistency token from a command (?consistency_token= or the
// Readside-Consistency-Token header) makes it wait, up to ?wait= (a
// duration), until that projection has applied the write. Call it once,
// before serving.
func (s *Server) HandleQueries(cfg QueryConfig) error {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	q := &queries{cfg: cfg, db: cfg.DB, log: s.cfg.Logger}
	s.HandleFunc("GET /orders", q.listOrders)
	s.HandleFunc("GET /orders/{id}", q.orderDetails)
	s.HandleFunc("GET /statistics", q.statistics)
	s.HandleFunc("GET /products", q.listProducts)
	return nil
}

// Amounts are json.Number: a JSON number with two decimals exactly as
// PostgreSQL's numeric(12,2) prints it, the form the command API reads and
// writes (domain.Money), with no trip through float64.

// OrderSummary is a row of GET /orders.
type OrderSummary struct {
	OrderID      string      `json:"order_id"`
	CustomerName string      `json:"customer_name"`
	TotalAmount  json.Number `json:"total_amount"`
	Status       string      `json:"status"`
	PlacedAt     time.Time   `json:"placed_at"`
	ConfirmedAt  *time.Time  `json:"confirmed_at,omitempty"`
	ShippedAt    *time.Time  `json:"shipped_at,omitempty"`
	CancelledAt  *time.Time  `json:"cancelled_at,omitempty"`
	Version      int         `json:"version"`
}

// OrderList is the body of GET /orders. NextCursor, when set, is the
// ?after= of the next page.
type OrderList struct {
	Orders     []OrderSummary `json:"orders"`
	NextCursor string         `json:"next_cursor,omitempty"`
}

// OrderDetails is the body of GET /orders/{id}.
type OrderDetails struct {
	OrderID        string      `json:"order_id"`
	CustomerName   string      `json:"customer_name"`
	TotalAmount    json.Number `json:"total_amount"`
	Status         string      `json:"status"`
	ItemCount      int         `json:"item_count"`
	PlacedAt       time.Time   `json:"placed_at"`
	ConfirmedAt    *time.Time  `json:"confirmed_at,omitempty"`
	ShippedAt      *time.Time  `json:"shipped_at,omitempty"`
	TrackingNumber string      `json:"tracking_number,omitempty"`
	CancelledAt    *time.Time  `json:"cancelled_at,omitempty"`
	CancelReason   string      `json:"cancel_reason,omitempty"`
	Version        int         `json:"version"`
	Items          []OrderItem `json:"items"`
}

// OrderItem is a line of an order.
type OrderItem struct {
	LineNo      int         `json:"line_no"`
	ProductID   string      `json:"product_id,omitempty"`
	ProductName string      `json:"product_name"`
	Quantity    int         `json:"quantity"`
	UnitPrice   json.Number `json:"unit_price"`
	Subtotal    json.Number `json:"subtotal"`
}

// StatusStatistics is one status's row of GET /statistics.
type StatusStatistics struct {
	Status            string      `json:"status"`
	OrderCount        int64       `json:"order_count"`
	TotalRevenue      json.Number `json:"total_revenue"`
	AverageOrderValue json.Number `json:"average_order_value"` // 0.00 without orders
}

// Statistics is the body of GET /statistics, in life-cycle order.
type Statistics struct {
	Statistics []StatusStatistics `json:"statistics"`
}

// Product is a row of GET /products.
type Product struct {
	ProductID  string      `json:"product_id"`
	Name       string      `json:"name"`
	Price      json.Number `json:"price"`
	CategoryID string      `json:"category_id,omitempty"`
	SKU        string      `json:"sku"`
	CreatedAt  time.Time   `json:"created_at"`
	Deleted    bool        `json:"deleted"`
	DeletedAt  *time.Time  `json:"deleted_at,omitempty"`
	Version    int         `json:"version"`
}

// ProductList is the body of GET /products.
type ProductList struct {
	Products   []Product `json:"products"`
	NextCursor string    `json:"next_cursor,omitempty"`
}

var orderStatuses = []string{"pending", "confirmed", "shipped", "cancelled"}

func (q *queries) listOrders(w http.ResponseWriter, r *http.Request) {
	params := r.URL.Query()
	limit, after, ok := pageParams(w, r)
	if !ok {
		return
	}
	var where []string
	var args []any
	arg := func(v any) string { args = append(args, v); return "$" + strconv.Itoa(len(args)) }
	if status := params.Get("status"); status != "" {
		if !slices.Contains(orderStatuses, status) {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("status=%q: want one of %s", status, strings.Join(orderStatuses, ", ")))
			return
		}
		where = append(where, "status = "+arg(status))
	}
	if customer := params.Get("customer"); customer != "" {
		where = append(where, "customer_name = "+arg(customer))
	}
	if after != nil {
		if after.PlacedAt == nil {
			WriteError(w, http.StatusBadRequest, "after: not a cursor of /orders")
			return
		}
		where = append(where, fmt.Sprintf("(placed_at, order_id) < (%s::timestamptz, %s::text)",
			arg(time.UnixMicro(*after.PlacedAt)), arg(after.ID)))
	}
	if !q.awaitToken(w, r, ordersummary.Name) {
		return
	}
	// A statement per filter combination rather than "$1 IS NULL OR ...":
	// each one gets a plan that uses its index.
	sql := `SELECT order_id, customer_name, total_amount::text, status, placed_at, confirmed_at, shipped_at, cancelled_at, version
	          FROM order_summary`
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	sql += " ORDER BY placed_at DESC, order_id DESC LIMIT " + arg(limit+1)

	ctx, cancel := context.WithTimeout(r.Context(), q.cfg.QueryTimeout)
	defer cancel()
	rows, err := q.db.Query(ctx, sql, args...)
	if err != nil {
		q.internalError(w, r, err)
		return
	}
	orders, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (OrderSummary, error) {
		var o OrderSummary
		var total string
		err := row.Scan(&o.OrderID, &o.CustomerName, &total, &o.Status, &o.PlacedAt, &o.ConfirmedAt, &o.ShippedAt, &o.CancelledAt, &o.Version)
		o.TotalAmount = json.Number(total)
		o.PlacedAt, o.ConfirmedAt, o.ShippedAt, o.CancelledAt = o.PlacedAt.UTC(), utc(o.ConfirmedAt), utc(o.ShippedAt), utc(o.CancelledAt)
		return o, err
	})
	if err != nil {
		q.internalError(w, r, err)
		return
	}
	res := OrderList{Orders: orders}
	if len(orders) > limit {
		res.Orders = orders[:limit]
		last := res.Orders[limit-1]
		res.NextCursor = pageCursor{PlacedAt: new(last.PlacedAt.UnixMicro()), ID: last.OrderID}.String()
	}
	writeCacheable(w, r, res)
}

func (q *queries) orderDetails(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !domain.ValidID(id) {
		// No such order can exist: no need to wait for a token.
		WriteError(w, http.StatusNotFound, fmt.Sprintf("order %q not found", id))
		return
	}
	if !q.awaitToken(w, r, orderdetails.Name) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), q.cfg.QueryTimeout)
	defer cancel()
	var d OrderDetails
	var total string
	var tracking, reason *string
	err := q.db.QueryRow(ctx, `
SELECT order_id, customer_name, total_amount::text, status, item_count, placed_at, confirmed_at, shipped_at,
       tracking_number, cancelled_at, cancel_reason, version
  FROM order_details WHERE order_id = $1`, id).Scan(&d.OrderID, &d.CustomerName, &total, &d.Status, &d.ItemCount,
		&d.PlacedAt, &d.ConfirmedAt, &d.ShippedAt, &tracking, &d.CancelledAt, &reason, &d.Version)
	if errors.Is(err, pgx.ErrNoRows) {
		WriteError(w, http.StatusNotFound, fmt.Sprintf("order %q not found", id))
		return
	}
	if err != nil {
		q.internalError(w, r, err)
		return
	}
	d.TotalAmount = json.Number(total)
	d.TrackingNumber, d.CancelReason = deref(tracking), deref(reason)
	d.PlacedAt, d.ConfirmedAt, d.ShippedAt, d.CancelledAt = d.PlacedAt.UTC(), utc(d.ConfirmedAt), utc(d.ShippedAt), utc(d.CancelledAt)

	// The items were committed with the order in one transaction and never
	// change, so a second statement cannot see a different version of them.
	rows, err := q.db.Query(ctx, `
SELECT line_no, coalesce(product_id, ''), product_name, quantity, unit_price::text, subtotal::text
  FROM order_items WHERE order_id = $1 ORDER BY line_no`, id)
	if err != nil {
		q.internalError(w, r, err)
		return
	}
	d.Items, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (OrderItem, error) {
		var it OrderItem
		var price, subtotal string
		err := row.Scan(&it.LineNo, &it.ProductID, &it.ProductName, &it.Quantity, &price, &subtotal)
		it.UnitPrice, it.Subtotal = json.Number(price), json.Number(subtotal)
		return it, err
	})
	if err != nil {
		q.internalError(w, r, err)
		return
	}
	writeCacheable(w, r, d)
}

func (q *queries) statistics(w http.ResponseWriter, r *http.Request) {
	if !q.awaitToken(w, r, orderstatistics.Name) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), q.cfg.QueryTimeout)
	defer cancel()
	rows, err := q.db.Query(ctx, `
SELECT status, order_count, total_revenue::text, coalesce(average_order_value, 0)::numeric(12,2)::text
  FROM order_statistics
 ORDER BY array_position($1::text[], status)`, orderStatuses)
	if err != nil {
		q.internalError(w, r, err)
		return
	}
	stats, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (StatusStatistics, error) {
		var s StatusStatistics
		var revenue, avg string
		err := row.Scan(&s.Status, &s.OrderCount, &revenue, &avg)
		s.TotalRevenue, s.AverageOrderValue = json.Number(revenue), json.Number(avg)
		return s, err
	})
	if err != nil {
		q.internalError(w, r, err)
		return
	}
	writeCacheable(w, r, Statistics{Statistics: stats})
}

func (q *queries) listProducts(w http.ResponseWriter, r *http.Request) {
	limit, after, ok := pageParams(w, r)
	if !ok {
		return
	}
	includeDeleted := false
	if v := r.URL.Query().Get("include_deleted"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("include_deleted=%q: want true or false", v))
			return
		}
		includeDeleted = b
	}
	var where []string
	var args []any
	arg := func(v any) string { args = append(args, v); return "$" + strconv.Itoa(len(args)) }
	if !includeDeleted {
		where = append(where, "NOT deleted")
	}
	if after != nil {
		if after.Name == nil {
			WriteError(w, http.StatusBadRequest, "after: not a cursor of /products")
			return
		}
		where = append(where, fmt.Sprintf("(name, product_id) > (%s::text, %s::text)", arg(*after.Name), arg(after.ID)))
	}
	if !q.awaitToken(w, r, products.Name) {
		return
	}
	sql := `SELECT product_id, name, price::text, coalesce(category_id, ''), sku, created_at, deleted, deleted_at, version
	          FROM products`
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	sql += " ORDER BY name, product_id LIMIT " + arg(limit+1)

	ctx, cancel := context.WithTimeout(r.Context(), q.cfg.QueryTimeout)
	defer cancel()
	rows, err := q.db.Query(ctx, sql, args...)
	if err != nil {
		q.internalError(w, r, err)
		return
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Product, error) {
		var p Product
		var price string
		err := row.Scan(&p.ProductID, &p.Name, &price, &p.CategoryID, &p.SKU, &p.CreatedAt, &p.Deleted, &p.DeletedAt, &p.Version)
		p.Price = json.Number(price)
		p.CreatedAt, p.DeletedAt = p.CreatedAt.UTC(), utc(p.DeletedAt)
		return p, err
	})
	if err != nil {
		q.internalError(w, r, err)
		return
	}
	res := ProductList{Products: list}
	if len(list) > limit {
		res.Products = list[:limit]
		last := res.Products[limit-1]
		res.NextCursor = pageCursor{Name: &last.Name, ID: last.ProductID}.String()
	}
	writeCacheable(w, r, res)
}

func (q *queries) internalError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		// The client went away or the server is shutting down.
		WriteError(w, http.StatusServiceUnavailable, "request cancelled")
		return
	}
	q.log.ErrorContext(r.Context(), "query failed", "method", r.Method, "path", r.URL.Path, "err", err)
	WriteError(w, http.StatusInternalServerError, "internal error")
}

// pageCursor is the keyset of the last row of a page: (placed_at, order_id)
// for orders, (name, product_id) for products. Clients see it as an opaque
// string.
type pageCursor struct {
	PlacedAt *int64  `json:"t,omitempty"` // microseconds since the epoch, PostgreSQL's precision
	Name     *string `json:"n,omitempty"`
	ID       string  `json:"id"`
}

func (c pageCursor) String() string {
	b, err := json.Marshal(c)
	if err != nil {
		panic(err) // a struct of strings and ints always marshals
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func parsePageCursor(s string) (pageCursor, error) {
	var c pageCursor
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return c, errors.New("not a cursor returned as next_cursor")
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil || c.ID == "" || (c.PlacedAt == nil) == (c.Name == nil) {
		return pageCursor{}, errors.New("not a cursor returned as next_cursor")
	}
	return c, nil
}

// pageParams reads ?limit= and ?after=; it answers 400 itself and returns
// ok false when either is malformed.
func pageParams(w http.ResponseWriter, r *http.Request) (limit int, after *pageCursor, ok bool) {
	params := r.URL.Query()
	limit = PageSizeDefault
	if v := params.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPageSize {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("limit=%q: want an integer from 1 to %d", v, MaxPageSize))
			return 0, nil, false
		}
		limit = n
	}
	if params.Has("after") {
		c, err := parsePageCursor(params.Get("after"))
		if err != nil {
			WriteError(w, http.StatusBadRequest, "after: "+err.Error())
			return 0, nil, false
		}
		after = &c
	}
	return limit, after, true
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
