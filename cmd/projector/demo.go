package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/readside/readside"
	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/internal/loadgen"
	"github.com/readside/readside/internal/pgtemp"
	"github.com/readside/readside/projectors/orderstatistics"
	"github.com/readside/readside/projectors/shipped"
)

// demoCommand shows the whole pipeline: a writer load, a projector fleet
// catching up, then the read models. Without DATABASE_URL it runs on a
// disposable cluster that it removes afterwards. It stays in this main: it
// drives the shipped domain.
func demoCommand() *cobra.Command {
	var url string
	var events, workers int
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "the whole pipeline on a disposable PostgreSQL (or $DATABASE_URL)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDemo(cmd.Context(), url, events, workers, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := cli.NewFlags(cmd)
	fs.DatabaseURL(&url, "", "PostgreSQL URL; empty starts a disposable cluster")
	fs.Int(&events, "events", "DEMO_EVENTS", 20000, "events the writer load appends")
	fs.Int(&workers, "workers", "DEMO_WORKERS", 3, "projector workers in the fleet")
	return cmd
}

func runDemo(ctx context.Context, url string, events, workers int, stdout, stderr io.Writer) error {
	if events < 1 || workers < 1 {
		return errors.New("demo: --events and --workers must be at least 1")
	}
	stdout = &lockedWriter{w: stdout} // the load reports from its own goroutine
	if url == "" {
		c, err := startCluster(ctx, stdout)
		if err != nil {
			return err
		}
		defer func() {
			if err := c.Stop(); err != nil {
				fmt.Fprintf(stderr, "demo: stopping the disposable cluster: %v\n", err)
			}
		}()
		url = c.URL
	}
	pool, err := cli.Connect(ctx, url, 8*workers+16)
	if err != nil {
		return err
	}
	defer pool.Close()
	fleet, err := newFleet(pool, workers, stderr)
	if err != nil {
		return err
	}
	res, err := fleet[0].Migrate(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "demo: schema %s at version %d\n", fleet[0].Schema(), res.Version)

	stopFleet, err := startFleet(ctx, fleet)
	defer stopFleet()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "demo: %d projector workers running %s\n", workers, strings.Join(shippedNames(), ", "))
	if err := loadUntilCaughtUp(ctx, pool, fleet[0], events, stdout); err != nil {
		return err
	}
	return printReadModels(ctx, pool, stdout)
}

// startCluster starts the disposable PostgreSQL the demo runs on without
// DATABASE_URL; the caller stops it.
func startCluster(ctx context.Context, stdout io.Writer) (*pgtemp.Cluster, error) {
	fmt.Fprintln(stdout, "demo: DATABASE_URL is not set: starting a disposable PostgreSQL (initdb + pg_ctl)...")
	c, err := pgtemp.Start(ctx)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintf(stdout, "demo: disposable cluster in %s\n", c.Dir())
	return c, nil
}

// newFleet builds several fleet members in this process, as separate
// processes would be, sharing the segments by lease.
func newFleet(pool *pgxpool.Pool, workers int, stderr io.Writer) ([]*readside.Client, error) {
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var fleet []*readside.Client
	for i := range workers {
		c, err := readside.NewClient(readside.Config{Pool: pool, Projections: shipped.All(), WorkerID: fmt.Sprintf("demo-%d", i+1),
			PollInterval: 200 * time.Millisecond, LeaseTTL: 3 * time.Second, Logger: logger})
		if err != nil {
			return nil, err
		}
		fleet = append(fleet, c)
	}
	return fleet, nil
}

// startFleet starts the members; stop stops those started, also when err
// is not nil.
func startFleet(ctx context.Context, fleet []*readside.Client) (stop func(), err error) {
	var started []*readside.Client
	stop = func() {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, c := range started {
			_ = c.Stop(stopCtx)
		}
	}
	for _, c := range fleet {
		if err := c.Start(ctx); err != nil {
			return stop, err
		}
		started = append(started, c)
	}
	return stop, nil
}

