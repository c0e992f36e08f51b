// Command shippedperday is a user's own projector binary: one custom
// projection (orders shipped per day) next to a shipped one, with the whole
// operator surface of `projector` (run, status, reset, rebuild, pause,
// resume, dead-letters, migrate, version, completion) from projectorcli.
//
//	go build -o shippedperday ./examples/shippedperday
//	./shippedperday migrate && ./shippedperday run
//	./shippedperday reset shipped_per_day --wait
package main

import (
	"context"
	"os"

	"github.com/readside/readside/projectorcli"
	"github.com/readside/readside/projectors/ordersummary"
)

func main() {
	projectorcli.Main(context.Background(), os.Args, ShippedPerDay{}, ordersummary.New())
}
