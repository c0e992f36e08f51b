package aggregate_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

var now = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func newRepo(t *testing.T, pool *pgxpool.Pool, cfg aggregate.Config) *aggregate.Repository {
	t.Helper()
	r, err := aggregate.New(pool, cfg)
	require.NoError(t, err)
	return r
}

// insertV1Product writes a ProductCreated at schema version 1 (no sku) with
// plain SQL, as an old writer did.
func insertV1Product(t *testing.T, pool *pgxpool.Pool, id string) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `
		INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, schema_version, version)
		VALUES ('Product', $1, 'ProductCreated', jsonb_build_object('product_id', $1::text, 'name', 'Old widget', 'price', 10.00, 'created_at', '2024-01-01T00:00:00Z'), 1, 1)`, id)
	require.NoError(t, err)
}

// fullReplay loads without snapshots: it deletes them in a transaction it
// rolls back.
func fullReplay(t *testing.T, pool *pgxpool.Pool, id string) *aggregate.Loaded[domain.Product, *domain.Product] {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck
	_, err = tx.Exec(ctx, `DELETE FROM readside.snapshots`)
	require.NoError(t, err)
	l, err := aggregate.Load[domain.Product](ctx, tx, id)
	require.NoError(t, err)
	require.Zero(t, l.SnapshotVersion)
	return l
}

