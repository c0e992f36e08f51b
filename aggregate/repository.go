package aggregate

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/outbox"
)

// Defaults for Config.
const (
	SnapshotEveryDefault      = 100
	MaxConflictRetriesDefault = 5
	RetryBackoffDefault       = 2 * time.Millisecond
	MaxRetryBackoffDefault    = 100 * time.Millisecond
	LockTimeoutDefault        = time.Second
	StatementTimeoutDefault   = 2 * time.Second
)

// Config configures a Repository.
type Config struct {
	// SnapshotEvery writes a snapshot whenever an append crosses a multiple
	// of this many versions (with 100: at version 100, 200, ...). 0 means
	// SnapshotEveryDefault; a negative value disables snapshots (Load then
	// replays every event, and existing snapshots are still used).
	SnapshotEvery int
	// MaxConflictRetries is how many times Execute reloads and retries after
	// outbox.ErrConcurrencyConflict before returning it. 0 means
	// MaxConflictRetriesDefault; a negative value means no retries.
	MaxConflictRetries int
	// RetryBackoff is the base wait before the first retry; it doubles per
	// retry up to MaxRetryBackoff and each wait is jittered uniformly in
	// [backoff/2, backoff] (backoff.Delay). 0 means RetryBackoffDefault.
	RetryBackoff time.Duration
	// MaxRetryBackoff caps the backoff. 0 means MaxRetryBackoffDefault.
	MaxRetryBackoff time.Duration
	// LockTimeout bounds each wait for a lock inside Execute's
	// transactions (PostgreSQL's lock_timeout, set transaction-local so that it
	// holds through PgBouncer): a command behind another transaction that
	// holds the aggregate's next version fails with SQLSTATE 55P03 instead
	// of waiting for it to end. 0 means LockTimeoutDefault; a negative value
	// leaves the session's setting. At most 2^31-1 ms (about 24.8 days).
	LockTimeout time.Duration
	// StatementTimeout bounds each statement of Execute's transactions
	// (statement_timeout, transaction-local; SQLSTATE 57014 when it fires). 0 means
	// StatementTimeoutDefault; a negative value leaves the session's
	// setting. At most 2^31-1 ms (about 24.8 days).
	StatementTimeout time.Duration
	// Registerer receives the writer metrics
	// (readside_writer_appends_total, readside_writer_events_total,
	// readside_writer_conflicts_total, readside_writer_append_duration_seconds).
	// nil means no metrics.
	Registerer prometheus.Registerer
	// Schema is readside's schema. "" means "readside".
	Schema string
}

func (c *Config) setDefaults() {
	c.SnapshotEvery = cmp.Or(c.SnapshotEvery, SnapshotEveryDefault)
	c.MaxConflictRetries = cmp.Or(c.MaxConflictRetries, MaxConflictRetriesDefault)
	c.RetryBackoff = cmp.Or(c.RetryBackoff, RetryBackoffDefault)
	c.MaxRetryBackoff = cmp.Or(c.MaxRetryBackoff, MaxRetryBackoffDefault)
	c.LockTimeout = cmp.Or(c.LockTimeout, LockTimeoutDefault)
	c.StatementTimeout = cmp.Or(c.StatementTimeout, StatementTimeoutDefault)
}

func (c *Config) validate() error {
	switch {
	case c.RetryBackoff < 0:
		return fmt.Errorf("aggregate: RetryBackoff %v is negative", c.RetryBackoff)
	case c.MaxRetryBackoff < c.RetryBackoff:
		return fmt.Errorf("aggregate: MaxRetryBackoff %v is below RetryBackoff %v", c.MaxRetryBackoff, c.RetryBackoff)
	case c.LockTimeout > dbschema.MaxTimeout || c.StatementTimeout > dbschema.MaxTimeout:
		// PostgreSQL would refuse the setting, and every command with it.
		return fmt.Errorf("aggregate: LockTimeout %v and StatementTimeout %v must be at most %v, PostgreSQL's longest", c.LockTimeout, c.StatementTimeout, dbschema.MaxTimeout)
	}
	return nil
}

