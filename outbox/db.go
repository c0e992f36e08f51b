package outbox

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier runs queries; *pgxpool.Pool, *pgx.Conn and pgx.Tx all do. It and
// DB are readside's two shapes of database handle, defined once here, in
// the package every other one imports: code that reads takes a Querier,
// code that also writes outside a transaction it opens takes a DB, and code
// that opens transactions takes interface{ Begin(ctx) (pgx.Tx, error) },
// as pgx.BeginFunc does.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// DB is a Querier that also executes statements: *pgxpool.Pool, *pgx.Conn
// and pgx.Tx.
type DB interface {
	Querier
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}
