package projectors

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// lazyTx is the apply transaction handed to a projection whose batch may
// need no answer before its COMMIT (Batch.Queue): nothing is sent until
// the projection's code first uses it. Then begin sends the BEGIN with the
// checkpoint's advance (which fails when fenced) and the projection's
// search_path, and every call goes to that transaction. When the
// projection never uses it, the runtime sends the BEGIN, the advance, what
// was queued and the COMMIT in one pipeline (Worker.commitQueued).
type lazyTx struct {
	ctx   context.Context // Apply's, for Conn
	begin func(ctx context.Context) (pgx.Tx, error)
	tx    pgx.Tx     // the projection's handle on the begun transaction
	err   error      // begin's
	queue *pgx.Batch // what Apply queued, when it did not begin
}

// begun reports whether the projection's code used the transaction.
func (t *lazyTx) begun() bool { return t.tx != nil || t.err != nil }

func (t *lazyTx) ensure(ctx context.Context) error {
	if !t.begun() {
		t.tx, t.err = t.begin(ctx)
	}
	return t.err
}

func (t *lazyTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := t.ensure(ctx); err != nil {
		return nil, err
	}
	return t.tx.Begin(ctx)
}

// Commit and Rollback are the runtime's: a projection's code does not end
// the transaction it was handed.
func (t *lazyTx) Commit(ctx context.Context) error {
	if err := t.ensure(ctx); err != nil {
		return err
	}
	return t.tx.Commit(ctx)
}

func (t *lazyTx) Rollback(ctx context.Context) error {
	if t.tx == nil {
		return pgx.ErrTxClosed
	}
	return t.tx.Rollback(ctx)
}

func (t *lazyTx) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.ensure(ctx); err != nil {
		return 0, err
	}
	return t.tx.CopyFrom(ctx, table, cols, src)
}

func (t *lazyTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := t.ensure(ctx); err != nil {
		return errResults{err}
	}
	return t.tx.SendBatch(ctx, b)
}

func (t *lazyTx) LargeObjects() pgx.LargeObjects {
	if err := t.ensure(t.ctx); err != nil {
		return pgx.LargeObjects{}
	}
	return t.tx.LargeObjects()
}

func (t *lazyTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := t.ensure(ctx); err != nil {
		return nil, err
	}
	return t.tx.Prepare(ctx, name, sql)
}

func (t *lazyTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := t.ensure(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return t.tx.Exec(ctx, sql, args...)
}

func (t *lazyTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := t.ensure(ctx); err != nil {
		return nil, err
	}
	return t.tx.Query(ctx, sql, args...)
}

func (t *lazyTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := t.ensure(ctx); err != nil {
		return errRow{err}
	}
	return t.tx.QueryRow(ctx, sql, args...)
}

// Conn is the transaction's connection, once begun: statements sent on it
// directly run inside the transaction.
func (t *lazyTx) Conn() *pgx.Conn {
	if err := t.ensure(t.ctx); err != nil {
		return nil
	}
	return t.tx.Conn()
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type errResults struct{ err error }

func (r errResults) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, r.err }
func (r errResults) Query() (pgx.Rows, error)         { return nil, r.err }
func (r errResults) QueryRow() pgx.Row                { return errRow(r) }
func (r errResults) Close() error                     { return r.err }
func (r errResults) Tx() pgx.Tx                       { return nil }

// apply calls p.Apply with t. A projection's code that uses t after its
// BEGIN failed gets that error from every call but Conn and LargeObjects,
// which have none to give: a panic from their nil results is the BEGIN's
// error, as on the ordinary path, where Apply is not called at all.
func (t *lazyTx) apply(ctx context.Context, p Projection, b *Batch) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if t.err == nil {
				panic(r)
			}
			err = t.err
		}
	}()
	return p.Apply(ctx, t, b)
}
