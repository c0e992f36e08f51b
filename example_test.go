package readside_test

import (
	"context"
	"log"
	"os"
	"os/signal"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside"
	"github.com/readside/readside/projectors"
)

// A service that runs a fleet member for its own projection in its
// process, and replays it from the start on demand.
func ExampleNewClient() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	client, err := readside.NewClient(readside.Config{Pool: pool, Projections: []projectors.Projection{counter{}}})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := client.Migrate(ctx); err != nil { // schema readside and counter's table; idempotent
		log.Fatal(err)
	}
	if err := client.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer client.Stop(context.Background())

	job, err := client.Reset(ctx, "per_type", readside.ResetToStart())
	if err != nil {
		log.Fatal(err)
	}
	err = client.Wait(ctx, job, func(p readside.Progress) { log.Printf("%s: %d events to replay", p.Phase, p.Lag) })
	if err != nil {
		log.Fatal(err)
	}
}
