package httpapi

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/readside/readside/aggregate"
)

// Defaults for Config.
const (
	MaxBodyBytesDefault   = 1 << 20 // 1 MiB
	ReadyTimeoutDefault   = 2 * time.Second
	CommandTimeoutDefault = 5 * time.Second
	MaxCommandsDefault    = 8
	AcquireTimeoutDefault = time.Second
)

// ConsistencyTokenHeader carries the consistency token of a command's write.
const ConsistencyTokenHeader = "Readside-Consistency-Token"

// Pinger is what /readyz needs from the database (a *pgxpool.Pool).
type Pinger interface {
	Ping(ctx context.Context) error
}

// Config configures a Server.
type Config struct {
	// Repository executes the commands. Required. Its pool should hold at
	// least MaxCommands connections, and serve nothing else, so that
	// queries cannot take them; its LockTimeout and StatementTimeout bound
	// each command's statements.
	Repository *aggregate.Repository
	// DB is pinged by /readyz. Required.
	DB Pinger
	// Registerer receives readside_http_requests_total. nil means no HTTP
	// metrics.
	Registerer prometheus.Registerer
	// Gatherer is served on /metrics. nil means the Registerer when it is
	// also a Gatherer (a *prometheus.Registry); with neither, /metrics is
	// not served.
	Gatherer prometheus.Gatherer
	// MaxBodyBytes bounds request bodies, in bytes; larger bodies get 413.
	// 0 means MaxBodyBytesDefault.
	MaxBodyBytes int64
	// ReadyTimeout bounds the database ping of /readyz. 0 means
	// ReadyTimeoutDefault.
	ReadyTimeout time.Duration
	// CommandTimeout bounds a command from its arrival: the wait for a
	// place, its transactions and their retries. When it runs out the
	// command is answered 503 with Retry-After. 0 means
	// CommandTimeoutDefault.
	CommandTimeout time.Duration
	// MaxCommands is how many commands run at once; others wait up to
	// AcquireTimeout for a place, then get 503 with Retry-After. 0 means
	// MaxCommandsDefault.
	MaxCommands int
	// AcquireTimeout is how long a command, or a query's read
	// (QueryConfig.MaxQueries), waits for a place. 0 means
	// AcquireTimeoutDefault.
	AcquireTimeout time.Duration
	// Logger logs internal errors. nil means no logging.
	Logger *slog.Logger
	// Now is the clock commands are decided with. nil means time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	c.MaxBodyBytes = cmp.Or(c.MaxBodyBytes, MaxBodyBytesDefault)
	c.ReadyTimeout = cmp.Or(c.ReadyTimeout, ReadyTimeoutDefault)
	c.CommandTimeout = cmp.Or(c.CommandTimeout, CommandTimeoutDefault)
	c.MaxCommands = cmp.Or(c.MaxCommands, MaxCommandsDefault)
	c.AcquireTimeout = cmp.Or(c.AcquireTimeout, AcquireTimeoutDefault)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Gatherer == nil {
		if g, ok := c.Registerer.(prometheus.Gatherer); ok {
			c.Gatherer = g
		}
	}
}

func (c *Config) validate() error {
	switch {
	case c.Repository == nil:
		return errors.New("httpapi: Repository is required")
	case c.DB == nil:
		return errors.New("httpapi: DB is required")
	case c.MaxBodyBytes < 0:
		return fmt.Errorf("httpapi: MaxBodyBytes %d is negative", c.MaxBodyBytes)
	case c.ReadyTimeout < 0:
		return fmt.Errorf("httpapi: ReadyTimeout %v is negative", c.ReadyTimeout)
	case c.CommandTimeout < 0 || c.AcquireTimeout < 0:
		return errors.New("httpapi: CommandTimeout and AcquireTimeout must not be negative")
	case c.MaxCommands < 0:
		return fmt.Errorf("httpapi: MaxCommands %d is negative", c.MaxCommands)
	}
	return nil
}

// Server is the HTTP handler. Register further routes with Handle before
// serving.
type Server struct {
	cfg      Config
	mux      *http.ServeMux
	commands *gate
	requests *prometheus.CounterVec // nil without a Registerer
}

// New returns a Server with the command, health and metrics routes.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), commands: newGate("commands", cfg.MaxCommands, cfg.AcquireTimeout)}
	if cfg.Registerer != nil {
		s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "readside_http_requests_total",
			Help: "HTTP requests by route pattern and status code.",
		}, []string{"route", "code"})
		if err := cfg.Registerer.Register(s.requests); err != nil {
			return nil, fmt.Errorf("httpapi: register metrics: %w", err)
		}
	}
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	s.HandleFunc("POST /orders", s.placeOrder)
	s.HandleFunc("POST /orders/{id}/confirm", s.confirmOrder)
	s.HandleFunc("POST /orders/{id}/ship", s.shipOrder)
	s.HandleFunc("POST /orders/{id}/cancel", s.cancelOrder)
	s.HandleFunc("POST /products", s.createProduct)
	s.HandleFunc("POST /products/{id}/price", s.updatePrice)
	s.HandleFunc("DELETE /products/{id}", s.deleteProduct)

	s.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.HandleFunc("GET /readyz", s.ready)
	if s.cfg.Gatherer != nil {
		s.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{}))
	}
}

// Handle registers h for pattern (a net/http ServeMux pattern such as
// "GET /orders/{id}"). Requests to it are counted in
// readside_http_requests_total under the pattern. Call it before serving.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// HandleFunc is Handle for a function.
func (s *Server) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	s.mux.HandleFunc(pattern, h)
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.requests == nil {
		s.mux.ServeHTTP(w, r)
		return
	}
	sw := &statusWriter{ResponseWriter: w}
	s.mux.ServeHTTP(sw, r)
	// The mux sets r.Pattern to the matched route: a bounded label.
	route := cmp.Or(r.Pattern, "unmatched")
	s.requests.WithLabelValues(route, strconv.Itoa(cmp.Or(sw.status, http.StatusOK))).Inc()
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.ReadyTimeout)
	defer cancel()
	if err := s.cfg.DB.Ping(ctx); err != nil {
		// The probe is public: the driver's error names the user, the
		// database and host:port. Those go to the log only.
		s.cfg.Logger.Warn("readyz: database unreachable", "err", err)
		WriteError(w, http.StatusServiceUnavailable, "database unreachable")
		return
	}
	WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
