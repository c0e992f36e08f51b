package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/outbox"
)

// Append inside your own transaction, next to your other writes; retry the
// whole transaction on a concurrency conflict.
func ExampleAppend() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	var res *outbox.AppendResult
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var err error
		res, err = outbox.Append(ctx, tx, outbox.Aggregate{Type: "Order", ID: "o-1"}, 0, []outbox.NewEvent{{
			Type:     "OrderPlaced",
			Data:     []byte(`{"order_id":"o-1","customer_name":"Aiko Tanaka","items":[],"total_amount":0}`),
			Metadata: outbox.Metadata{CorrelationID: "req-42"},
		}})
		return err
	})
	if errors.Is(err, outbox.ErrConcurrencyConflict) {
		return // reload the aggregate and decide again
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("version", res.Version, "token", res.Cursor())
}
