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
	"github.com/readside/readside/internal/printable"
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
	QueryLockTimeoutDefault   = time.Second
	MaxQueriesDefault         = 8
	PageSizeDefault           = 50
	MaxPageSize               = 500
)

// QueryDB is what the query routes need from the database (a
// *pgxpool.Pool): each read runs in a transaction of its own, which sets
// its timeouts.
type QueryDB interface {
	Querier
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// QueryConfig configures the query routes.
type QueryConfig struct {
	// DB holds the read models and the checkpoints. Required. Its pool
	// should be another than the Repository's, so that commands and
	// queries cannot take each other's connections, and hold more than
	// MaxQueries connections: the consistency waits poll through it too.
	DB QueryDB
	// ConsistencyWait is how long a query carrying a consistency token
	// waits for its projections when the request has no ?wait=. 0 means
	// ConsistencyWaitDefault.
	ConsistencyWait time.Duration
	// MaxConsistencyWait is the largest ?wait= accepted. 0 means
	// MaxConsistencyWaitDefault.
	MaxConsistencyWait time.Duration
	// QueryTimeout bounds each read of a read model (the wait for a token
	// is bounded separately): the statement_timeout of its transaction.
	// 0 means QueryTimeoutDefault.
	QueryTimeout time.Duration
	// LockTimeout bounds a read's wait for a lock (lock_timeout), such as
	// the one a reset holds while it empties a read model. 0 means
	// QueryLockTimeoutDefault.
	LockTimeout time.Duration
	// MaxQueries is how many reads run at once; others wait up to
	// Config.AcquireTimeout for a place, then get 503 with Retry-After.
	// Waiting for a consistency token takes no place. 0 means
	// MaxQueriesDefault.
	MaxQueries int
}

func (c *QueryConfig) setDefaults() {
	c.ConsistencyWait = cmp.Or(c.ConsistencyWait, ConsistencyWaitDefault)
	c.MaxConsistencyWait = cmp.Or(c.MaxConsistencyWait, MaxConsistencyWaitDefault)
	c.QueryTimeout = cmp.Or(c.QueryTimeout, QueryTimeoutDefault)
	c.LockTimeout = cmp.Or(c.LockTimeout, QueryLockTimeoutDefault)
	c.MaxQueries = cmp.Or(c.MaxQueries, MaxQueriesDefault)
}

func (c *QueryConfig) validate() error {
	switch {
	case c.DB == nil:
		return errors.New("httpapi: QueryConfig.DB is required")
	case c.ConsistencyWait < 0 || c.MaxConsistencyWait < 0 || c.QueryTimeout < 0 || c.LockTimeout < 0:
		return errors.New("httpapi: QueryConfig durations must not be negative")
	case c.MaxQueries < 0:
		return fmt.Errorf("httpapi: MaxQueries %d is negative", c.MaxQueries)
	case c.ConsistencyWait > c.MaxConsistencyWait:
		return fmt.Errorf("httpapi: ConsistencyWait %v is above MaxConsistencyWait %v", c.ConsistencyWait, c.MaxConsistencyWait)
	}
	return nil
}

type queries struct {
	cfg   QueryConfig
	db    QueryDB
	reads *gate
	begin pgx.TxOptions
	log   *slog.Logger
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
	q := &queries{cfg: cfg, db: cfg.DB, log: s.cfg.Logger,
		reads: newGate("queries", cfg.MaxQueries, s.cfg.AcquireTimeout),
		// The timeouts are chosen, not inherited, and set inside the
		// transaction so that they hold through PgBouncer.
		begin: pgx.TxOptions{BeginQuery: fmt.Sprintf(
			"BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY; SET LOCAL lock_timeout = %d; SET LOCAL statement_timeout = %d",
			max(cfg.LockTimeout.Milliseconds(), 1), max(cfg.QueryTimeout.Milliseconds(), 1))},
	}
	s.HandleFunc("GET /orders", q.listOrders)
	s.HandleFunc("GET /orders/{id}", q.orderDetails)
	s.HandleFunc("GET /statistics", q.statistics)
	s.HandleFunc("GET /products", q.listProducts)
	return nil
}

// The bodies of the list routes. NextCursor, when set, is the ?after= of
// the next page. The rows are the read models' own (ordersummary.Order,
// products.Product, ...): what they hold is what the API shows.

// OrderList is the body of GET /orders.
type OrderList struct {
	Orders     []ordersummary.Order `json:"orders"`
	NextCursor string               `json:"next_cursor,omitempty"`
}

// Statistics is the body of GET /statistics, in life-cycle order.
type Statistics struct {
	Statistics []orderstatistics.Row `json:"statistics"`
}

// ProductList is the body of GET /products.
type ProductList struct {
	Products   []products.Product `json:"products"`
	NextCursor string             `json:"next_cursor,omitempty"`
}

var orderStatuses = []string{"pending", "confirmed", "shipped", "cancelled"}

func (q *queries) listOrders(w http.ResponseWriter, r *http.Request) {
	params := r.URL.Query()
	limit, cursor, ok := pageParams(w, r)
	if !ok {
		return
	}
	f := ordersummary.Filter{Status: params.Get("status"), Customer: params.Get("customer")}
	if f.Status != "" && !slices.Contains(orderStatuses, f.Status) {
		WriteError(w, http.StatusBadRequest, fmt.Sprintf("status=%s: want one of %s", echo(f.Status), strings.Join(orderStatuses, ", ")))
		return
	}
	if !storable(f.Customer) {
		WriteJSON(w, http.StatusUnprocessableEntity, ErrorResponse{Error: "customer " + unstorableReason, Field: "customer"})
		return
	}
	var after *ordersummary.Key
	if cursor != nil {
		if cursor.PlacedAt == nil {
			WriteError(w, http.StatusBadRequest, "after: not a cursor of /orders")
			return
		}
		after = &ordersummary.Key{PlacedAt: time.UnixMicro(*cursor.PlacedAt), OrderID: cursor.ID}
	}
	q.answer(w, r, ordersummary.Name, func(ctx context.Context, db Querier) (any, error) {
		orders, more, err := ordersummary.List(ctx, db, f, after, limit)
		res := OrderList{Orders: orders}
		if more {
			last := orders[len(orders)-1].Key()
			res.NextCursor = pageCursor{PlacedAt: new(last.PlacedAt.UnixMicro()), ID: last.OrderID}.String()
		}
		return res, err
	})
}

func (q *queries) orderDetails(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !domain.ValidID(id) {
		// No such order can exist: no need to wait for a token.
		WriteError(w, http.StatusNotFound, fmt.Sprintf("order %s not found", echo(id)))
		return
	}
	q.answer(w, r, orderdetails.Name, func(ctx context.Context, db Querier) (any, error) {
		d, err := orderdetails.Get(ctx, db, id)
		if errors.Is(err, orderdetails.ErrNotFound) {
			return nil, &requestError{http.StatusNotFound, fmt.Sprintf("order %q not found", id)}
		}
		return d, err
	})
}

func (q *queries) statistics(w http.ResponseWriter, r *http.Request) {
	q.answer(w, r, orderstatistics.Name, func(ctx context.Context, db Querier) (any, error) {
		stats, err := orderstatistics.Get(ctx, db)
		return Statistics{Statistics: stats}, err
	})
}

func (q *queries) listProducts(w http.ResponseWriter, r *http.Request) {
	limit, cursor, ok := pageParams(w, r)
	if !ok {
		return
	}
	var f products.Filter
	if v := r.URL.Query().Get("include_deleted"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("include_deleted=%s: want true or false", echo(v)))
			return
		}
		f.IncludeDeleted = b
	}
	var after *products.Key
	if cursor != nil {
		if cursor.Name == nil {
			WriteError(w, http.StatusBadRequest, "after: not a cursor of /products")
			return
		}
		after = &products.Key{Name: *cursor.Name, ProductID: cursor.ID}
	}
	q.answer(w, r, products.Name, func(ctx context.Context, db Querier) (any, error) {
		list, more, err := products.List(ctx, db, f, after, limit)
		res := ProductList{Products: list}
		if more {
			last := list[len(list)-1].Key()
			res.NextCursor = pageCursor{Name: &last.Name, ID: last.ProductID}.String()
		}
		return res, err
	})
}

