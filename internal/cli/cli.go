// Package cli holds what readside's commands share: flags with environment
// fallbacks (shown redacted when secret), connecting with a one-line error,
// logging setup and the version line.
package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/internal/printable"
)

// DatabaseURLDefault is the local server a laptop usually has.
const DatabaseURLDefault = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// ConnectTimeout bounds the first connection.
const ConnectTimeout = 5 * time.Second

// Connect opens a pool of at least maxConns connections and pings it, with
// a one-line error naming the host (never the password) when unreachable.
func Connect(ctx context.Context, url string, maxConns int) (*pgxpool.Pool, error) {
	return ConnectConfig{URL: url, MinConns: maxConns}.Connect(ctx)
}

// ConnectConfig configures a pool.
type ConnectConfig struct {
	// URL is the PostgreSQL URL or keyword/value string (pgx's keywords,
	// pool_max_conns and default_query_exec_mode included).
	URL string
	// MinConns raises the pool size to at least this many connections when
	// the URL's pool_max_conns is lower. 0 means no floor.
	MinConns int
	// MaxConns sets the pool size, whatever the URL says; it wins over
	// MinConns. 0 means the URL's (or MinConns).
	MaxConns int
	// PgBouncer: the pool goes through PgBouncer in transaction pooling
	// mode, where consecutive transactions may run on different server
	// connections. Statements are then not prepared by name (PgBouncer
	// before 1.21 cannot route them): pgx's cache_describe mode, which
	// sends each statement with its unnamed Parse in one round trip and
	// caches only its parameter and result types. A default_query_exec_mode
	// named in URL wins (cache_statement with PgBouncer 1.21's
	// max_prepared_statements).
	PgBouncer bool
}

// Connect opens the pool and pings it, with a one-line error naming the
// host (never the password) when unreachable.
func (c ConnectConfig) Connect(ctx context.Context) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(c.URL)
	if err != nil {
		// pgx's own message quotes the string, redacted on a best-effort
		// basis only.
		return nil, parseError(err)
	}
	if err := checkHosts(&cfg.ConnConfig.Config); err != nil {
		return nil, parseError(err)
	}
	if c.MinConns > 0 && cfg.MaxConns < int32(c.MinConns) {
		cfg.MaxConns = int32(c.MinConns)
	}
	if c.MaxConns > 0 {
		cfg.MaxConns = int32(c.MaxConns)
	}
	if c.PgBouncer && !strings.Contains(c.URL, "default_query_exec_mode") {
		cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "readside"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, ConnectTimeout)
	defer cancel()
	if err := pool.Ping(cctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("database at %s:%d unreachable (set DATABASE_URL or --database-url): %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, err)
	}
	return pool, nil
}

// LogFormats and LogLevels are the values --log-format and --log-level take.
var (
	LogFormats = []string{"text", "json"}
	LogLevels  = []string{"debug", "info", "warn", "error"}
)

// Logger builds a slog logger: format "text" or "json", level debug, info,
// warn or error.
func Logger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// OneLineBytes caps what OneLine shows of an error.
const OneLineBytes = 2000

// OneLine flattens an error message onto one line for stderr: whitespace
// runs become one space, control characters are escaped (an aggregate id
// or a database error may carry terminal escapes) and at most OneLineBytes
// of it are shown.
func OneLine(err error) string {
	return printable.Line(printable.Cap(strings.Join(strings.Fields(err.Error()), " "), OneLineBytes))
}