// loadUntilCaughtUp runs the writer load and reports the fleet's lag every
// second until the load is done and every projection has caught up.
func loadUntilCaughtUp(ctx context.Context, pool *pgxpool.Pool, client *readside.Client, events int, stdout io.Writer) error {
	repo, err := aggregate.New(pool, aggregate.Config{})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "demo: writer load of %d events (order life cycles over 200 orders in flight, 8 writers)\n", events)
	loadDone := make(chan error, 1)
	go func() {
		loadDone <- loadgen.Run(ctx, repo, loadgen.Config{Events: events, Aggregates: 200, Concurrency: 8, Progress: time.Hour}, stdout)
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start := time.Now()
	loading := true
	for {
		select {
		case <-ctx.Done():
			if loading {
				<-loadDone
			}
			return ctx.Err()
		case err := <-loadDone:
			if err != nil {
				return err
			}
			loading = false
		case <-tick.C:
		}
		lag, line, err := progress(ctx, pool, client)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "demo: %5.1fs  %s\n", time.Since(start).Seconds(), line)
		if !loading && lag == 0 {
			break
		}
	}
	fmt.Fprintf(stdout, "demo: every projection caught up after %.1fs\n\n", time.Since(start).Seconds())
	return nil
}

// progress sums the lag of each projection (max over its segments).
func progress(ctx context.Context, pool *pgxpool.Pool, client *readside.Client) (int64, string, error) {
	r, err := client.Status(ctx)
	if err != nil {
		return 0, "", err
	}
	segs := r.Segments
	var events int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM readside.events`).Scan(&events); err != nil {
		return 0, "", err
	}
	lag := map[string]int64{}
	var order []string
	var total int64
	for _, s := range segs {
		if _, ok := lag[s.Projection]; !ok {
			order = append(order, s.Projection)
		}
		lag[s.Projection] = max(lag[s.Projection], s.LagEvents)
		total += s.LagEvents
	}
	parts := []string{fmt.Sprintf("events written %d", events)}
	for _, p := range order {
		parts = append(parts, fmt.Sprintf("%s lag %d", p, lag[p]))
	}
	return total, strings.Join(parts, " | "), nil
}

// printReadModels shows what the fleet built and checks order_statistics
// against the events table.
func printReadModels(ctx context.Context, pool *pgxpool.Pool, w io.Writer) error {
	if err := printStatistics(ctx, pool, w); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if err := printRecentOrders(ctx, pool, w); err != nil {
		return err
	}
	var products, orders, shippedN int64
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM readside.products WHERE NOT deleted), (SELECT count(*) FROM readside.order_summary),
		(SELECT count(*) FROM readside.order_summary WHERE status = 'shipped')`).Scan(&products, &orders, &shippedN); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%d products in the catalog, %d orders, %d shipped\n", products, orders, shippedN)

	bad, err := orderstatistics.Mismatches(ctx, pool)
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("order_statistics differs from the events table (exactly-once broken): %s", strings.Join(bad, "; "))
	}
	fmt.Fprintln(w, "order_statistics equals an aggregation over the events table: every event applied exactly once")
	fmt.Fprintln(w, "\nnext: `projector status` shows checkpoints and lag; see README for the HTTP API and operations")
	return nil
}

func printStatistics(ctx context.Context, pool *pgxpool.Pool, w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ORDER STATISTICS\tORDERS\tREVENUE\tAVERAGE")
	rows, err := pool.Query(ctx, `SELECT status, order_count, total_revenue::text, coalesce(average_order_value::text, '-')
		FROM readside.order_statistics ORDER BY array_position(ARRAY['pending','confirmed','shipped','cancelled'], status)`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var status, rev, avg string
		var n int64
		if err := rows.Scan(&status, &n, &rev, &avg); err != nil {
			return err
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", status, n, rev, avg)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	tw.Flush()
	return nil
}

func printRecentOrders(ctx context.Context, pool *pgxpool.Pool, w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RECENT ORDERS\tCUSTOMER\tSTATUS\tTOTAL\tITEMS")
	rows, err := pool.Query(ctx, `SELECT s.order_id, s.customer_name, s.status, s.total_amount::text,
		(SELECT string_agg(i.quantity || ' x ' || i.product_name, ', ' ORDER BY i.line_no) FROM readside.order_items i WHERE i.order_id = s.order_id)
		FROM readside.order_summary s ORDER BY s.placed_at DESC, s.order_id DESC LIMIT 5`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var id, customer, status, total string
		var items *string
		if err := rows.Scan(&id, &customer, &status, &total, &items); err != nil {
			return err
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", id[:8], customer, status, total, deref(items))
	}
	if err := rows.Err(); err != nil {
		return err
	}
	tw.Flush()
	return nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// lockedWriter serialises writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func shippedNames() []string {
	var out []string
	for _, p := range shipped.All() {
		out = append(out, p.Spec().Name)
	}
	return out
}
