package aggregate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/backoff"
	"github.com/readside/readside/outbox"
)

// Result describes what Execute did.
type Result struct {
	// Version is the aggregate's version after the command.
	Version int
	// Append is what was appended; nil when the decision produced no events
	// (nothing was written).
	Append *outbox.AppendResult
	// Snapshot is true when a snapshot was written.
	Snapshot bool
	// Attempts is the number of transactions tried: 1 plus the number of
	// concurrency conflicts retried.
	Attempts int
}

// Cursor is the consistency token of the write: once a projection's
// checkpoint has passed it, the projection reflects this command. It is the
// zero Cursor when nothing was written.
func (r *Result) Cursor() outbox.Cursor {
	if r.Append == nil {
		return outbox.Cursor{}
	}
	return r.Append.Cursor()
}

// Execute runs one command on aggregate id of type P in one transaction:
// load (snapshot and newer events), decide, save. decide gets the current
// state and returns the new events, or an error (typically a domain error)
// that is returned as is; it must not change the state, and it may run more
// than once. No events means nothing to write.
//
// When the repository's db is a pool (a *pgxpool.Pool, or the schema's
// pool the writer binary builds), the transaction takes two round trips: BEGIN, the
// transaction's settings and the load travel in one pipeline, the append,
// the snapshot (when one is due) and the COMMIT in another. decide runs
// between them, with the transaction open. (A connection's first command
// sends its BEGIN alone, and a pool in pgx's describe_exec mode is used
// as other handles are: see pipeline.) Other handles take a round trip
// per statement.
//
// A concurrency conflict (another writer appended first) rolls back, waits a
// short jittered backoff and retries with a fresh load, up to
// Config.MaxConflictRetries times; then the error wraps
// outbox.ErrConcurrencyConflict. A transaction that holds the aggregate's
// next version without committing is not waited for beyond
// Config.LockTimeout: the error is then a *pgconn.PgError with SQLSTATE
// 55P03, not retried.
func Execute[S any, P StatePtr[S]](ctx context.Context, r *Repository, id string, meta outbox.Metadata, decide func(P) ([]domain.Event, error)) (*Result, error) {
	start := time.Now()
	aggType := P(new(S)).AggregateType()
	retries := max(r.cfg.MaxConflictRetries, 0)
	for attempt := 1; ; attempt++ {
		res, err := executeOnce(ctx, r, id, meta, decide)
		if err == nil {
			res.Attempts = attempt
			if res.Append != nil {
				r.metrics.appended(aggType, len(res.Append.Positions), time.Since(start))
			}
			return res, nil
		}
		if !errors.Is(err, outbox.ErrConcurrencyConflict) {
			return nil, err
		}
		r.metrics.conflict(aggType, err)
		if attempt > retries {
			return nil, fmt.Errorf("%s %s: gave up after %d attempts: %w", aggType, id, attempt, err)
		}
		if err := backoff.Sleep(ctx, backoff.Delay(attempt, r.cfg.RetryBackoff, r.cfg.MaxRetryBackoff)); err != nil {
			return nil, err
		}
	}
}

