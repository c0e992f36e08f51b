// Command writer is readside's reference writer: an HTTP JSON command API
// for the seed domain (orders and products) and a load generator that drives
// the same command path.
//
//	writer serve [--addr :8080] [--database-url URL]
//	writer load --events N --aggregates M --concurrency C [--rate R] [--products P]
//	writer version
//
// Flags fall back to environment variables (DATABASE_URL, WRITER_ADDR, ...);
// see `writer serve -h` and `writer load -h`.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/readside/readside/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "writer: "+cli.OneLine(err))
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root := &cobra.Command{
		Use:           "writer",
		Short:         "readside's reference writer: HTTP command and query API, load generator",
		Version:       cli.Version("writer"),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_ = cmd.Usage()
			return fmt.Errorf("no command given; usage: writer serve|load|version [flags] (writer -h for help)")
		},
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%s: %w (see %s -h)", cmd.CommandPath(), err, cmd.CommandPath())
	})
	root.AddCommand(serveCommand(), loadCommand(), &cobra.Command{
		Use:   "version",
		Short: "print the module version, VCS revision and Go version of this binary",
		Args:  cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), cli.Version("writer"))
			return nil
		},
	})
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root.ExecuteContext(ctx)
}
