package adopt

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/internal/dbschema"
)

// The backfill copies the history (the rows in the table when the trigger
// was installed) while the application writes. The trigger and the
// backfill meet per aggregate, through readside_adoption_claims and a
// transaction-level advisory lock on the aggregate:
//
//   - the first INSERT that touches an aggregate after the trigger was
//     installed claims it (waiting for the lock if a backfill chunk holds
//     it) and copies, in its own transaction and before its new rows, the
//     versions of it that readside's log lacks;
//   - a backfill chunk claims the aggregates of its rows that nobody
//     holds (pg_try_advisory_xact_lock: it never waits for the
//     application) and copies the versions readside's log lacks; an
//     aggregate it could not lock is tried again at the end;
//   - a claimed aggregate is skipped by the other side.
//
// So each aggregate's history is copied once, whole, in version order, by
// one transaction, and before any of its new rows (they come in the same
// transaction or a later one: readside's per-aggregate rules order them).
// Rows the application inserts after the trigger is installed never reach
// the backfill's rows unclaimed: their statement claimed the aggregate. The
// backfill reads in one REPEATABLE READ snapshot taken after the trigger
// was installed, so every row of the history is in it. Across aggregates,
// the history of one the backfill reaches late is read after new events of
// others: projections order per aggregate.

// backfillRow is one row of history, mapped.
type backfillRow struct {
	id    int64
	t, a  string
	et    string
	d, md string
	v     int64
	o     time.Time
	agg   aggKey
}

type aggKey struct{ t, a string }

// backfill copies the history in chunks and then turns the trigger's
// claims off. It returns the rows it copied.
func (p *plan) backfill(ctx context.Context, pool *pgxpool.Pool, cfg Config) (int64, error) {
	rc, err := pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("adopt: connect: %w", err)
	}
	defer rc.Release()
	wc, err := pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("adopt: connect: %w", err)
	}
	defer wc.Release()
	var install string
	if err := inTx(ctx, wc.Conn(), cfg.LockTimeout, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT coalesce(install_txid::text, '') FROM `+pgx.Identifier{p.t.readside, "readside_adoptions"}.Sanitize()+
			` WHERE table_name = $1`, p.t.name).Scan(&install)
	}); err != nil {
		return 0, fmt.Errorf("adopt %s: %w", p.t.name, err)
	}

	w := &chunkWriter{p: p, conn: wc.Conn(), lockTimeout: cfg.LockTimeout, pending: map[aggKey][]backfillRow{}}
	prog := &Progress{}
	report := func() {
		prog.Copied = w.copied
		if cfg.Progress != nil {
			cfg.Progress(*prog)
		}
	}
	for first := true; ; first = false {
		yielded, err := p.readHistory(ctx, rc.Conn(), w, cfg.ChunkRows, cfg.LockTimeout, prog, first, report)
		if err != nil {
			return w.copied, err
		}
		if !yielded {
			break
		}
		// Another session waits for a lock on the table (ALTER TABLE
		// queues behind the read's ACCESS SHARE, and the application's
		// inserts behind it): the read let go; it starts again, past the
		// aggregates claimed so far, once nobody waits.
		if err := p.waitForNoWaiters(ctx, rc.Conn(), cfg.LockTimeout); err != nil {
			return w.copied, err
		}
	}
	// Aggregates an application transaction held: wait for it, one at a
	// time (holding nothing else, the wait cannot deadlock).
	for len(w.pending) > 0 {
		for k, rows := range w.pending {
			delete(w.pending, k)
			if err := w.write(ctx, rows, true); err != nil {
				return w.copied, err
			}
		}
	}
	report()
	return w.copied, p.finish(ctx, wc.Conn(), install)
}

// readHistory reads the history in one snapshot and writes it in chunks.
// It stops early (yielded) when another session waits for a lock on the
// table: whatever it had read but not written is read again next time.
func (p *plan) readHistory(ctx context.Context, conn *pgx.Conn, w *chunkWriter, chunkRows int, lockTimeout time.Duration,
	prog *Progress, first bool, report func()) (yielded bool, err error) {
	tx, err := p.reading(ctx, conn, lockTimeout)
	if err != nil {
		return false, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// The rows to read are those of the aggregates nobody has claimed:
	// all of them history (an INSERT claims its aggregate or finds it
	// claimed), and fewer at each pass.
	claims := pgx.Identifier{p.t.readside, "readside_adoption_claims"}.Sanitize()
	unclaimed := fmt.Sprintf(`(%s) m
		 WHERE NOT EXISTS (SELECT 1 FROM %s c WHERE c.table_name = %s AND c.aggregate_type = m.t AND c.aggregate_id = m.a)`,
		p.mappedSQL(), claims, literal(p.t.name))
	var remaining int64
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+unclaimed).Scan(&remaining); err != nil {
		return false, fmt.Errorf("adopt %s: %w", p.t.name, err)
	}
	if first {
		prog.Total = remaining
		if err := inTx(ctx, w.conn, lockTimeout, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE `+pgx.Identifier{p.t.readside, "readside_adoptions"}.Sanitize()+` SET history_total = $2 WHERE table_name = $1`,
				p.t.name, prog.Total)
			return err
		}); err != nil {
			return false, fmt.Errorf("adopt %s: %w", p.t.name, err)
		}
	} else {
		prog.Read = prog.Total - remaining
	}
	report()
	w.pending = map[aggKey][]backfillRow{} // read again, unless claimed meanwhile
	if _, err := tx.Exec(ctx, `DECLARE readside_backfill NO SCROLL CURSOR FOR
		SELECT row_id, t, a, et, d::text, md::text, v, o FROM `+unclaimed+`
		 ORDER BY min(row_id) OVER (PARTITION BY t, a), t, a, v, row_id`); err != nil {
		return false, fmt.Errorf("adopt %s: read history: %w", p.t.name, err)
	}
	var chunk []backfillRow
	flush := func() error {
		if err := w.write(ctx, chunk, false); err != nil {
			return err
		}
		if err := w.analyze(ctx); err != nil {
			return err
		}
		prog.Read += int64(len(chunk))
		report()
		chunk = chunk[:0]
		return nil
	}
	for {
		rows, err := tx.Query(ctx, fmt.Sprintf(`FETCH %d FROM readside_backfill`, chunkRows))
		if err != nil {
			return false, fmt.Errorf("adopt %s: read history: %w", p.t.name, err)
		}
		got := 0
		for rows.Next() {
			r, err := p.scanRow(rows)
			if err != nil {
				rows.Close()
				return false, err
			}
			got++
			// A chunk ends where an aggregate does.
			if len(chunk) >= chunkRows && chunk[len(chunk)-1].agg != r.agg {
				if err := flush(); err != nil {
					rows.Close()
					return false, err
				}
				if waiting, err := p.waiters(ctx, w.conn, lockTimeout); err != nil || waiting {
					rows.Close()
					return waiting, err
				}
			}
			chunk = append(chunk, r)
		}
		if err := rows.Err(); err != nil {
			return false, fmt.Errorf("adopt %s: read history: %w", p.t.name, err)
		}
		if got == 0 {
			break
		}
	}
	if err := flush(); err != nil {
		return false, err
	}
	return false, tx.Commit(ctx)
}

