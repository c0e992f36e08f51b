package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/printable"
	"github.com/readside/readside/outbox"
)

// Request headers copied into the events' metadata.
const (
	CorrelationIDHeader = "X-Correlation-Id"
	CausationIDHeader   = "X-Causation-Id"
	UserIDHeader        = "X-User-Id"
	maxMetadataLen      = 128
)

// CommandResponse is the body of a successful command.
type CommandResponse struct {
	OrderID   string `json:"order_id,omitempty"`
	ProductID string `json:"product_id,omitempty"`
	// Version is the aggregate's version after the command.
	Version int `json:"version"`
	// ConsistencyToken is the outbox cursor of the write ("txid/position");
	// empty when the command changed nothing.
	ConsistencyToken string `json:"consistency_token,omitempty"`
}

type placeOrderRequest struct {
	// OrderID is optional: clients that retry a POST send their own id and
	// get 409 instead of a second order.
	OrderID      string             `json:"order_id"`
	CustomerName string             `json:"customer_name"`
	Items        []orderItemRequest `json:"items"`
}

type orderItemRequest struct {
	ProductID   string       `json:"product_id"`
	ProductName string       `json:"product_name"`
	Quantity    int          `json:"quantity"`
	UnitPrice   domain.Money `json:"unit_price"`
}

type shipOrderRequest struct {
	TrackingNumber string `json:"tracking_number"`
}

type cancelOrderRequest struct {
	Reason string `json:"reason"`
}

type createProductRequest struct {
	ProductID  string       `json:"product_id"`
	Name       string       `json:"name"`
	Price      domain.Money `json:"price"`
	CategoryID string       `json:"category_id"`
	SKU        string       `json:"sku"`
}

type updatePriceRequest struct {
	Price domain.Money `json:"price"`
}

func (s *Server) placeOrder(w http.ResponseWriter, r *http.Request) {
	var req placeOrderRequest
	if !s.decode(w, r, &req, false) {
		return
	}
	cmd := domain.PlaceOrder{OrderID: orNew(req.OrderID, domain.NewID), CustomerName: req.CustomerName}
	for _, it := range req.Items {
		cmd.Items = append(cmd.Items, domain.OrderItem(it))
	}
	now := s.cfg.Now()
	s.execOrder(w, r, cmd.OrderID, http.StatusCreated, func(o *domain.Order) ([]domain.Event, error) {
		return o.Place(cmd, now)
	})
}

func (s *Server) confirmOrder(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !s.decode(w, r, &struct{}{}, true) {
		return
	}
	now := s.cfg.Now()
	s.execOrder(w, r, id, http.StatusOK, func(o *domain.Order) ([]domain.Event, error) {
		return o.Confirm(domain.ConfirmOrder{OrderID: id}, now)
	})
}

func (s *Server) shipOrder(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var req shipOrderRequest
	if !s.decode(w, r, &req, true) {
		return
	}
	now := s.cfg.Now()
	s.execOrder(w, r, id, http.StatusOK, func(o *domain.Order) ([]domain.Event, error) {
		return o.Ship(domain.ShipOrder{OrderID: id, TrackingNumber: req.TrackingNumber}, now)
	})
}

func (s *Server) cancelOrder(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var req cancelOrderRequest
	if !s.decode(w, r, &req, true) {
		return
	}
	now := s.cfg.Now()
	s.execOrder(w, r, id, http.StatusOK, func(o *domain.Order) ([]domain.Event, error) {
		return o.Cancel(domain.CancelOrder{OrderID: id, Reason: req.Reason}, now)
	})
}

func (s *Server) createProduct(w http.ResponseWriter, r *http.Request) {
	var req createProductRequest
	if !s.decode(w, r, &req, false) {
		return
	}
	cmd := domain.CreateProduct{ProductID: orNew(req.ProductID, domain.NewID), Name: req.Name,
		Price: req.Price, CategoryID: req.CategoryID, SKU: req.SKU}
	now := s.cfg.Now()
	s.execProduct(w, r, cmd.ProductID, http.StatusCreated, func(p *domain.Product) ([]domain.Event, error) {
		return p.Create(cmd, now)
	})
}

func (s *Server) updatePrice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var req updatePriceRequest
	if !s.decode(w, r, &req, false) {
		return
	}
	now := s.cfg.Now()
	s.execProduct(w, r, id, http.StatusOK, func(p *domain.Product) ([]domain.Event, error) {
		return p.UpdatePrice(domain.UpdatePrice{ProductID: id, NewPrice: req.Price}, now)
	})
}

func (s *Server) deleteProduct(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !s.decode(w, r, &struct{}{}, true) {
		return
	}
	now := s.cfg.Now()
	s.execProduct(w, r, id, http.StatusOK, func(p *domain.Product) ([]domain.Event, error) {
		return p.Delete(domain.DeleteProduct{ProductID: id}, now)
	})
}

// orNew returns s, or f() when s is empty.
func orNew(s string, f func() string) string {
	if s == "" {
		return f()
	}
	return s
}