// DB is what the repository needs from a pool (a *pgxpool.Pool).
type DB interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// inSchema begins transactions whose statements run in n, with
// readside's search_path pinned (dbschema).
type inSchema struct {
	db DB
	n  dbschema.Name
}

func (s inSchema) BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error) {
	tx, err := s.db.BeginTx(ctx, opts)
	return s.n.Tx(tx), err
}

// Querier is what Load needs: a transaction, a connection or a pool.
type Querier = outbox.Querier

// Repository loads and saves aggregates. It is safe for concurrent use.
type Repository struct {
	db      DB
	cfg     Config
	begin   pgx.TxOptions
	metrics *metrics
	n       dbschema.Name

	// acquire is the pool's Acquire when db is one (*pgxpool.Pool or
	// *dbschema.Pool): Execute then pipelines its statements (pipeline).
	acquire  func(context.Context) (*pgxpool.Conn, error)
	settings settings
}

// settings is a statement and its arguments (a pgx.QueuedQuery is the
// batch's own: pgx writes to it).
type settings struct {
	sql  string
	args []any
}

// New returns a repository on db.
func New(db DB, cfg Config) (*Repository, error) {
	if db == nil {
		return nil, errors.New("aggregate: db is nil")
	}
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	n, err := dbschema.Parse(cfg.Schema)
	if err != nil {
		return nil, fmt.Errorf("aggregate: %w", err)
	}
	var pool *pgxpool.Pool
	switch p := db.(type) {
	case *dbschema.Pool:
		n, pool = p.Schema(), p.Pool
	case *pgxpool.Pool:
		pool = p
		db = inSchema{db, n} // its statements pin readside's search_path
	default:
		db = inSchema{db, n}
	}
	var acquire func(context.Context) (*pgxpool.Conn, error)
	if pool != nil && pool.Config().ConnConfig.DefaultQueryExecMode != pgx.QueryExecModeDescribeExec {
		// describe_exec describes every statement in a round trip of its
		// own before a pipeline, outside its transaction: the load would
		// wait for its tables' locks without limit.
		acquire = pool.Acquire
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Repository{db: db, cfg: cfg, begin: beginOptions(cfg), metrics: m, n: n,
		acquire: acquire, settings: settingsQuery(cfg, n)}, nil
}

// settingsQuery is what beginOptions sets in its BEGIN, as one statement
// for a pipeline (which takes one statement per query): readside's
// search_path and the timeouts, transaction-local.
func settingsQuery(cfg Config, n dbschema.Name) settings {
	sql := "SELECT pg_catalog.set_config('search_path', $1, true)"
	args := []any{n.StrictPath()}
	for _, t := range timeouts(cfg) {
		args = append(args, strconv.FormatInt(t.ms, 10))
		sql += fmt.Sprintf(", pg_catalog.set_config('%s', $%d, true)", t.name, len(args))
	}
	return settings{sql, args}
}

const beginSQL = "BEGIN ISOLATION LEVEL READ COMMITTED"

// beginOptions opens Execute's transactions: the isolation level and the
// timeouts chosen rather than inherited from the session, in the BEGIN's
// round trip (a simple-protocol query of several statements).
func beginOptions(cfg Config) pgx.TxOptions {
	q := beginSQL
	for _, t := range timeouts(cfg) {
		q += fmt.Sprintf("; SET LOCAL %s = %d", t.name, t.ms)
	}
	return pgx.TxOptions{BeginQuery: q}
}

// timeout is a setting Execute's transactions choose, in milliseconds.
type timeout struct {
	name string
	ms   int64
}

// timeouts are those of the configured timeouts that are positive.
func timeouts(cfg Config) []timeout {
	var out []timeout
	for _, t := range []struct {
		name string
		d    time.Duration
	}{{"lock_timeout", cfg.LockTimeout}, {"statement_timeout", cfg.StatementTimeout}} {
		if t.d > 0 {
			out = append(out, timeout{t.name, max(t.d.Milliseconds(), 1)})
		}
	}
	return out
}

// StatePtr constrains a type parameter to *S where *S is a domain.State
// (for example *domain.Order).
type StatePtr[S any] interface {
	*S
	domain.State
}

// Loaded is an aggregate as Load rebuilt it.
type Loaded[S any, P StatePtr[S]] struct {
	ID    string
	State P
	// Version is the version of the last event applied; 0 means the
	// aggregate has no events.
	Version int
	// SnapshotVersion is the version of the snapshot Load started from; 0
	// means a full replay.
	SnapshotVersion int
}

// loadSQL reads the latest snapshot and the events after it in one
// statement, so both come from the same database snapshot even outside a
// repeatable-read transaction. A snapshot at a version the log does not
// hold is passed over (migration 013 refuses writing one; one written
// before, or by the owner, must not stop the aggregate).
const loadSQL = `
WITH s AS (
    SELECT s.version, s.state FROM readside.snapshots s
     WHERE s.aggregate_type = $1 AND s.aggregate_id = $2 AND $3
       AND EXISTS (SELECT 1 FROM readside.events e
                    WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.version = s.version)
     ORDER BY s.version DESC LIMIT 1)
SELECT true, version, '', 0, state FROM s
UNION ALL
SELECT false, e.version, e.event_type, e.schema_version, e.event_data
  FROM readside.events e
 WHERE e.aggregate_type = $1 AND e.aggregate_id = $2
   AND e.version > coalesce((SELECT version FROM s), 0)
ORDER BY 1 DESC, 2`

// Load rebuilds aggregate id of type P from its latest snapshot and newer
// events. An aggregate without events loads as the zero state at version 0
// (the domain decides whether that is "not found").
func Load[S any, P StatePtr[S]](ctx context.Context, q Querier, id string) (*Loaded[S, P], error) {
	l, err := load[S, P](ctx, q, id, true)
	var se *snapshotError
	if errors.As(err, &se) {
		// A snapshot this binary cannot read (the state's shape changed) is
		// only a cache: replay from the first event instead.
		return load[S, P](ctx, q, id, false)
	}
	return l, err
}

type snapshotError struct{ err error }

func (e *snapshotError) Error() string { return e.err.Error() }

func load[S any, P StatePtr[S]](ctx context.Context, q Querier, id string, useSnapshot bool) (*Loaded[S, P], error) {
	rows, err := q.Query(ctx, loadSQL, P(new(S)).AggregateType(), id, useSnapshot)
	return readLoaded[S, P](rows, err, id)
}

// readLoaded rebuilds aggregate id from loadSQL's rows (err is the
// query's).
func readLoaded[S any, P StatePtr[S]](rows pgx.Rows, err error, id string) (*Loaded[S, P], error) {
	l := &Loaded[S, P]{ID: id, State: P(new(S))}
	aggType := l.State.AggregateType()
	if err != nil {
		return nil, fmt.Errorf("load %s %s: %w", aggType, id, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			isSnapshot    bool
			version       int
			eventType     string
			schemaVersion int
			data          []byte
		)
		if err := rows.Scan(&isSnapshot, &version, &eventType, &schemaVersion, &data); err != nil {
			return nil, fmt.Errorf("load %s %s: %w", aggType, id, err)
		}
		if isSnapshot {
			if err := json.Unmarshal(data, l.State); err != nil {
				return nil, &snapshotError{fmt.Errorf("load %s %s: snapshot at version %d: %w", aggType, id, version, err)}
			}
			l.Version, l.SnapshotVersion = version, version
			continue
		}
		if version != l.Version+1 {
			return nil, fmt.Errorf("load %s %s: version %d follows %d", aggType, id, version, l.Version)
		}
		ev, err := domain.Decode(eventType, schemaVersion, data)
		if err != nil {
			return nil, fmt.Errorf("load %s %s: version %d: %w", aggType, id, version, err)
		}
		e, ok := ev.(domain.Event)
		if !ok {
			return nil, fmt.Errorf("load %s %s: version %d: %T is not a domain.Event", aggType, id, version, ev)
		}
		if err := l.State.Apply(e); err != nil {
			return nil, fmt.Errorf("load %s %s: version %d: %w", aggType, id, version, err)
		}
		l.Version = version
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load %s %s: %w", aggType, id, err)
	}
	return l, nil
}
