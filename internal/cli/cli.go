// Package cli holds what readside's commands share: flags with environment
// fallbacks, connecting with a one-line error, and logging setup.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// DatabaseURLDefault is the local server a laptop usually has.
const DatabaseURLDefault = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// ConnectTimeout bounds the first connection.
const ConnectTimeout = 5 * time.Second

// ErrHelp means help was printed: exit 0.
var ErrHelp = errors.New("help printed")

// FlagSet is a flag.FlagSet whose defaults come from environment variables
// and whose errors are returned, one line, instead of printed.
type FlagSet struct {
	*flag.FlagSet
	envErr error
}

// NewFlagSet returns a FlagSet named like "projector run".
func NewFlagSet(name string) *FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &FlagSet{FlagSet: fs}
}

// String defines a string flag defaulting to $env, else def.
func (f *FlagSet) String(p *string, name, env, def, help string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		def = v
	}
	f.StringVar(p, name, def, help+" (env "+env+")")
}

// Int defines an int flag defaulting to $env, else def.
func (f *FlagSet) Int(p *int, name, env string, def int, help string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		n, err := strconv.Atoi(v)
		if err != nil && f.envErr == nil {
			f.envErr = fmt.Errorf("%s=%q: not an integer", env, v)
		}
		def = n
	}
	f.IntVar(p, name, def, help+" (env "+env+")")
}

// Duration defines a duration flag defaulting to $env, else def.
func (f *FlagSet) Duration(p *time.Duration, name, env string, def time.Duration, help string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		d, err := time.ParseDuration(v)
		if err != nil && f.envErr == nil {
			f.envErr = fmt.Errorf("%s=%q: not a duration", env, v)
		}
		def = d
	}
	f.DurationVar(p, name, def, help+" (env "+env+")")
}

// Parse parses args; -h prints the flags to stdout and returns ErrHelp.
// wantArgs is how many positional arguments are required.
func (f *FlagSet) Parse(args []string, stdout io.Writer, wantArgs int) error {
	if f.envErr != nil {
		return f.envErr
	}
	if err := f.FlagSet.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "usage of %s:\n", f.Name())
			f.SetOutput(stdout)
			f.PrintDefaults()
			return ErrHelp
		}
		return fmt.Errorf("%s: %w", f.Name(), err)
	}
	switch {
	case f.NArg() > wantArgs:
		return fmt.Errorf("%s: unexpected argument %q", f.Name(), f.Arg(wantArgs))
	case f.NArg() < wantArgs:
		return fmt.Errorf("%s: missing argument (see %s -h)", f.Name(), f.Name())
	}
	return nil
}

// Connect opens a pool of at least maxConns connections and pings it, with
// a one-line error naming the host (never the password) when unreachable.
func Connect(ctx context.Context, url string, maxConns int) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("database URL: %w", err)
	}
	if maxConns > 0 && cfg.MaxConns < int32(maxConns) {
		cfg.MaxConns = int32(maxConns)
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

// OneLine flattens an error message onto one line for stderr.
func OneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// Float defines a float flag defaulting to $env, else def.
func (f *FlagSet) Float(p *float64, name, env string, def float64, help string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil && f.envErr == nil {
			f.envErr = fmt.Errorf("%s=%q: not a number", env, v)
		}
		def = n
	}
	f.Float64Var(p, name, def, help+" (env "+env+")")
}
