// Package projectortest is the conformance suite every projection, shipped
// or a user's, should pass, in the manner of river's riverdrivertest and
// watermill's pubsub tests:
//
//	func TestConformance(t *testing.T) {
//		t.Parallel()
//		projectortest.Run(t, projectortest.NewDB, myprojection.New(),
//			projectortest.Lifecycles{Orders: 80}.Generator(), projectortest.Features{})
//	}
//
// Run drives Apply directly, in transactions, over events read with
// outbox.Fetch: no runtime is involved, so a failure points at the
// projection. It checks that the read model depends only on which events
// were applied and on their order per aggregate: not on batch boundaries,
// not on replays (for idempotent projections), not on segmenting, and that
// Reset really starts over.
package projectortest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// Features says what a projection promises, so that Run checks exactly that.
type Features struct {
	// NotIdempotent says that applying events that were already applied
	// changes the tables, as in a counter projection; the replay checks are
	// then skipped. The zero value asks for the stricter promise: upserts
	// guarded by event version, so that replays converge.
	NotIdempotent bool
	// IgnoreColumns are left out when tables are compared, in every table:
	// columns whose value depends on when a row was written. nil means
	// {"updated_at"}.
	IgnoreColumns []string
	// BatchSizes are the batch splits compared with applying one event at a
	// time: each is the number of outbox rows a batch reads. nil means {7,
	// 100, 1 << 30} (the last is "all at once").
	BatchSizes []int
	// Segments is how many segments the segmented check splits the stream
	// into, applied concurrently. 0 means 4; negative skips the check.
	Segments int
	// Malformed events the projection must refuse with an error naming the
	// event (its id). Each is appended to a fresh aggregate. Optional.
	Malformed []Malformed
}

// Malformed is an event that Apply must refuse.
type Malformed struct {
	Aggregate outbox.Aggregate
	Event     outbox.NewEvent
}

func (f Features) withDefaults() Features {
	if f.IgnoreColumns == nil {
		f.IgnoreColumns = []string{"updated_at"}
	}
	if f.BatchSizes == nil {
		f.BatchSizes = []int{7, 100, 1 << 30}
	}
	if f.Segments == 0 {
		f.Segments = 4
	}
	return f
}

