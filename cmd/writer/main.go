// Command writer is readside's reference writer: an HTTP JSON command API
// for the seed domain (orders and products) and a load generator that drives
// the same command path.
//
//	writer serve [--addr :8080] [--database-url URL]
//	writer load --events N --aggregates M --concurrency C [--rate R] [--products P]
//
// Flags fall back to environment variables (DATABASE_URL, WRITER_ADDR, ...);
// see `writer serve -h` and `writer load -h`.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/readside/readside/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "writer: "+strings.ReplaceAll(err.Error(), "\n", " "))
		os.Exit(1)
	}
}

const usage = `usage: writer <command> [flags]

commands:
  serve   serve the HTTP JSON API: commands and queries on orders and products, /metrics, /healthz, /readyz
  load    generate order life cycles through the command path and report events/s

Run 'writer <command> -h' for the command's flags.
`

// errUsage is returned for a missing or unknown command.
var errUsage = errors.New("usage: writer serve|load [flags] (writer -h for help)")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	var err error
	switch args[0] {
	case "serve":
		err = runServe(ctx, args[1:], stdout, stderr)
	case "load":
		err = runLoad(ctx, args[1:], stdout)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return fmt.Errorf("unknown command %q; %w", args[0], errUsage)
	}
	if errors.Is(err, cli.ErrHelp) {
		return nil
	}
	return err
}
