// Command embedded is a user's own service that embeds a readside fleet
// member in its process, through readside.Client, instead of running the
// projector binary beside it: it keeps a projection of its own (the money
// each customer has ordered) up to date, serves it over HTTP, and replays
// it on demand with reset-and-wait.
//
//	DATABASE_URL=postgres://... go run ./examples/embedded
//	curl localhost:8090/customers/Aiko%20Tanaka
//	curl -X POST localhost:8090/admin/replay     # reset to the start and wait until replayed
//
// Run as many copies as you like: they share the projection's segments by
// lease, as projector processes do. SIGTERM stops it softly.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside"
	"github.com/readside/readside/projectors"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Getenv("DATABASE_URL"), envOr("ADDR", ":8090"), slog.New(slog.NewTextHandler(os.Stderr, nil)))
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "embedded:", err)
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context, url, addr string, log *slog.Logger) error {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	client, err := readside.NewClient(readside.Config{
		Pool:        pool,
		Schema:      os.Getenv("READSIDE_SCHEMA"), // "" is readside's default
		Projections: []projectors.Projection{CustomerTotals{}},
		Logger:      log,
	})
	if err != nil {
		return err
	}
	// Idempotent and safe from every copy at once: readside's schema, then
	// the projection's table (CustomerTotals.Schema).
	if _, err := client.Migrate(ctx); err != nil {
		return err
	}
	if err := client.Start(ctx); err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := client.Stop(stopCtx); err != nil {
			log.Error("stopping the fleet member", "err", err)
		}
	}()

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	log.Info("serving", "addr", ln.Addr().String(), "worker", client.WorkerID())
	srv := &http.Server{Handler: routes(client, pool, log), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err := <-served:
		return err
	case <-client.Stopped():
		return errors.New("the fleet member stopped")
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}

func routes(client *readside.Client, pool *pgxpool.Pool, log *slog.Logger) *http.ServeMux {
	mux := http.NewServeMux()
	// The projection's table is in readside's schema (Schema creates it
	// there).
	query := `SELECT total::text, orders FROM ` + pgx.Identifier{client.Schema(), "customer_totals"}.Sanitize() + ` WHERE customer = $1`
	mux.HandleFunc("GET /customers/{name}", func(w http.ResponseWriter, r *http.Request) {
		var total string
		var orders int64
		err := pool.QueryRow(r.Context(), query, r.PathValue("name")).Scan(&total, &orders)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			http.Error(w, "no such customer", http.StatusNotFound)
		case err != nil:
			log.Error("query", "err", err)
			http.Error(w, "database error", http.StatusInternalServerError)
		default:
			writeJSON(w, http.StatusOK, map[string]any{"customer": r.PathValue("name"), "orders": orders, "total": total})
		}
	})
	// Replay the projection from the first event and answer once it has
	// caught up again: the reset is a job that any member of the fleet
	// executes, and Wait follows it and the replay.
	mux.HandleFunc("POST /admin/replay", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
		defer cancel()
		job, err := client.Reset(ctx, CustomerTotalsName, readside.ResetToStart())
		if err == nil {
			err = client.Wait(ctx, job, nil)
		}
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"replayed": CustomerTotalsName, "job": job.ID})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