// waiters says whether a session waits for a lock on the table or one of
// its partitions.
func (p *plan) waiters(ctx context.Context, conn *pgx.Conn, lockTimeout time.Duration) (bool, error) {
	var waiting bool
	err := inTx(ctx, conn, lockTimeout, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
		WHERE l.locktype = 'relation' AND NOT l.granted
		  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
		  AND (l.relation = $1 OR l.relation IN (SELECT relid FROM pg_catalog.pg_partition_tree($1))))`, p.t.oid).Scan(&waiting)
	})
	if err != nil {
		return false, fmt.Errorf("adopt %s: %w", p.t.name, err)
	}
	return waiting, nil
}

// waitForNoWaiters returns once no session waits for a lock on the table.
func (p *plan) waitForNoWaiters(ctx context.Context, conn *pgx.Conn, lockTimeout time.Duration) error {
	for {
		waiting, err := p.waiters(ctx, conn, lockTimeout)
		if err != nil || !waiting {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// scanRow reads one mapped row and says what it lacks.
func (p *plan) scanRow(rows pgx.Rows) (backfillRow, error) {
	var id, v *int64
	var t, a, et, d *string
	var r backfillRow
	if err := rows.Scan(&id, &t, &a, &et, &d, &r.md, &v, &r.o); err != nil {
		return r, fmt.Errorf("adopt %s: read history: %w", p.t.name, err)
	}
	switch {
	case id == nil:
		return r, fmt.Errorf("%w: %s: a row's %s (for id) is NULL", ErrInvalid, p.t.name, p.m["id"].describe())
	case t == nil, a == nil, et == nil, d == nil, v == nil:
		return r, fmt.Errorf("%w: %s: row id %d lacks a value readside needs (aggregate type, id, event type, payload or version)", ErrInvalid, p.t.name, *id)
	case *v < 1 || *v > 2147483647:
		return r, fmt.Errorf("%w: %s: row id %d: %s (for version) is %d; readside's versions run from 1 to 2147483647", ErrInvalid, p.t.name, *id, p.m["version"].describe(), *v)
	}
	r.id, r.t, r.a, r.et, r.d, r.v = *id, *t, *a, *et, *d, *v
	r.agg = aggKey{r.t, r.a}
	return r, nil
}

// chunkWriter copies chunks of history, each in its own transaction.
type chunkWriter struct {
	p           *plan
	conn        *pgx.Conn
	lockTimeout time.Duration
	copied      int64
	pending     map[aggKey][]backfillRow // aggregates a live transaction held
	analyzed    int64                    // copied at the last ANALYZE
}

// analyzeEvery is the growth of readside's log, in rows copied, after
// which the backfill first analyzes it; then whenever the rows copied
// double.
const analyzeEvery = 5000

// analyze refreshes the planner's statistics of the tables the backfill
// grows, once they have doubled: a plan made while they were small (a
// sequential scan of readside's events, cached by every session of the
// application's that ran the trigger) turns a lookup of one aggregate
// into a scan of the whole log. ANALYZE invalidates those plans.
func (w *chunkWriter) analyze(ctx context.Context) error {
	if w.copied-w.analyzed < max(analyzeEvery, w.analyzed) {
		return nil
	}
	t := w.p.t
	if err := inTx(ctx, w.conn, w.lockTimeout, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, fmt.Sprintf(`ANALYZE %s, %s, %s`, pgx.Identifier{t.readside, "events"}.Sanitize(),
			pgx.Identifier{t.readside, "outbox"}.Sanitize(), pgx.Identifier{t.readside, "readside_adoption_claims"}.Sanitize()))
		return err
	}); err != nil {
		return fmt.Errorf("adopt %s: analyze: %w", t.name, err)
	}
	w.analyzed = w.copied
	return nil
}

// claimSQL claims the chunk's aggregates that no transaction holds
// (pg_try_advisory_xact_lock: the backfill never waits for the
// application) and nobody claimed, and returns them with the last version
// readside's log has of each, then the aggregates it could not lock.
const claimSQL = `
WITH aggs AS (SELECT DISTINCT t, a FROM unnest($2::text[], $3::text[]) AS x(t, a)),
locked AS MATERIALIZED (
    SELECT t, a FROM aggs WHERE pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext($1), pg_catalog.hashtext(t || pg_catalog.chr(31) || a))),