// queryGrace is how much longer than its statement_timeout a read's
// context lasts: the server cancels a slow statement first and the
// connection stays usable; the context only guards against a server that
// does not answer at all.
const queryGrace = time.Second

// answer waits until projection has applied the request's consistency
// token (awaitToken), takes a place among MaxQueries, runs read in a
// read-only transaction bounded by LockTimeout and QueryTimeout, and
// answers with what it returns and its ETag (writeCacheable). A
// *requestError from read is answered with its status; a bound that ran
// out is a 503 with Retry-After; any other error is a 500, or a 503 when
// the request was cancelled.
func (q *queries) answer(w http.ResponseWriter, r *http.Request, projection string, read func(ctx context.Context, db Querier) (any, error)) {
	if !q.awaitToken(w, r, projection) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), q.cfg.QueryTimeout+queryGrace)
	defer cancel()
	leave, err := q.reads.enter(ctx)
	if err != nil {
		q.internalError(w, r, err)
		return
	}
	defer leave()
	var v any
	err = pgx.BeginTxFunc(ctx, q.db, q.begin, func(tx pgx.Tx) error {
		var err error
		v, err = read(ctx, tx)
		return err
	})
	var bad *requestError
	switch {
	case errors.As(err, &bad):
		WriteError(w, bad.status, bad.msg)
	case err != nil:
		q.internalError(w, r, err)
	default:
		writeCacheable(w, r, v)
	}
}

func (q *queries) internalError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		// The client went away or the server is shutting down.
		WriteError(w, http.StatusServiceUnavailable, "request cancelled")
		return
	}
	if msg, ok := unavailable(err); ok {
		writeUnavailable(w, msg)
		return
	}
	if isUnstorable(err) {
		WriteError(w, http.StatusUnprocessableEntity, "a parameter "+unstorableReason)
		return
	}
	q.log.ErrorContext(r.Context(), "query failed", "method", r.Method, "path", printable.Cap(r.URL.Path, maxEchoBytes),
		"err", printable.Cap(err.Error(), maxErrorBytes))
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
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("limit=%s: want an integer from 1 to %d", echo(v), MaxPageSize))
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
		if !storable(c.ID) || (c.Name != nil && !storable(*c.Name)) {
			// Only a crafted cursor holds one: none is issued with it.
			WriteJSON(w, http.StatusUnprocessableEntity, ErrorResponse{Error: "after: a key " + unstorableReason, Field: "after"})
			return 0, nil, false
		}
		after = &c
	}
	return limit, after, true
}
