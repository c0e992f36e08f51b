package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/migrations"
)

func runMigrate(ctx context.Context, args []string, stdout io.Writer) error {
	var url string
	fs := cli.NewFlagSet("projector migrate")
	fs.String(&url, "database-url", "DATABASE_URL", cli.DatabaseURLDefault, "PostgreSQL URL")
	if err := fs.Parse(args, stdout, 0); err != nil {
		return err
	}
	pool, err := cli.Connect(ctx, url, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	res, err := migrations.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	for _, m := range res.Applied {
		fmt.Fprintf(stdout, "applied %03d_%s\n", m.Version, m.Name)
	}
	if len(res.River) > 0 {
		fmt.Fprintf(stdout, "applied River migrations %v\n", res.River)
	}
	fmt.Fprintf(stdout, "schema at version %d\n", res.Version)
	return nil
}