// decode reads the request body into v and answers the error itself. A
// POST, or any request with a body, must say it is JSON: a browser sends a
// cross-site form (text/plain, urlencoded, multipart) without asking, so
// this is what keeps another site from placing orders through a user's
// browser.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any, allowEmpty bool) bool {
	if (r.Method == http.MethodPost || r.ContentLength != 0) && !isJSON(r) {
		WriteError(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return false
	}
	err := decodeJSON(w, r, s.cfg.MaxBodyBytes, v, allowEmpty)
	if err == nil {
		return true
	}
	var re *requestError
	if errors.As(err, &re) {
		WriteError(w, re.status, re.msg)
	} else {
		WriteError(w, http.StatusBadRequest, err.Error())
	}
	return false
}

func (s *Server) execOrder(w http.ResponseWriter, r *http.Request, id string, status int, decide func(*domain.Order) ([]domain.Event, error)) {
	s.exec(w, r, id, "order_id", status, func(ctx context.Context, meta outbox.Metadata) (*aggregate.Result, error) {
		return aggregate.Execute(ctx, s.cfg.Repository, id, meta, decide)
	}, func(resp *CommandResponse) { resp.OrderID = id })
}

func (s *Server) execProduct(w http.ResponseWriter, r *http.Request, id string, status int, decide func(*domain.Product) ([]domain.Event, error)) {
	s.exec(w, r, id, "product_id", status, func(ctx context.Context, meta outbox.Metadata) (*aggregate.Result, error) {
		return aggregate.Execute(ctx, s.cfg.Repository, id, meta, decide)
	}, func(resp *CommandResponse) { resp.ProductID = id })
}

// exec runs a command on aggregate id, from the path or from the body's
// idField, and answers with its result or its error.
func (s *Server) exec(w http.ResponseWriter, r *http.Request, id, idField string, status int,
	run func(context.Context, outbox.Metadata) (*aggregate.Result, error), fill func(*CommandResponse),
) {
	meta, ok := metadata(w, r)
	if !ok {
		return
	}
	if r.PathValue("id") != "" && !domain.ValidID(id) {
		// No aggregate can have this id.
		WriteError(w, http.StatusNotFound, "not found: invalid id")
		return
	}
	if err := domain.CheckID(idField, id); err != nil {
		// A new aggregate's id from the body: refused before the load,
		// which PostgreSQL would fail on a NUL.
		s.writeCommandError(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.CommandTimeout)
	defer cancel()
	leave, err := s.commands.enter(ctx)
	if err != nil {
		s.writeCommandError(w, r, err)
		return
	}
	defer leave()
	res, err := run(ctx, meta)
	if err != nil {
		s.writeCommandError(w, r, err)
		return
	}
	resp := CommandResponse{Version: res.Version}
	if res.Append != nil {
		resp.ConsistencyToken = res.Cursor().String()
		w.Header().Set(ConsistencyTokenHeader, resp.ConsistencyToken)
	}
	fill(&resp)
	if status == http.StatusCreated {
		w.Header().Set("Location", strings.TrimSuffix(r.URL.Path, "/")+"/"+id)
	}
	WriteJSON(w, status, resp)
}

func metadata(w http.ResponseWriter, r *http.Request) (outbox.Metadata, bool) {
	m := outbox.Metadata{
		CorrelationID: r.Header.Get(CorrelationIDHeader),
		CausationID:   r.Header.Get(CausationIDHeader),
		UserID:        r.Header.Get(UserIDHeader),
	}
	for name, v := range map[string]string{CorrelationIDHeader: m.CorrelationID, CausationIDHeader: m.CausationID, UserIDHeader: m.UserID} {
		if len(v) > maxMetadataLen {
			WriteError(w, http.StatusBadRequest, name+" header is too long")
			return m, false
		}
	}
	return m, true
}

// writeCommandError maps domain and repository errors to status codes.
func (s *Server) writeCommandError(w http.ResponseWriter, r *http.Request, err error) {
	var ve *domain.ValidationError
	switch {
	case errors.As(err, &ve):
		WriteJSON(w, http.StatusUnprocessableEntity, ErrorResponse{Error: err.Error(), Field: ve.Field})
	case errors.Is(err, domain.ErrValidation):
		WriteError(w, http.StatusUnprocessableEntity, err.Error())
	case errors.Is(err, domain.ErrNotFound):
		WriteError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, domain.ErrInvalidTransition), errors.Is(err, domain.ErrAlreadyExists):
		WriteError(w, http.StatusConflict, err.Error())
	case errors.Is(err, domain.ErrInvalidEvent):
		// The aggregate's history holds an event the domain refuses
		// (written around the writer, through the SQL contract): no command
		// can apply until an operator repairs it.
		WriteError(w, http.StatusConflict, "the aggregate's history cannot be loaded: "+err.Error())
	case errors.Is(err, outbox.ErrConcurrencyConflict):
		WriteError(w, http.StatusConflict, "concurrent update, retry the request: "+err.Error())
	case r.Context().Err() != nil:
		// The client went away or the server is shutting down.
		WriteError(w, http.StatusServiceUnavailable, "request cancelled")
	case isUnavailable(err):
		msg, _ := unavailable(err)
		writeUnavailable(w, msg)
	case isUnstorable(err):
		WriteError(w, http.StatusUnprocessableEntity, "a value "+unstorableReason)
	default:
		s.cfg.Logger.ErrorContext(r.Context(), "command failed", "method", r.Method, "path", printable.Cap(r.URL.Path, maxEchoBytes),
			"err", printable.Cap(err.Error(), maxErrorBytes))
		WriteError(w, http.StatusInternalServerError, "internal error")
	}
}