claimed AS (
    INSERT INTO readside.readside_adoption_claims (table_name, aggregate_type, aggregate_id)
    SELECT $1, t, a FROM locked ON CONFLICT DO NOTHING
    RETURNING aggregate_type AS t, aggregate_id AS a)
SELECT c.t, c.a, coalesce((SELECT max(e.version) FROM readside.events e WHERE e.aggregate_type = c.t AND e.aggregate_id = c.a), 0), true
  FROM claimed c
 UNION ALL
SELECT g.t, g.a, 0, false FROM aggs g WHERE NOT EXISTS (SELECT 1 FROM locked l WHERE l.t = g.t AND l.a = g.a)`

// chunkAttempts bounds the retries of a chunk refused as a serialization
// failure or deadlock (another transaction took an aggregate's next
// version meanwhile, or the read fence passed it).
const chunkAttempts = 10

// write copies rows in one transaction. wait: wait for the aggregate's
// lock (rows of one aggregate) instead of skipping it.
func (w *chunkWriter) write(ctx context.Context, rows []backfillRow, wait bool) error {
	if len(rows) == 0 {
		return nil
	}
	n := dbschema.Name(w.p.t.readside)
	ts, as := make([]string, len(rows)), make([]string, len(rows))
	for i, r := range rows {
		ts[i], as[i] = r.t, r.a
	}
	for attempt := 1; ; attempt++ {
		var copied int64
		var skipped []aggKey
		err := inTx(ctx, w.conn, w.lockTimeout, func(tx pgx.Tx) error {
			copied, skipped = 0, nil
			if wait {
				if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext($1), pg_catalog.hashtext($2 || pg_catalog.chr(31) || $3))`,
					w.p.t.name, rows[0].t, rows[0].a); err != nil {
					return err
				}
			}
			claimed, err := tx.Query(ctx, n.SQL(claimSQL), w.p.t.name, ts, as)
			if err != nil {
				return err
			}
			last := map[aggKey]int64{}
			for claimed.Next() {
				var k aggKey
				var v int64
				var ok bool
				if err := claimed.Scan(&k.t, &k.a, &v, &ok); err != nil {
					return err
				}
				if ok {
					last[k] = v
				} else {
					skipped = append(skipped, k)
				}
			}
			if err := claimed.Err(); err != nil {
				return err
			}
			// The versions readside's log lacks of the aggregates claimed.
			var c columns
			for _, r := range rows {
				if v, ok := last[r.agg]; ok && r.v > v {
					c.add(r)
				}
			}
			if len(c.ids) > 0 {
				if err := tx.QueryRow(ctx, n.SQL(`SELECT readside.readside_adopt_insert($1, $2, $3, $4, $5, $6::text[]::jsonb[], $7::text[]::jsonb[], $8, $9)`),
					w.p.t.name, c.ids, c.ts, c.as, c.ets, c.ds, c.mds, c.vs, c.os).Scan(&copied); err != nil {
					return err
				}
			}
			_, err = tx.Exec(ctx, n.SQL(`UPDATE readside.readside_adoptions SET history_events = history_events + $2 WHERE table_name = $1`), w.p.t.name, copied)
			return err
		})
		if err == nil {
			w.copied += copied
			for _, k := range skipped {
				for _, r := range rows {
					if r.agg == k {
						w.pending[k] = append(w.pending[k], r)
					}
				}
			}
			return nil
		}
		if !retryable(err) || attempt == chunkAttempts {
			return fmt.Errorf("adopt %s: copy history (rows id %d to %d): %w", w.p.t.name, rows[0].id, rows[len(rows)-1].id, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt) * 50 * time.Millisecond):
		}
	}
}

