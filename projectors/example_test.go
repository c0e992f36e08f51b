package projectors_test

import (
	"context"
	"log"
	"os"
	"os/signal"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/projectors"
)

// shippedPerDay counts shipped orders per day: a user's projection.
type shippedPerDay struct{}

func (shippedPerDay) Spec() projectors.Spec {
	return projectors.Spec{
		Name:       "shipped_per_day",
		EventTypes: []string{"OrderShipped"},
		Segments:   4,
		Tables:     []string{"shipped_per_day"},
	}
}

func (shippedPerDay) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	days := make([]string, len(b.Events))
	for i, e := range b.Events {
		days[i] = e.OccurredAt.Format("2006-01-02")
	}
	// One set-based statement per batch. A counter like this one is right
	// because the runtime commits it with the checkpoint, exactly once.
	_, err := tx.Exec(ctx, `INSERT INTO shipped_per_day (day, n)
		SELECT d::date, count(*) FROM unnest($1::text[]) d GROUP BY d
		ON CONFLICT (day) DO UPDATE SET n = shipped_per_day.n + excluded.n`, days)
	return err
}

func (shippedPerDay) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `TRUNCATE shipped_per_day`)
	return err
}

// A fleet member: run as many as you like, on any hosts; they share the
// segments by lease.
func ExampleNewWorker() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	w, err := projectors.NewWorker(projectors.Config{Pool: pool, Projections: []projectors.Projection{shippedPerDay{}}})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.Start(ctx); err != nil {
		log.Fatal(err) // unreachable database, unmigrated schema, xid regression
	}
	<-ctx.Done()
	if err := w.Stop(context.Background()); err != nil { // finishes batches in flight, releases leases
		log.Fatal(err)
	}
}
