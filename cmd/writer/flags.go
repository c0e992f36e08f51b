package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/migrations"
)

// DatabaseURLDefault is the local server a laptop usually has.
const DatabaseURLDefault = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// connectTimeout bounds the first connection and the schema check.
const connectTimeout = 5 * time.Second

// flagSet is a flag.FlagSet whose defaults come from environment variables
// and whose errors are returned, one line, instead of printed.
type flagSet struct {
	*flag.FlagSet
	envErr error
}

func newFlagSet(name string) *flagSet {
	fs := flag.NewFlagSet("writer "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &flagSet{FlagSet: fs}
}

func (f *flagSet) string(p *string, name, env, def, help string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		def = v
	}
	f.StringVar(p, name, def, help+" (env "+env+")")
}

func (f *flagSet) int(p *int, name, env string, def int, help string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		n, err := strconv.Atoi(v)
		if err != nil && f.envErr == nil {
			f.envErr = fmt.Errorf("%s=%q: not an integer", env, v)
		}
		def = n
	}
	f.IntVar(p, name, def, help+" (env "+env+")")
}

func (f *flagSet) float(p *float64, name, env string, def float64, help string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil && f.envErr == nil {
			f.envErr = fmt.Errorf("%s=%q: not a number", env, v)
		}
		def = n
	}
	f.Float64Var(p, name, def, help+" (env "+env+")")
}

func (f *flagSet) duration(p *time.Duration, name, env string, def time.Duration, help string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		d, err := time.ParseDuration(v)
		if err != nil && f.envErr == nil {
			f.envErr = fmt.Errorf("%s=%q: not a duration", env, v)
		}
		def = d
	}
	f.DurationVar(p, name, def, help+" (env "+env+")")
}

// parse parses args. -h prints the flags to stdout and returns errHelp.
func (f *flagSet) parse(args []string, stdout io.Writer) error {
	if f.envErr != nil {
		return f.envErr
	}
	if err := f.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "usage of %s:\n", f.Name())
			f.SetOutput(stdout)
			f.PrintDefaults()
			return errHelp
		}
		return fmt.Errorf("%s: %w", f.Name(), err)
	}
	if f.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q", f.Name(), f.Arg(0))
	}
	return nil
}

// errHelp means help was printed: exit 0.
var errHelp = errors.New("help printed")

// connect opens a pool and refuses an unreachable or unmigrated database
// with a one-line reason.
func connect(ctx context.Context, url string, maxConns int) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("database URL: %w", err)
	}
	if maxConns > 0 && cfg.MaxConns < int32(maxConns) {
		cfg.MaxConns = int32(maxConns)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if err := pool.Ping(cctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("database at %s:%d unreachable (set DATABASE_URL or --database-url): %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, err)
	}
	if err := migrations.Check(cctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}
