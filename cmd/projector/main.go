// Command projector runs readside's projector fleet for the shipped
// projections and its operator subcommands. It is a main of projectorcli,
// as a user's own projector binary is; run `projector -h` for the list.
package main

import (
	"context"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/readside/readside/projectorcli"
	"github.com/readside/readside/projectors/shipped"
)

func main() {
	config().Main(context.Background(), os.Args[1:])
}

func config() projectorcli.Config {
	return projectorcli.Config{
		Name:        "projector",
		Projections: shipped.All(),
		Commands:    []*cobra.Command{demoCommand()},
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return config().Run(ctx, args, stdout, stderr)
}