func TestSnapshotAndUpcastLoadEqualsFullReplay(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 100, 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := pgtest.NewDB(t)
			repo := newRepo(t, pool, aggregate.Config{SnapshotEvery: 100})
			id := fmt.Sprintf("prod-%d", n)
			insertV1Product(t, pool, id)

			// Append the rest in transactions of up to 37 events, so that
			// snapshot boundaries fall inside batches.
			version := 1
			snapshots := 0
			for version < n {
				require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					l, err := aggregate.Load[domain.Product](ctx, tx, id)
					if err != nil {
						return err
					}
					require.Equal(t, version, l.Version)
					var events []domain.Event
					price := l.State.Price
					for i := 0; i < 37 && version+i < n; i++ {
						events = append(events, &domain.PriceUpdated{ProductID: id, OldPrice: price, NewPrice: price + 1, UpdatedAt: now})
						price++
					}
					res, err := repo.Save(ctx, tx, id, l.Version, l.State, outbox.Metadata{}, events)
					if err != nil {
						return err
					}
					if res.Snapshot {
						snapshots++
					}
					version = res.Version
					return nil
				}))
			}
			require.Equal(t, n/100, snapshots)

			got, err := aggregate.Load[domain.Product](ctx, pool, id)
			require.NoError(t, err)
			require.Equal(t, n, got.Version)
			require.Equal(t, n/100*100, got.SnapshotVersion)

			want := fullReplay(t, pool, id)
			require.Equal(t, want.Version, got.Version)
			require.Equal(t, want.State, got.State)
			require.Equal(t, domain.DefaultSKU(id), got.State.SKU, "the v1 event was upcast")
			require.Equal(t, domain.Money(1000+n-1), got.State.Price)

			var kept int
			require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.snapshots`).Scan(&kept))
			require.Equal(t, min(n/100, 1), kept, "older snapshots are dropped")
		})
	}
}

func TestUnreadableSnapshotFallsBackToReplay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	insertV1Product(t, pool, "p-1")
	_, err := pool.Exec(ctx, `INSERT INTO readside.snapshots (aggregate_type, aggregate_id, version, state) VALUES ('Product', 'p-1', 1, '{"price": "not money"}')`)
	require.NoError(t, err)
	l, err := aggregate.Load[domain.Product](ctx, pool, "p-1")
	require.NoError(t, err)
	require.Zero(t, l.SnapshotVersion)
	require.Equal(t, 1, l.Version)
	require.Equal(t, domain.Money(1000), l.State.Price)
}

// beginOnly hides a pool's Acquire: the repository then runs its commands
// through BeginTx, as on a handle that is not a pool.
type beginOnly struct{ aggregate.DB }

// TestExecute runs on a pool (Execute pipelines its statements) and on a
// handle that only begins transactions.
func TestExecute(t *testing.T) {
	t.Parallel()
	for name, wrap := range map[string]func(*pgxpool.Pool) aggregate.DB{
		"pool":       func(p *pgxpool.Pool) aggregate.DB { return p },
		"begin only": func(p *pgxpool.Pool) aggregate.DB { return beginOnly{p} },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testExecute(t, wrap)
		})
	}
}

func testExecute(t *testing.T, wrap func(*pgxpool.Pool) aggregate.DB) {
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	reg := prometheus.NewRegistry()
	repo, err := aggregate.New(wrap(pool), aggregate.Config{SnapshotEvery: -1, Registerer: reg})
	require.NoError(t, err)
	meta := outbox.Metadata{CorrelationID: "corr-1", UserID: "u-1"}

	res, err := aggregate.Execute(ctx, repo, "o-1", meta, func(o *domain.Order) ([]domain.Event, error) {
		return o.Place(domain.PlaceOrder{OrderID: "o-1", CustomerName: "Alice",
			Items: []domain.OrderItem{{ProductName: "W", Quantity: 2, UnitPrice: 250}}}, now)
	})
	require.NoError(t, err)
	require.Equal(t, 1, res.Version)
	require.Equal(t, 1, res.Attempts)
	require.NotZero(t, res.Cursor().TxID)

	_, err = aggregate.Execute(ctx, repo, "o-1", meta, func(o *domain.Order) ([]domain.Event, error) {
		return o.Ship(domain.ShipOrder{OrderID: "o-1"}, now)
	})
	require.ErrorIs(t, err, domain.ErrInvalidTransition)

	_, err = aggregate.Execute(ctx, repo, "missing", meta, func(o *domain.Order) ([]domain.Event, error) {
		return o.Confirm(domain.ConfirmOrder{OrderID: "missing"}, now)
	})
	require.ErrorIs(t, err, domain.ErrNotFound)

	for _, step := range []func(o *domain.Order) ([]domain.Event, error){
		func(o *domain.Order) ([]domain.Event, error) {
			return o.Confirm(domain.ConfirmOrder{OrderID: "o-1"}, now)
		},
		func(o *domain.Order) ([]domain.Event, error) { return o.Ship(domain.ShipOrder{OrderID: "o-1"}, now) },
	} {
		_, err := aggregate.Execute(ctx, repo, "o-1", meta, step)
		require.NoError(t, err)
	}
	l, err := aggregate.Load[domain.Order](ctx, pool, "o-1")
	require.NoError(t, err)
	require.Equal(t, domain.OrderStatusShipped, l.State.Status)
	require.Equal(t, 3, l.Version)
	require.Equal(t, domain.Money(500), l.State.TotalAmount)

	// A decision without events writes nothing.
	_, err = aggregate.Execute(ctx, repo, "p-1", meta, func(p *domain.Product) ([]domain.Event, error) {
		return p.Create(domain.CreateProduct{ProductID: "p-1", Name: "W", Price: 100}, now)
	})
	require.NoError(t, err)
	res, err = aggregate.Execute(ctx, repo, "p-1", meta, func(p *domain.Product) ([]domain.Event, error) {
		return p.UpdatePrice(domain.UpdatePrice{ProductID: "p-1", NewPrice: 100}, now)
	})
	require.NoError(t, err)
	require.Nil(t, res.Append)
	require.Equal(t, 1, res.Version)
	require.Equal(t, outbox.Cursor{}, res.Cursor())

	var events, outboxRows, snapshots int
	var corr string
	require.NoError(t, pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM readside.events), (SELECT count(*) FROM readside.outbox), (SELECT count(*) FROM readside.snapshots),
		(SELECT metadata->>'correlation_id' FROM readside.events WHERE aggregate_id = 'o-1' AND version = 1)`).Scan(&events, &outboxRows, &snapshots, &corr))
	require.Equal(t, 4, events)
	require.Equal(t, 4, outboxRows)
	require.Zero(t, snapshots, "SnapshotEvery < 0 disables snapshots")
	require.Equal(t, "corr-1", corr)

	require.Equal(t, 3.0, counter(t, reg, "readside_writer_events_total", "Order"))
}

