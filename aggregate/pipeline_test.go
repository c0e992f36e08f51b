package aggregate_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/migrations"
	"github.com/readside/readside/outbox"
)

// roundTrips is a pgx tracer that records what a connection sent: a
// statement on its own, or a batch (one pipeline, one round trip) with
// the first lines of its statements.
type roundTrips struct {
	mu   sync.Mutex
	sent []string
}

func (r *roundTrips) add(s string) {
	r.mu.Lock()
	r.sent = append(r.sent, s)
	r.mu.Unlock()
}

func (r *roundTrips) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sent
	r.sent = nil
	return s
}

func firstWord(sql string) string {
	f := strings.Fields(sql)
	if len(f) == 0 {
		return ""
	}
	return strings.ToUpper(f[0])
}

func (r *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	r.add(firstWord(d.SQL))
	return ctx
}
func (r *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

type batchKey struct{}

func (r *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	var words []string
	for _, q := range d.Batch.QueuedQueries {
		words = append(words, firstWord(q.SQL))
	}
	r.add("batch " + strings.Join(words, " "))
	return context.WithValue(ctx, batchKey{}, true)
}
func (r *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (r *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// tracedPool is a pool of one connection (so that the connection looked
// at after a command is the one the command used) whose sends rt records.
func tracedPool(t *testing.T, rt *roundTrips) (*pgxpool.Pool, string) {
	t.Helper()
	url := pgtest.NewDatabaseURL(t)
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.MaxConns = 1
	cfg.ConnConfig.Tracer = rt
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool, url
}

// txStatus is the pool's one connection's transaction status: 'I' when
// it is idle outside a transaction.
func txStatus(t *testing.T, pool *pgxpool.Pool) byte {
	t.Helper()
	c, err := pool.Acquire(context.Background())
	require.NoError(t, err)
	defer c.Release()
	return c.Conn().PgConn().TxStatus()
}

// On a pool, a command takes two round trips: BEGIN, its settings and the
// load in one pipeline, the append and the COMMIT in the other (with the
// snapshot between them when one is due). When the decision refuses or
// the append fails, the connection goes back to its pool outside any
// transaction, and the next command on it works (a cancelled context
// closes it instead, as pgx does).
func TestExecutePipelinesOnAPool(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rt := &roundTrips{}
	pool, url := tracedPool(t, rt)
	repo := newRepo(t, pool, aggregate.Config{SnapshotEvery: 2})
	// Prepared statements are described in a round trip of their own the
	// first time a connection sends them: warm the connection up.
	place := func(id string) func(o *domain.Order) ([]domain.Event, error) {
		return func(o *domain.Order) ([]domain.Event, error) {
			return o.Place(domain.PlaceOrder{OrderID: id, CustomerName: "Alice",
				Items: []domain.OrderItem{{ProductName: "W", Quantity: 1, UnitPrice: 100}}}, now)
		}
	}
	confirm := func(o *domain.Order) ([]domain.Event, error) {
		return o.Confirm(domain.ConfirmOrder{OrderID: o.ID}, now)
	}
	// On a new connection the BEGIN goes first, on its own (see
	// TestTimeoutsBoundTheFirstLoad).
	_, err := aggregate.Execute(ctx, repo, "warm", outbox.Metadata{}, place("warm"))
	require.NoError(t, err)
	require.Equal(t, []string{"BEGIN", "batch SELECT WITH", "batch INSERT COMMIT"}, rt.take())
	_, err = aggregate.Execute(ctx, repo, "warm", outbox.Metadata{}, confirm)
	require.NoError(t, err)
	rt.take()

	res, err := aggregate.Execute(ctx, repo, "o-1", outbox.Metadata{}, place("o-1"))
	require.NoError(t, err)
	require.Equal(t, 1, res.Version)
	require.False(t, res.Snapshot)
	require.Equal(t, []string{"batch BEGIN SELECT WITH", "batch INSERT COMMIT"}, rt.take())

	res, err = aggregate.Execute(ctx, repo, "o-1", outbox.Metadata{}, confirm)
	require.NoError(t, err)
	require.True(t, res.Snapshot, "version 2 crosses SnapshotEvery")
	require.Equal(t, []string{"batch BEGIN SELECT WITH", "batch INSERT WITH COMMIT"}, rt.take())
	var committed int
	require.NoError(t, pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM readside.events WHERE aggregate_id = 'o-1')
		+ (SELECT count(*) FROM readside.snapshots WHERE aggregate_id = 'o-1' AND version = 2)`).Scan(&committed))
	require.Equal(t, 3, committed, "both events and the snapshot committed")
	rt.take()

	// The decision refuses: rolled back, nothing written.
	_, err = aggregate.Execute(ctx, repo, "o-1", outbox.Metadata{}, confirm)
	require.ErrorIs(t, err, domain.ErrInvalidTransition)
	require.Equal(t, []string{"batch BEGIN SELECT WITH", "ROLLBACK"}, rt.take())
	require.Equal(t, byte('I'), txStatus(t, pool))
	rt.take()

	// No events: the transaction ends at once.
	res, err = aggregate.Execute(ctx, repo, "o-1", outbox.Metadata{}, func(*domain.Order) ([]domain.Event, error) { return nil, nil })
	require.NoError(t, err)
	require.Nil(t, res.Append)
	require.Equal(t, 2, res.Version)
	require.Equal(t, []string{"batch BEGIN SELECT WITH", "COMMIT"}, rt.take())

	// The append fails: another writer took the version while the
	// decision ran. The server skips the COMMIT behind the append, the
	// transaction is rolled back, and the error is the conflict.
	other := newRepo(t, pgtest.Pool(t, url), aggregate.Config{})
	_, err = aggregate.Execute(ctx, other, "p-1", outbox.Metadata{}, func(p *domain.Product) ([]domain.Event, error) {
		return p.Create(domain.CreateProduct{ProductID: "p-1", Name: "W", Price: 100}, now)
	})
	require.NoError(t, err)
	rt.take()
	once := newRepo(t, pool, aggregate.Config{MaxConflictRetries: -1})
	_, err = aggregate.Execute(ctx, once, "p-1", outbox.Metadata{}, func(p *domain.Product) ([]domain.Event, error) {
		_, err := aggregate.Execute(ctx, other, "p-1", outbox.Metadata{}, func(p *domain.Product) ([]domain.Event, error) {
			return p.UpdatePrice(domain.UpdatePrice{ProductID: "p-1", NewPrice: 200}, now)
		})
		require.NoError(t, err)
		return p.UpdatePrice(domain.UpdatePrice{ProductID: "p-1", NewPrice: 300}, now)
	})
	require.ErrorIs(t, err, outbox.ErrConcurrencyConflict)
	require.Equal(t, []string{"batch BEGIN SELECT WITH", "batch INSERT COMMIT", "ROLLBACK"}, rt.take())
	require.Equal(t, byte('I'), txStatus(t, pool))
	l, err := aggregate.Load[domain.Product](ctx, pool, "p-1")
	require.NoError(t, err)
	require.Equal(t, 2, l.Version)
	require.Equal(t, domain.Money(200), l.State.Price, "the other writer's price, not the refused one")
	rt.take()

	// A snapshot this binary cannot read: the load replays in the same
	// transaction, and the command goes through.
	insertV1Product(t, pool, "p-2")
	_, err = pool.Exec(ctx, `INSERT INTO readside.snapshots (aggregate_type, aggregate_id, version, state) VALUES ('Product', 'p-2', 1, '{"price": "not money"}')`)
	require.NoError(t, err)
	rt.take()
	res, err = aggregate.Execute(ctx, repo, "p-2", outbox.Metadata{}, func(p *domain.Product) ([]domain.Event, error) {
		return p.UpdatePrice(domain.UpdatePrice{ProductID: "p-2", NewPrice: 300}, now)
	})
	require.NoError(t, err)
	require.Equal(t, 2, res.Version)
	require.Equal(t, []string{"batch BEGIN SELECT WITH", "WITH", "batch INSERT WITH COMMIT"}, rt.take())
	require.Equal(t, byte('I'), txStatus(t, pool))
}

// withMode is url with pgx's default_query_exec_mode set to mode.
func withMode(t *testing.T, url, mode string) string {
	t.Helper()
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + "default_query_exec_mode=" + mode
}

// The timeouts bound the load also on a connection that has not run it
// yet: pgx parses a new statement in a round trip before the pipeline,
// and the parse takes the tables' locks (here behind an ACCESS EXCLUSIVE
// lock, as a migration takes). In every exec mode a user may put in the
// URL (describe_exec parses every statement before its pipeline), on a
// new connection and on one that ran a command before, and through the
// old path as well.
func TestTimeoutsBoundTheFirstLoad(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabaseURL(t)
	admin := pgtest.Pool(t, url)
	for _, mode := range []string{"cache_statement", "cache_describe", "describe_exec", "exec", "simple_protocol"} {
		for name, tc := range map[string]struct {
			cfg  aggregate.Config
			code string
		}{
			"lock":      {aggregate.Config{LockTimeout: 200 * time.Millisecond, StatementTimeout: -1}, "55P03"},
			"statement": {aggregate.Config{LockTimeout: -1, StatementTimeout: 300 * time.Millisecond}, "57014"},
		} {
			for _, handle := range []string{"pool", "begin only"} {
				for _, warm := range []bool{false, true} {
					t.Run(fmt.Sprintf("%s/%s/%s/warm=%v", mode, name, handle, warm), func(t *testing.T) {
						ctx := context.Background()
						cfg, err := pgxpool.ParseConfig(withMode(t, url, mode))
						require.NoError(t, err)
						cfg.MaxConns = 1
						pool, err := pgxpool.NewWithConfig(ctx, cfg)
						require.NoError(t, err)
						defer pool.Close()
						var db aggregate.DB = pool
						if handle == "begin only" {
							db = beginOnly{pool}
						}
						repo, err := aggregate.New(db, tc.cfg)
						require.NoError(t, err)
						nothing := func(*domain.Product) ([]domain.Event, error) { return nil, nil }
						if warm {
							_, err := aggregate.Execute(ctx, repo, "p-1", outbox.Metadata{}, nothing)
							require.NoError(t, err)
						}
						tx, err := admin.Begin(ctx)
						require.NoError(t, err)
						defer func() { _ = tx.Rollback(ctx) }()
						_, err = tx.Exec(ctx, `LOCK TABLE readside.snapshots IN ACCESS EXCLUSIVE MODE`)
						require.NoError(t, err)
						cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
						defer cancel()
						_, err = aggregate.Execute(cctx, repo, "p-1", outbox.Metadata{}, nothing)
						var pgErr *pgconn.PgError
						require.ErrorAs(t, err, &pgErr)
						require.Equal(t, tc.code, pgErr.Code)
					})
				}
			}
		}
	}
}

// In a schema of the user's choosing, the pipelined command's every
// statement names that schema, the replay after an unreadable snapshot
// included.
func TestExecuteInAnotherSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, pgtest.NewEmptyDatabaseURL(t))
	_, err := migrations.Migrate(ctx, pool, migrations.Config{Schema: "alt"})
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO alt.events (aggregate_type, aggregate_id, event_type, event_data, schema_version, version)
		VALUES ('Product', 'p-1', 'ProductCreated', jsonb_build_object('product_id', 'p-1', 'name', 'Old widget', 'price', 10.00, 'created_at', '2024-01-01T00:00:00Z'), 1, 1)`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO alt.snapshots (aggregate_type, aggregate_id, version, state) VALUES ('Product', 'p-1', 1, '{"price": "not money"}')`)
	require.NoError(t, err)
	price := 100
	for name, db := range map[string]aggregate.DB{"pool": pool, "begin only": beginOnly{pool}, "readside's pool": dbschema.Name("alt").Pool(pool)} {
		t.Run(name, func(t *testing.T) {
			repo, err := aggregate.New(db, aggregate.Config{Schema: "alt", SnapshotEvery: 1})
			require.NoError(t, err)
			for range 2 { // a new connection, then the same one warm
				price++
				_, err = aggregate.Execute(ctx, repo, "p-1", outbox.Metadata{}, func(p *domain.Product) ([]domain.Event, error) {
					return p.UpdatePrice(domain.UpdatePrice{ProductID: "p-1", NewPrice: domain.Money(price)}, now)
				})
				require.NoError(t, err)
			}
			// Unreadable again, for the next handle.
			_, err = pool.Exec(ctx, `UPDATE alt.snapshots SET state = '{"price": "not money"}'`)
			require.NoError(t, err)
		})
	}
	var events, snapshots int
	require.NoError(t, pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM alt.events), (SELECT count(*) FROM alt.snapshots)`).Scan(&events, &snapshots))
	require.Equal(t, 7, events)
	require.Equal(t, 1, snapshots, "a snapshot replaces the older ones")
}

// A decision that panics leaves the connection in its pool, its
// transaction rolled back, as pgx.BeginTxFunc does.
func TestPanicInDecideKeepsTheConnection(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rt := &roundTrips{}
	pool, _ := tracedPool(t, rt)
	repo := newRepo(t, pool, aggregate.Config{})
	var before, after int
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&before))
	require.Panics(t, func() {
		_, _ = aggregate.Execute(ctx, repo, "p-1", outbox.Metadata{}, func(*domain.Product) ([]domain.Event, error) { panic("boom") })
	})
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&after))
	require.Equal(t, before, after)
	require.Equal(t, byte('I'), txStatus(t, pool))
}