// Run runs the conformance suite as parallel subtests of t. newDB returns a
// pool on a fresh, migrated database (NewDB); gen appends the events to
// project (Lifecycles.Generator for the seed domain). Each subtest gets its
// own database; a projection that implements projectors.Schema gets its
// tables there, in readside's schema, as `projector migrate` creates them.
//
// The reference is the projection applied one event per transaction, in
// read order (so in version order per aggregate). Every check compares the
// dump of Spec().Tables with it.
func Run(t *testing.T, newDB func(testing.TB) *pgxpool.Pool, p projectors.Projection, gen func(t *testing.T, pool *pgxpool.Pool), features Features) {
	t.Helper()
	f := features.withDefaults()
	spec := p.Spec()
	require.NotEmpty(t, spec.Tables, "projectortest: Spec().Tables lists no table to compare")
	if sc, ok := p.(projectors.Schema); ok {
		fresh := newDB
		newDB = func(t testing.TB) *pgxpool.Pool {
			pool := fresh(t)
			require.NoError(t, pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(context.Background(), `SELECT set_config('search_path', 'readside', true)`); err != nil {
					return err
				}
				_, err := tx.Exec(context.Background(), sc.Schema())
				return err
			}), "projectortest: Schema() of %s", spec.Name)
			return pool
		}
	}

	// setup returns a database holding the generated events, the dump of
	// its untouched read model, and the reference dump; the read model is
	// reset again before it returns.
	setup := func(t *testing.T) (*pgxpool.Pool, Dump, Dump) {
		t.Helper()
		pool := newDB(t)
		gen(t, pool)
		initial := DumpTables(t, pool, spec.Tables, f.IgnoreColumns)
		n := ApplyStream(t, pool, p, filter(spec, 0, 1), 1)
		require.NotZero(t, n, "projectortest: gen appended no event that %s receives", spec.Name)
		ref := DumpTables(t, pool, spec.Tables, f.IgnoreColumns)
		require.NotEqual(t, initial, ref, "projectortest: applying %d events changed none of %v", n, spec.Tables)
		reset(t, pool, p)
		require.Equal(t, initial, DumpTables(t, pool, spec.Tables, f.IgnoreColumns), "Reset must bring the tables back to their initial state")
		return pool, initial, ref
	}

	t.Run("BatchSplits", func(t *testing.T) {
		t.Parallel()
		pool, _, ref := setup(t)
		for _, size := range f.BatchSizes {
			ApplyStream(t, pool, p, filter(spec, 0, 1), size)
			require.Equal(t, ref, DumpTables(t, pool, spec.Tables, f.IgnoreColumns),
				"batches of %d outbox rows must give the same tables as one event at a time", size)
			reset(t, pool, p)
		}
	})

	t.Run("ResetAndReplay", func(t *testing.T) {
		t.Parallel()
		pool, initial, ref := setup(t)
		for round := range 3 {
			ApplyStream(t, pool, p, filter(spec, 0, 1), 50)
			require.Equal(t, ref, DumpTables(t, pool, spec.Tables, f.IgnoreColumns), "round %d after reset", round)
			reset(t, pool, p)
			require.Equal(t, initial, DumpTables(t, pool, spec.Tables, f.IgnoreColumns), "round %d: Reset must empty the read model", round)
		}
	})

	t.Run("ReplayTwice", func(t *testing.T) {
		t.Parallel()
		if f.NotIdempotent {
			t.Skip("projection is not idempotent (Features.NotIdempotent)")
		}
		pool, _, ref := setup(t)
		ApplyStream(t, pool, p, filter(spec, 0, 1), 1<<30)
		ApplyStream(t, pool, p, filter(spec, 0, 1), 1<<30)
		require.Equal(t, ref, DumpTables(t, pool, spec.Tables, f.IgnoreColumns), "replaying every event a second time")
		// A replay that stops half way (a checkpoint moved back): the
		// older events must not overwrite newer state.
		applyUntil(t, pool, p, filter(spec, 0, 1), 11, 0.5)
		require.Equal(t, ref, DumpTables(t, pool, spec.Tables, f.IgnoreColumns), "replaying the first half over everything")
		// A replay that overlaps the read model's state unevenly: batches
		// that straddle versions already applied and versions not yet.
		reset(t, pool, p)
		applyUntil(t, pool, p, filter(spec, 0, 1), 13, 0.5)
		ApplyStream(t, pool, p, filter(spec, 0, 1), 9)
		require.Equal(t, ref, DumpTables(t, pool, spec.Tables, f.IgnoreColumns), "replaying from the start over the first half")
		ApplyStream(t, pool, p, filter(spec, 0, 1), 1)
		require.Equal(t, ref, DumpTables(t, pool, spec.Tables, f.IgnoreColumns), "replaying one event at a time over everything")
	})

	t.Run("PerAggregateOrder", func(t *testing.T) {
		t.Parallel()
		pool, _, ref := setup(t)
		// The same events, grouped by aggregate (each aggregate's events
		// still in version order), in batches of 31: only per-aggregate
		// order is kept.
		events := fetchAll(t, pool, filter(spec, 0, 1))
		slices.SortStableFunc(events, func(a, b outbox.Event) int {
			return cmpAll(strings.Compare(a.AggregateType, b.AggregateType), strings.Compare(a.AggregateID, b.AggregateID), a.Version-b.Version)
		})
		for chunk := range slices.Chunk(events, 31) {
			apply(t, pool, p, &projectors.Batch{Events: chunk})
		}
		require.Equal(t, ref, DumpTables(t, pool, spec.Tables, f.IgnoreColumns),
			"events grouped by aggregate, in version order, must give the same tables as read order")
	})

	t.Run("Segments", func(t *testing.T) {
		t.Parallel()
		if f.Segments < 0 {
			t.Skip("Features.Segments is negative")
		}
		pool, _, ref := setup(t)
		ctx := context.Background()
		var wg sync.WaitGroup
		errs := make([]error, f.Segments)
		for seg := range f.Segments {
			wg.Go(func() {
				_, errs[seg] = applyStream(ctx, pool, p, filter(spec, seg, f.Segments), 17, -1)
			})
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...))
		require.Equal(t, ref, DumpTables(t, pool, spec.Tables, f.IgnoreColumns),
			"%d segments applied concurrently must give the same tables as one stream", f.Segments)
	})

	if len(f.Malformed) > 0 {
		t.Run("Malformed", func(t *testing.T) {
			t.Parallel()
			pool := newDB(t)
			ctx := context.Background()
			for _, m := range f.Malformed {
				var res *outbox.AppendResult
				require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					var err error
					res, err = outbox.Append(ctx, tx, m.Aggregate, 0, []outbox.NewEvent{m.Event})
					return err
				}))
				id := res.Positions[0]
				var e outbox.Event
				for _, ev := range fetchAll(t, pool, outbox.Filter{}) {
					if ev.ID() == id {
						e = ev
					}
				}
				require.Equal(t, id, e.ID())
				err := InTx(ctx, pool, func(tx pgx.Tx) error {
					return projectors.ApplyBatch(ctx, tx, p, &projectors.Batch{Events: []outbox.Event{e}})
				})
				require.Error(t, err, "%s %s must be refused", m.Event.Type, m.Event.Data)
				require.Contains(t, err.Error(), fmt.Sprint(id), "the error must name the event (its id %d)", id)
			}
		})
	}
}