// counter returns the value of counter name{aggregate_type=aggType} in reg.
func counter(t *testing.T, reg *prometheus.Registry, name, aggType string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "aggregate_type" && lp.GetValue() == aggType {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestConcurrentExecute has 8 goroutines change one aggregate at once. Every
// goroutine loads the same version before any appends (a barrier in the
// first decision), so 7 of them conflict at least once.
func TestConcurrentExecute(t *testing.T) {
	t.Parallel()
	const writers = 8
	for name, tc := range map[string]struct {
		retries int
		wantOK  int
	}{
		"retries succeed":     {retries: 100, wantOK: writers},
		"no retries":          {retries: -1, wantOK: 1},
		"few retries bounded": {retries: 2, wantOK: -1}, // any number, but conflicts are reported
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := pgtest.NewDB(t)
			reg := prometheus.NewRegistry()
			repo := newRepo(t, pool, aggregate.Config{MaxConflictRetries: tc.retries, Registerer: reg, RetryBackoff: time.Millisecond})
			_, err := aggregate.Execute(ctx, repo, "p-1", outbox.Metadata{}, func(p *domain.Product) ([]domain.Event, error) {
				return p.Create(domain.CreateProduct{ProductID: "p-1", Name: "W", Price: 100}, now)
			})
			require.NoError(t, err)

			var barrier sync.WaitGroup
			barrier.Add(writers)
			results := make([]*aggregate.Result, writers)
			errs := make([]error, writers)
			var wg sync.WaitGroup
			for i := range writers {
				wg.Go(func() {
					first := true
					results[i], errs[i] = aggregate.Execute(ctx, repo, "p-1", outbox.Metadata{}, func(p *domain.Product) ([]domain.Event, error) {
						if first {
							first = false
							barrier.Done()
							barrier.Wait()
						}
						return p.UpdatePrice(domain.UpdatePrice{ProductID: "p-1", NewPrice: domain.Money(1000 + i)}, now)
					})
				})
			}
			wg.Wait()

			ok, conflicts, retried := 0, 0, 0
			for i := range writers {
				if errs[i] != nil {
					require.ErrorIs(t, errs[i], outbox.ErrConcurrencyConflict)
					conflicts++
					continue
				}
				ok++
				retried += results[i].Attempts - 1
			}
			if tc.wantOK >= 0 {
				require.Equal(t, tc.wantOK, ok)
			}
			require.Equal(t, writers, ok+conflicts)
			require.GreaterOrEqual(t, retried+conflicts, writers-1)

			var versions []int
			rows, err := pool.Query(ctx, `SELECT version FROM readside.events WHERE aggregate_id = 'p-1' ORDER BY version`)
			require.NoError(t, err)
			versions, err = pgx.CollectRows(rows, pgx.RowTo[int])
			require.NoError(t, err)
			require.Len(t, versions, ok+1)
			for i, v := range versions {
				require.Equal(t, i+1, v, "versions are gap-free")
			}
			var outboxRows int
			require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.outbox`).Scan(&outboxRows))
			require.Equal(t, len(versions), outboxRows)
			require.Equal(t, float64(retried+conflicts*(max(tc.retries, 0)+1)), counter(t, reg, "readside_writer_conflicts_total", "Product"))
		})
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	_, err := aggregate.New(nil, aggregate.Config{})
	require.Error(t, err)
	pool := pgtest.NewDB(t)
	_, err = aggregate.New(pool, aggregate.Config{RetryBackoff: time.Second, MaxRetryBackoff: time.Millisecond})
	require.Error(t, err)
	// (PostgreSQL refuses a timeout past 2^31-1 ms: every command would fail.)
	_, err = aggregate.New(pool, aggregate.Config{LockTimeout: math.MaxInt32*time.Millisecond + time.Millisecond})
	require.ErrorContains(t, err, "LockTimeout")
	_, err = aggregate.New(pool, aggregate.Config{StatementTimeout: math.MaxInt32*time.Millisecond + time.Millisecond})
	require.ErrorContains(t, err, "StatementTimeout")
	_, err = aggregate.New(pool, aggregate.Config{LockTimeout: math.MaxInt32 * time.Millisecond, StatementTimeout: math.MaxInt32 * time.Millisecond})
	require.NoError(t, err, "the longest timeouts PostgreSQL takes")
	reg := prometheus.NewRegistry()
	_, err = aggregate.New(pool, aggregate.Config{Registerer: reg})
	require.NoError(t, err)
	_, err = aggregate.New(pool, aggregate.Config{Registerer: reg})
	require.Error(t, err, "metrics registered twice")
}

// Execute's transactions set their own lock_timeout and statement_timeout:
// behind a transaction that holds the aggregate's next version it fails
// with 55P03 after LockTimeout rather than waiting for it to end, and the
// settings do not outlive the transaction on the pooled connection.
func TestExecuteTimeouts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.MaxConns = 1 // the connection checked at the end is the one Execute used
	single, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer single.Close()
	repo := newRepo(t, single, aggregate.Config{LockTimeout: 200 * time.Millisecond, StatementTimeout: 3 * time.Second})
	place := func(o *domain.Order) ([]domain.Event, error) {
		return o.Place(domain.PlaceOrder{OrderID: "o-1", CustomerName: "Alice",
			Items: []domain.OrderItem{{ProductName: "W", Quantity: 1, UnitPrice: 100}}}, now)
	}
	confirm := func(o *domain.Order) ([]domain.Event, error) {
		return o.Confirm(domain.ConfirmOrder{OrderID: "o-1"}, now)
	}
	_, err = aggregate.Execute(ctx, repo, "o-1", outbox.Metadata{}, place)
	require.NoError(t, err)

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	l, err := aggregate.Load[domain.Order](ctx, tx, "o-1")
	require.NoError(t, err)
	events, err := confirm(l.State)
	require.NoError(t, err)
	_, err = repo.Save(ctx, tx, "o-1", l.Version, l.State, outbox.Metadata{}, events)
	require.NoError(t, err)

	start := time.Now()
	_, err = aggregate.Execute(ctx, repo, "o-1", outbox.Metadata{}, confirm)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "55P03", pgErr.Code)
	require.Less(t, time.Since(start), 5*time.Second)

	conn, err := single.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	var lockTimeout, statementTimeout string
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_setting('lock_timeout'), current_setting('statement_timeout')`).
		Scan(&lockTimeout, &statementTimeout))
	require.Equal(t, []string{"0", "0"}, []string{lockTimeout, statementTimeout}, "SET LOCAL only")
}

// A command whose INSERT waited (here behind another writer's uncommitted
// version, which then rolls back) long enough for readers to pass its xid
// is refused by the read fence: a conflict like any other, retried, and
// counted on its own in readside_writer_read_fence_refusals_total.
func TestExecuteRetriesReadFenceRefusal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	reg := prometheus.NewRegistry()
	repo := newRepo(t, pool, aggregate.Config{Registerer: reg, RetryBackoff: time.Millisecond,
		LockTimeout: 30 * time.Second, StatementTimeout: 30 * time.Second})
	_, err := aggregate.Execute(ctx, repo, "p-1", outbox.Metadata{}, func(p *domain.Product) ([]domain.Event, error) {
		return p.Create(domain.CreateProduct{ProductID: "p-1", Name: "W", Price: 100}, now)
	})
	require.NoError(t, err)

	other, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = other.Rollback(ctx) }()
	_, err = other.Exec(ctx, `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version)
		VALUES ('Product', 'p-1', 'ProductPriceChanged', '{}', 2)`)
	require.NoError(t, err)

	done := make(chan error, 1)
	var res *aggregate.Result
	go func() {
		var err error
		res, err = aggregate.Execute(ctx, repo, "p-1", outbox.Metadata{}, func(p *domain.Product) ([]domain.Event, error) {
			return p.UpdatePrice(domain.UpdatePrice{ProductID: "p-1", NewPrice: 200}, now)
		})
		done <- err
	}()
	// The command's INSERT has its xid and waits for the other writer.
	var xid uint64
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := pool.QueryRow(ctx, `SELECT backend_xid::text::bigint FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND backend_xid IS NOT NULL`).Scan(&xid)
		if err == nil {
			break
		}
		require.ErrorIs(t, err, pgx.ErrNoRows)
		require.True(t, time.Now().Before(deadline), "the command did not wait")
		time.Sleep(10 * time.Millisecond)
	}
	// Readers pass it (the fence moves to an xmax they saw: a younger
	// transaction ends first).
	_, err = pool.Exec(ctx, `SELECT pg_current_xact_id()`)
	require.NoError(t, err)
	for fence := uint64(0); fence <= xid; {
		require.True(t, time.Now().Before(deadline), "the fence did not pass xid %d", xid)
		_, err := outbox.ReadHead(ctx, pool)
		require.NoError(t, err)
		require.NoError(t, pool.QueryRow(ctx, `SELECT coalesce(pg_sequence_last_value('readside.read_fence'), 0)`).Scan(&fence))
		time.Sleep(10 * time.Millisecond)
	}
	require.NoError(t, other.Rollback(ctx))
	require.NoError(t, <-done)
	require.Equal(t, 2, res.Attempts, "refused once, then applied")
	require.Equal(t, 1.0, counter(t, reg, "readside_writer_read_fence_refusals_total", "Product"))
	require.Equal(t, 1.0, counter(t, reg, "readside_writer_conflicts_total", "Product"))
}