// columns are rows as the arrays readside_adopt_insert takes.
type columns struct {
	ids                  []int64
	ts, as, ets, ds, mds []string
	vs                   []int32
	os                   []time.Time
}

func (c *columns) add(r backfillRow) {
	c.ids, c.ts, c.as, c.ets = append(c.ids, r.id), append(c.ts, r.t), append(c.as, r.a), append(c.ets, r.et)
	c.ds, c.mds, c.vs, c.os = append(c.ds, r.d), append(c.mds, r.md), append(c.vs, int32(r.v)), append(c.os, r.o)
}

// retryable: a serialization failure, a deadlock or a lock timeout.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "40001", "40P01", "55P03":
		return true
	}
	return false
}

// finish turns the trigger's claims off once the history is in readside's
// log (every aggregate of it claimed, by the backfill or a transaction of
// the application's), unless another adoption of the table replaced this
// one meanwhile.
func (p *plan) finish(ctx context.Context, conn *pgx.Conn, install string) error {
	return migrationLocked(ctx, conn, func() error {
		return inTx(ctx, conn, LockTimeoutDefault, func(tx pgx.Tx) error {
			var current string
			err := tx.QueryRow(ctx, `SELECT coalesce(install_txid::text, '') FROM `+pgx.Identifier{p.t.readside, "readside_adoptions"}.Sanitize()+
				` WHERE table_name = $1 FOR UPDATE`, p.t.name).Scan(&current)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				return fmt.Errorf("adopt %s: the adoption was removed while its history was copied", p.t.name)
			case err != nil:
				return fmt.Errorf("adopt %s: %w", p.t.name, err)
			case current != install:
				return nil // adopted again meanwhile: that adoption finishes
			}
			if _, err := tx.Exec(ctx, p.copierSQL(false)); err != nil {
				return fmt.Errorf("adopt %s: %w", p.t.name, err)
			}
			if _, err := tx.Exec(ctx, `UPDATE `+pgx.Identifier{p.t.readside, "readside_adoptions"}.Sanitize()+
				` SET state = 'adopted', backfilled_at = now(), updated_at = now() WHERE table_name = $1`, p.t.name); err != nil {
				return fmt.Errorf("adopt %s: %w", p.t.name, err)
			}
			_, err = tx.Exec(ctx, `DELETE FROM `+pgx.Identifier{p.t.readside, "readside_adoption_claims"}.Sanitize()+` WHERE table_name = $1`, p.t.name)
			if err != nil {
				return fmt.Errorf("adopt %s: %w", p.t.name, err)
			}
			return nil
		})
	})
}