func filter(s projectors.Spec, segment, segments int) outbox.Filter {
	return outbox.Filter{EventTypes: s.EventTypes, AggregateTypes: s.AggregateTypes, Segment: segment, Segments: segments}
}

func cmpAll(cs ...int) int {
	for _, c := range cs {
		if c != 0 {
			return c
		}
	}
	return 0
}

func reset(t *testing.T, pool *pgxpool.Pool, p projectors.Projection) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, InTx(ctx, pool, func(tx pgx.Tx) error { return p.Reset(ctx, tx) }), "Reset")
}

func apply(t *testing.T, pool *pgxpool.Pool, p projectors.Projection, b *projectors.Batch) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, InTx(ctx, pool, func(tx pgx.Tx) error { return projectors.ApplyBatch(ctx, tx, p, b) }))
}

// InTx runs fn in a transaction set up as the runtime sets up the ones it
// hands a projection: readside's schema first on the search_path.
func InTx(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		ptx, err := dbschema.Projection(ctx, tx, "")
		if err != nil {
			return err
		}
		return fn(ptx)
	})
}

// ApplyStream applies every event that f selects, from the start of the
// outbox to its current end, in batches of limit outbox rows, each batch in
// its own transaction, as the runtime would (without a checkpoint). It
// returns the number of events applied.
func ApplyStream(tb testing.TB, pool *pgxpool.Pool, p projectors.Projection, f outbox.Filter, limit int) int {
	tb.Helper()
	n, err := applyStream(context.Background(), pool, p, f, limit, -1)
	require.NoError(tb, err)
	return n
}

