// Command projector runs readside's projector fleet and its operator
// subcommands. Run `projector -h` for the list.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/readside/readside/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, cli.ErrHelp) {
		fmt.Fprintf(os.Stderr, "projector: %s\n", cli.OneLine(err))
		os.Exit(1)
	}
}

const usage = `usage: projector <command> [flags]

commands:
  migrate       apply readside's and River's migrations (safe to run from every fleet member)
  run           run a fleet member: claim segments and apply projections
  status        show every projection segment: cursor, lag, owner, parked events (--json)
  pause NAME    stop applying a projection (workers let go of its segments)
  resume NAME   resume a paused or halted projection
  reset NAME    replay a projection: [--to-start | --to TXID/POSITION | --to-time RFC3339] [--wait]
  rebuild NAME  rebuild a projection's tables beside the live ones and switch when caught up [--wait]
  dead-letters  list | show ID | retry | discard  parked events
  demo          the whole pipeline on a disposable PostgreSQL (or $DATABASE_URL)

Every command takes --database-url (env DATABASE_URL) and -h.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "migrate":
		return runMigrate(ctx, rest, stdout)
	case "run":
		return runRun(ctx, rest, stdout, stderr)
	case "status":
		return runStatus(ctx, rest, stdout)
	case "pause", "resume":
		return runPauseResume(ctx, cmd, rest, stdout)
	case "reset":
		return runReset(ctx, rest, stdout)
	case "rebuild":
		return runRebuild(ctx, rest, stdout)
	case "dead-letters":
		return runDeadLetters(ctx, rest, stdout)
	case "demo":
		return runDemo(ctx, rest, stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return cli.ErrHelp
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}