func executeOnce[S any, P StatePtr[S]](ctx context.Context, r *Repository, id string, meta outbox.Metadata, decide func(P) ([]domain.Event, error)) (*Result, error) {
	if r.acquire != nil {
		return pipeline(ctx, r, id, meta, decide)
	}
	var res *Result
	err := pgx.BeginTxFunc(ctx, r.db, r.begin, func(tx pgx.Tx) error {
		l, err := Load[S, P](ctx, tx, id)
		if err != nil {
			return err
		}
		events, err := decide(l.State)
		if err != nil {
			return err
		}
		res = &Result{Version: l.Version}
		if len(events) == 0 {
			return nil
		}
		saved, err := r.Save(ctx, tx, id, l.Version, l.State, meta, events)
		if err != nil {
			return err
		}
		res.Version, res.Append, res.Snapshot = saved.Version, saved.AppendResult, saved.Snapshot
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// warmKey marks, in a connection's CustomData, the load statement it has
// run (see pipeline). pgx may still evict it from its statement cache
// (an application running more distinct statements on the pool than the
// cache holds): its next parse then comes before the BEGIN again.
const warmKey = "readside/aggregate: load"

// pipeline is executeOnce on a pool's connection in two round trips
// rather than four: BEGIN, the settings and the load go in one pipeline,
// the append, the snapshot and the COMMIT in another. When the append
// fails, the server skips the COMMIT (a pipeline's statements after an
// error are not run) and the transaction is rolled back.
func pipeline[S any, P StatePtr[S]](ctx context.Context, r *Repository, id string, meta outbox.Metadata, decide func(P) ([]domain.Event, error)) (res *Result, err error) {
	c, err := r.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Release() // a connection left in a transaction is closed, not pooled
	defer func() {
		// Also after a panic in decide: the connection stays pooled.
		if !c.Conn().IsClosed() && c.Conn().PgConn().TxStatus() != 'I' {
			_, _ = c.Exec(ctx, "rollback")
		}
	}()

	aggType := P(new(S)).AggregateType()
	load := r.n.SQL(loadSQL)
	b := &pgx.Batch{}
	// pgx parses a statement new to the connection in a round trip of its
	// own before the pipeline, and parsing the load takes its tables'
	// locks: on a connection that has not run it, the transaction begins
	// first, so that the parse waits under lock_timeout rather than
	// without limit (behind a migration's ACCESS EXCLUSIVE lock, say).
	warm := c.Conn().PgConn().CustomData()[warmKey] == load
	if warm {
		b.Queue(beginSQL)
	} else if _, err := c.Exec(ctx, r.begin.BeginQuery); err != nil {
		return nil, fmt.Errorf("load %s %s: %w", aggType, id, err)
	}
	b.Queue(r.settings.sql, r.settings.args...)
	b.Queue(load, aggType, id, true)
	br := c.SendBatch(ctx, b)
	var l *Loaded[S, P]
	if warm {
		_, err = br.Exec()
	}
	if err == nil {
		if _, err = br.Exec(); err == nil {
			rows, qerr := br.Query()
			l, err = readLoaded[S, P](rows, qerr, id)
		}
	}
	if cerr := br.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("load %s %s: %w", aggType, id, cerr)
	}
	var se *snapshotError
	if err == nil || errors.As(err, &se) {
		c.Conn().PgConn().CustomData()[warmKey] = load
	}
	if errors.As(err, &se) && c.Conn().PgConn().TxStatus() == 'T' {
		// A snapshot this binary cannot read: replay, as Load does.
		rows, qerr := c.Query(ctx, load, aggType, id, false)
		l, err = readLoaded[S, P](rows, qerr, id)
	}
	if err != nil {
		return nil, err
	}

	events, err := decide(l.State)
	if err != nil {
		return nil, err
	}
	res = &Result{Version: l.Version}
	if len(events) == 0 {
		if _, err := c.Exec(ctx, "commit"); err != nil {
			return nil, err
		}
		return res, nil
	}
	sv, err := r.prepareSave(id, l.Version, l.State, meta, events)
	if err != nil {
		return nil, err
	}
	b = &pgx.Batch{}
	b.Queue(r.n.SQL(sv.append.SQL), sv.append.Args...)
	if sv.snapshot != nil {
		b.Queue(r.n.SQL(snapshotSQL), sv.snapshot...)
	}
	b.Queue("commit")
	br = c.SendBatch(ctx, b)
	res.Append, err = sv.append.Read(br.QueryRow())
	if err == nil && sv.snapshot != nil {
		if _, err = br.Exec(); err != nil {
			err = sv.snapshotError(err)
		}
		res.Snapshot = err == nil
	}
	if err == nil {
		var tag pgconn.CommandTag
		if tag, err = br.Exec(); err == nil && tag.String() == "ROLLBACK" {
			err = pgx.ErrTxCommitRollback
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	res.Version = res.Append.Version
	return res, nil
}