// applyUntil applies the first share of the stream (by outbox rows).
func applyUntil(t *testing.T, pool *pgxpool.Pool, p projectors.Projection, f outbox.Filter, limit int, share float64) {
	t.Helper()
	var total int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM readside.events`).Scan(&total))
	_, err := applyStream(context.Background(), pool, p, f, limit, int(float64(total)*share))
	require.NoError(t, err)
}

// applyStream stops at the events table's last row (the tests' writers
// have all committed by then), or after maxRows outbox rows when maxRows is
// not negative. Other databases' transactions on the same cluster can hold
// the read window back for a moment, so an empty read before the end is
// retried until a deadline.
func applyStream(ctx context.Context, pool *pgxpool.Pool, p projectors.Projection, f outbox.Filter, limit, maxRows int) (int, error) {
	var end outbox.Cursor
	err := pool.QueryRow(ctx, `SELECT txid, id FROM readside.events ORDER BY txid DESC, id DESC LIMIT 1`).Scan(&end.TxID, &end.Position)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	cursor, applied, scanned := outbox.Start, 0, 0
	deadline := time.Now().Add(30 * time.Second)
	for cursor.Less(end) && (maxRows < 0 || scanned < maxRows) {
		lim := limit
		if maxRows >= 0 {
			lim = min(lim, maxRows-scanned)
		}
		var b *outbox.Batch
		err := InTx(ctx, pool, func(tx pgx.Tx) error {
			var err error
			if b, err = outbox.Fetch(ctx, tx, cursor, lim, f); err != nil || len(b.Events) == 0 {
				return err
			}
			return projectors.ApplyBatch(ctx, tx, p, &projectors.Batch{Events: b.Events, Segment: f.Segment})
		})
		if err != nil {
			return applied, fmt.Errorf("apply after %s: %w", cursor, err)
		}
		if b.Scanned == 0 && b.Next == cursor {
			if time.Now().After(deadline) {
				return applied, fmt.Errorf("apply after %s: the read window did not reach %s in time", cursor, end)
			}
			time.Sleep(20 * time.Millisecond) // the window is held by another database's transaction
			continue
		}
		cursor, applied, scanned = b.Next, applied+len(b.Events), scanned+b.Scanned
	}
	return applied, nil
}

func fetchAll(t *testing.T, pool *pgxpool.Pool, f outbox.Filter) []outbox.Event {
	t.Helper()
	var events []outbox.Event
	_, err := applyStream(context.Background(), pool, collector{&events}, f, 1000, -1)
	require.NoError(t, err)
	return events
}

// collector is a projection that keeps the events it is given.
type collector struct{ events *[]outbox.Event }

func (collector) Spec() projectors.Spec { return projectors.Spec{Name: "collector"} }
func (c collector) Apply(_ context.Context, _ pgx.Tx, b *projectors.Batch) error {
	*c.events = append(*c.events, b.Events...)
	return nil
}
func (collector) Reset(context.Context, pgx.Tx) error { return nil }

// Dump is the content of some tables: per table, its rows as JSON objects
// in a total order.
type Dump map[string][]string

// DumpTables dumps tables (names as in Spec.Tables, optionally
// schema-qualified), without the ignore columns.
func DumpTables(tb testing.TB, q outbox.Querier, tables, ignore []string) Dump {
	tb.Helper()
	d := Dump{}
	for _, table := range tables {
		ident := pgx.Identifier(strings.Split(table, ".")).Sanitize()
		if !strings.Contains(table, ".") {
			// As the runtime resolves a projection's names: readside's
			// schema first, then the connection's search_path.
			var inReadside bool
			require.NoError(tb, q.QueryRow(context.Background(), `SELECT to_regclass('readside.' || quote_ident($1)) IS NOT NULL`, table).Scan(&inReadside))
			if inReadside {
				ident = "readside." + ident
			}
		}
		rows, err := q.Query(context.Background(),
			`SELECT (to_jsonb(t) - $1::text[])::text FROM `+ident+` t ORDER BY to_jsonb(t) - $1::text[]`, nonNil(ignore))
		require.NoError(tb, err, "dump %s", table)
		d[table], err = pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(tb, err, "dump %s", table)
		if d[table] == nil {
			d[table] = []string{}
		}
	}
	return d
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
