package control

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// ErrVerifyUnsupported refuses to verify a projection that lists no
// Tables: there is nothing to build a copy of.
var ErrVerifyUnsupported = errors.New("the projection lists no Tables, so it cannot be rebuilt into a copy to compare")

// ErrVerifyRunning refuses a second verification of a projection while one
// runs (they would share the scratch schema).
var ErrVerifyRunning = errors.New("a verification of this projection is running")

// ErrLiveTablesReplaced ends a verification during which the live tables
// were truncated or replaced (a reset to the start, a rebuild switching
// in): TRUNCATE is not MVCC-safe, so the comparison would not be at one
// point. Verify again.
var ErrLiveTablesReplaced = errors.New("the live tables were truncated or replaced while verifying (a reset or a rebuild's switch); verify again")

// VerifyOptions restricts a verification.
type VerifyOptions struct {
	// AggregateIDs restricts the comparison to the rows of these
	// aggregates, in the tables with a key column (projectors.Spec.Keys);
	// tables without one are not compared. Empty means every row of every
	// table. The copy is built from the whole log either way.
	AggregateIDs []string
}

// VerifiedTable is what the comparison found in one table.
type VerifiedTable struct {
	Name string
	// Key is the table's aggregate column; "" when it has none.
	Key string
	// Compared is false for a table left out (no key column while
	// VerifyOptions.AggregateIDs restricts the comparison).
	Compared bool
	// OnlyLive counts the live table's rows that the copy lacks (or has
	// fewer of); OnlyCopy the copy's rows that the live table lacks. A
	// changed row counts in both.
	OnlyLive, OnlyCopy int64
}

// Differs reports whether the table differs from the copy.
func (t VerifiedTable) Differs() bool { return t.OnlyLive+t.OnlyCopy > 0 }

// DifferingAggregate is an aggregate whose rows differ between the live
// tables and the copy.
type DifferingAggregate struct {
	// Type is the projection's aggregate type; "" when it takes several
	// (the key column holds ids only).
	Type, ID string
	// Tables where its rows differ, in Spec.Tables order.
	Tables []string
	// OnlyLive and OnlyCopy count its differing rows, as in VerifiedTable.
	OnlyLive, OnlyCopy int64
}

// Verification is the result of Verify.
type Verification struct {
	Projection string
	// Checkpoints are the live checkpoints, by segment, that the copy was
	// built up to and compared at.
	Checkpoints map[int]outbox.Cursor
	// Events is how many events the copy applied.
	Events int
	Tables []VerifiedTable
	// Aggregates that differ, sorted by id.
	Aggregates []DifferingAggregate
	// Started and Finished bound the verification (Finished after the
	// repair, when one was asked for).
	Started, Finished time.Time
	// Repaired is what the repair of the differing aggregates did, when
	// asked for (readside.VerifyOptions.Repair).
	Repaired []RepairedAggregate
}

// Verification results, as recorded and exported as a metric.
const (
	VerifyOK       = "ok"       // the copy and the live tables are the same
	VerifyDiffers  = "differs"  // they differ
	VerifyRepaired = "repaired" // they differed in aggregates only, all repaired
	VerifyError    = "error"    // the verification did not finish
)

// Result is VerifyOK, VerifyDiffers or VerifyRepaired.
func (v *Verification) Result() string {
	switch {
	case !v.Differs():
		return VerifyOK
	case len(v.Unkeyed()) == 0 && len(v.Repaired) == len(v.Aggregates) && len(v.Aggregates) > 0:
		return VerifyRepaired
	default:
		return VerifyDiffers
	}
}

// Differs reports whether any compared table differs from the copy.
func (v *Verification) Differs() bool {
	for _, t := range v.Tables {
		if t.Differs() {
			return true
		}
	}
	return false
}

// Unkeyed lists the differing tables without a key column: differences no
// repair by aggregate can fix (a rebuild does).
func (v *Verification) Unkeyed() []string {
	var out []string
	for _, t := range v.Tables {
		if t.Differs() && t.Key == "" {
			out = append(out, t.Name)
		}
	}
	return out
}

// verifyLockKey is the first key of the session advisory lock a
// verification holds on its scratch schema's name ('rsvf'; the read
// fence's keys are 'rswr', 'rsrg', 'rsrd').
const verifyLockKey = 1920169574

// VerifySchema is the scratch schema a verification of projection builds
// its copy in, beside readside's schema.
func VerifySchema(schema, projection string) string {
	return schema + "_verify_" + short(projection, 63-len(schema)-len("_verify_"))
}

// Verify rebuilds p's read model from the log into a scratch schema, up to
// the live checkpoints, and compares it with the live tables row by row.
//
// The comparison is at one point while the fleet runs, without stopping
// it: the copy is built and compared in ONE REPEATABLE READ transaction.
// Its snapshot holds the live checkpoints C, the live tables as the batches
// up to C left them (a batch commits its rows and its checkpoint
// together), and the dead letters (which events the live projection
// skipped); every event up to C is final in it (the read window passed C).
// The copy applies the events up to their segment's checkpoint in C (or,
// after a scale, their bucket's floor) that are neither parked nor
// discarded, as replays, and the two sides are compared with
// EXCEPT ALL both ways. Nothing is locked on the live side: batches commit
// meanwhile, invisible to the snapshot. The transaction is always rolled
// back, so nothing the projection's code does in it (a side-effect job it
// enqueues) outlives it. Its costs: one rebuild's work, during which the
// snapshot holds back vacuum; the live tables are read, under ACCESS SHARE,
// only at the end.
//
// TRUNCATE is not MVCC-safe: a reset to the start (or a rebuild's switch)
// committed during the verification would show the snapshot an empty (or
// another) table, so the live tables' relfilenodes are checked after the
// comparison and ErrLiveTablesReplaced returned when they changed.
//
// The scratch schema's tables are created (UNLOGGED, like the live ones)
// and emptied with p.Reset in a transaction of their own before, so the
// long transaction takes no lock on the live tables until it compares; the
// schema is dropped afterwards, on error and cancellation too. A session
// advisory lock on a dedicated connection keeps two verifications of the
// projection apart, and lets the next one drop a schema a killed one left.
func Verify(ctx context.Context, pool *dbschema.Pool, p projectors.Projection, o VerifyOptions) (*Verification, error) {
	spec, started := p.Spec(), time.Now()
	if len(spec.Tables) == 0 {
		return nil, fmt.Errorf("verify %s: %w", spec.Name, ErrVerifyUnsupported)
	}
	for t := range spec.Keys {
		if !slices.Contains(spec.Tables, t) {
			return nil, fmt.Errorf("verify %s: Spec.Keys names table %s, which is not one of its Tables", spec.Name, t)
		}
	}
	scratch := VerifySchema(pool.Schema().String(), spec.Name)
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", spec.Name, err)
	}
	defer pc.Release()
	conn := pool.Schema().Conn(pc.Conn())
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_try_advisory_lock($1, pg_catalog.hashtext($2))`, verifyLockKey, scratch).Scan(&locked); err != nil {
		return nil, fmt.Errorf("verify %s: %w", spec.Name, err)
	}
	if !locked {
		return nil, fmt.Errorf("verify %s: %w", spec.Name, ErrVerifyRunning)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if pc.Conn().IsClosed() { // a cancelled statement closes it, and its lock goes with it
			dropScratch(cctx, pool, scratch)
			return
		}
		_, _ = conn.Exec(cctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{scratch}.Sanitize()+` CASCADE`)
		_, _ = conn.Exec(cctx, `SELECT pg_catalog.pg_advisory_unlock($1, pg_catalog.hashtext($2))`, verifyLockKey, scratch)
	}()
	// A schema of this name is a killed verification's: this one holds the lock.
	if _, err := conn.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{scratch}.Sanitize()+` CASCADE`); err != nil {
		return nil, fmt.Errorf("verify %s: drop the scratch schema a killed verification left: %w", spec.Name, err)
	}
	rels, err := createScratch(ctx, conn, p, scratch)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", spec.Name, err)
	}
	v, err := compareAtSnapshot(ctx, conn, p, scratch, rels, o)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", spec.Name, err)
	}
	v.Started = started
	return v, nil
}

// dropScratch drops a verification's scratch schema from another
// connection, unless a new verification holds the lock (it drops what it
// finds itself).
func dropScratch(ctx context.Context, pool *dbschema.Pool, scratch string) {
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return
	}
	defer pc.Release()
	conn := pool.Schema().Conn(pc.Conn())
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_try_advisory_lock($1, pg_catalog.hashtext($2))`, verifyLockKey, scratch).Scan(&locked); err != nil || !locked {
		return
	}
	_, _ = conn.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{scratch}.Sanitize()+` CASCADE`)
	_, _ = conn.Exec(ctx, `SELECT pg_catalog.pg_advisory_unlock($1, pg_catalog.hashtext($2))`, verifyLockKey, scratch)
}

// liveRelation is a live table as the verification found it when it
// created the copy: its schema, and its oid and relfilenode, which change
// when it is truncated or replaced.
type liveRelation struct {
	schema         string
	oid, filenode  int64
	qualifiedIdent string
}

const relationSQL = `SELECT coalesce(pg_catalog.to_regclass($1)::pg_catalog.oid::pg_catalog.int8, 0),
       coalesce(pg_catalog.pg_relation_filenode(pg_catalog.to_regclass($1))::pg_catalog.int8, 0)`

// createScratch creates the scratch schema with an empty UNLOGGED copy of
// each of p's tables (p.Reset run on them), in a short transaction of its
// own, and returns the live tables.
func createScratch(ctx context.Context, conn *dbschema.Conn, p projectors.Projection, scratch string) (map[string]liveRelation, error) {
	spec := p.Spec()
	rels := map[string]liveRelation{}
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '5s'`); err != nil {
			return err
		}
		if err := checkpoint.Exists(ctx, tx, spec.Name); err != nil {
			return err
		}
		tables, err := liveTables(ctx, tx, spec)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE SCHEMA `+pgx.Identifier{scratch}.Sanitize()); err != nil {
			return fmt.Errorf("create the scratch schema: %w", err)
		}
		for _, t := range spec.Tables {
			live := pgx.Identifier{tables[t], t}.Sanitize()
			if _, err := tx.Exec(ctx, fmt.Sprintf(`CREATE UNLOGGED TABLE %s (LIKE %s INCLUDING ALL)`,
				pgx.Identifier{scratch, t}.Sanitize(), live)); err != nil {
				return fmt.Errorf("copy table %s: %w", t, err)
			}
			r := liveRelation{schema: tables[t], qualifiedIdent: live}
			if err := tx.QueryRow(ctx, relationSQL, live).Scan(&r.oid, &r.filenode); err != nil {
				return err
			}
			rels[t] = r
		}
		ptx, err := dbschema.Projection(ctx, tx, scratch)
		if err != nil {
			return err
		}
		if err := p.Reset(ctx, ptx); err != nil {
			return fmt.Errorf("reset the copy: %w", err)
		}
		return nil
	})
	return rels, err
}

// verifyBatch is how many events one read of the log returns.
const verifyBatch = projectors.BatchSizeDefault

// verifyEventsSQL reads the log in cursor order after ($1, $2) up to the
// furthest live checkpoint or bucket floor ($3, $4), of the projection's
// aggregate and event types, with each event's segment and bucket. Events up to a checkpoint are
// final (the read window passed them), and the events table holds pruned
// history too.
const verifyEventsSQL = `
SELECT e.txid, e.id, e.aggregate_type, e.aggregate_id, e.event_type, e.version, e.schema_version,
       e.event_data, e.metadata, e.occurred_at, readside.readside_segment(e.aggregate_id, $5::int),
       readside.readside_segment(e.aggregate_id, 64)
  FROM readside.events e
 WHERE (e.txid, e.id) > ($1::xid8, $2::bigint) AND (e.txid, e.id) <= ($3::xid8, $4::bigint)
   AND (cardinality($6::text[]) = 0 OR e.aggregate_type = ANY ($6::text[]))
   AND (cardinality($7::text[]) = 0 OR e.event_type = ANY ($7::text[]))
 ORDER BY e.txid, e.id
 LIMIT $8`

// skippedSQL lists the events the live projection has not applied: parked
// (a failed event and its aggregate's later ones) and discarded.
const skippedSQL = `SELECT event_id FROM readside.dead_letters WHERE projection = $1 AND status IN ('parked', 'discarded')`

// floorsSQL reads the bucket floors a scale left: every event of a bucket
// at or below its floor has been applied (or parked, or discarded), even
// above its segment's cursor (migration 016).
const floorsSQL = `SELECT bucket, floor_txid, floor_position FROM readside.checkpoint_buckets WHERE projection = $1`

// compareAtSnapshot builds the copy and compares it, in one REPEATABLE
// READ transaction that it rolls back (see Verify).
func compareAtSnapshot(ctx context.Context, conn *dbschema.Conn, p projectors.Projection, scratch string,
	rels map[string]liveRelation, o VerifyOptions) (*Verification, error) {
	spec := p.Spec()
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// Chosen, not inherited: no statement limit (the caller's context
	// bounds the work), a short wait for a lock on a live table, and a
	// session that stops between statements (its client gone) ends rather
	// than holding the snapshot.
	if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = '5s';
		SET LOCAL idle_in_transaction_session_timeout = '1min'`); err != nil {
		return nil, err
	}
	v := &Verification{Projection: spec.Name}
	if v.Checkpoints, err = checkpoint.Cursors(ctx, tx, spec.Name); err != nil {
		return nil, err
	}
	if len(v.Checkpoints) == 0 {
		return nil, fmt.Errorf("%w %q", checkpoint.ErrUnknownProjection, spec.Name)
	}
	if v.Events, err = buildCopy(ctx, tx, p, scratch, v.Checkpoints); err != nil {
		return nil, err
	}
	byID := map[string]*DifferingAggregate{}
	for _, t := range spec.Tables {
		vt, err := compareTable(ctx, tx, spec, t, rels[t].qualifiedIdent, pgx.Identifier{scratch, t}.Sanitize(), o, byID)
		if err != nil {
			return nil, fmt.Errorf("compare %s: %w", t, err)
		}
		v.Tables = append(v.Tables, vt)
	}
	// After the comparison, which holds ACCESS SHARE on the live tables
	// until the transaction ends: unchanged here means unchanged since the
	// copy was created.
	for _, t := range spec.Tables {
		was := rels[t]
		now := was
		if err := tx.QueryRow(ctx, relationSQL, was.qualifiedIdent).Scan(&now.oid, &now.filenode); err != nil {
			return nil, err
		}
		if now != was {
			return nil, fmt.Errorf("table %s: %w", t, ErrLiveTablesReplaced)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(byID)) {
		v.Aggregates = append(v.Aggregates, *byID[id])
	}
	v.Finished = time.Now()
	return v, nil
}

// buildCopy applies to the copy, as replays, every event that the live
// projection applied: up to its segment's checkpoint or its bucket's floor
// (as repair reads them), not parked, not discarded; in cursor order. It
// returns how many.
func buildCopy(ctx context.Context, tx pgx.Tx, p projectors.Projection, scratch string, cps map[int]outbox.Cursor) (int, error) {
	spec := p.Spec()
	skipped := map[int64]bool{}
	rows, err := tx.Query(ctx, skippedSQL, spec.Name)
	if err != nil {
		return 0, err
	}
	var id int64
	if _, err := pgx.ForEachRow(rows, []any{&id}, func() error { skipped[id] = true; return nil }); err != nil {
		return 0, fmt.Errorf("dead letters: %w", err)
	}
	floors := map[int]outbox.Cursor{}
	rows, err = tx.Query(ctx, floorsSQL, spec.Name)
	if err != nil {
		return 0, err
	}
	var bucket int
	var floor outbox.Cursor
	if _, err := pgx.ForEachRow(rows, []any{&bucket, &floor.TxID, &floor.Position}, func() error { floors[bucket] = floor; return nil }); err != nil {
		return 0, fmt.Errorf("bucket floors: %w", err)
	}
	var upTo outbox.Cursor
	for _, c := range cps {
		if upTo.Less(c) {
			upTo = c
		}
	}
	for _, f := range floors {
		if upTo.Less(f) {
			upTo = f
		}
	}
	aggTypes, eventTypes := append([]string{}, spec.AggregateTypes...), append([]string{}, spec.EventTypes...)
	var after outbox.Cursor
	applied := 0
	for {
		rows, err := tx.Query(ctx, verifyEventsSQL, after.TxID, after.Position, upTo.TxID, upTo.Position,
			len(cps), aggTypes, eventTypes, verifyBatch)
		if err != nil {
			return applied, fmt.Errorf("read the log after %s: %w", after, err)
		}
		bySegment := map[int][]outbox.Event{}
		n := 0
		var e outbox.Event
		var seg, bucket int
		if _, err := pgx.ForEachRow(rows, []any{&e.Cursor.TxID, &e.Cursor.Position, &e.AggregateType, &e.AggregateID, &e.Type,
			&e.Version, &e.SchemaVersion, &e.Data, &e.Metadata, &e.OccurredAt, &seg, &bucket}, func() error {
			n++
			after = e.Cursor
			c, ok := cps[seg]
			f, floored := floors[bucket]
			applied := (ok && !c.Less(e.Cursor)) || (floored && !f.Less(e.Cursor))
			if applied && !skipped[e.ID()] {
				ev := e
				ev.Data, ev.Metadata = slices.Clone(e.Data), slices.Clone(e.Metadata)
				bySegment[seg] = append(bySegment[seg], ev)
			}
			return nil
		}); err != nil {
			return applied, fmt.Errorf("read the log after %s: %w", after, err)
		}
		for _, seg := range slices.Sorted(maps.Keys(bySegment)) {
			events := bySegment[seg]
			ptx, err := dbschema.Projection(ctx, tx, scratch)
			if err != nil {
				return applied, err
			}
			// Replay: the live projection applied these and fired their side
			// effects; the transaction is rolled back anyway.
			if err := projectors.ApplyBatch(ctx, ptx, p, &projectors.Batch{Events: events, Segment: seg, Replay: true}); err != nil {
				return applied, fmt.Errorf("the copy cannot apply segment %d's events %d to %d, which the live projection applied: %w",
					seg, events[0].ID(), events[len(events)-1].ID(), err)
			}
			applied += len(events)
		}
		if n < verifyBatch {
			return applied, nil
		}
	}
}

// columnsSQL lists a table's columns in order.
const columnsSQL = `SELECT a.attname::pg_catalog.text FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = pg_catalog.to_regclass($1)::pg_catalog.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`

// compareTable compares a live table with its copy (EXCEPT ALL both ways,
// every column but the volatile ones, as text) and adds the differing
// rows' aggregates to byID.
func compareTable(ctx context.Context, tx pgx.Tx, spec projectors.Spec, table, live, copied string, o VerifyOptions,
	byID map[string]*DifferingAggregate) (VerifiedTable, error) {
	vt := VerifiedTable{Name: table, Key: spec.Keys[table]}
	if vt.Key == "" && len(o.AggregateIDs) > 0 {
		return vt, nil
	}
	vt.Compared = true
	rows, err := tx.Query(ctx, columnsSQL, live)
	if err != nil {
		return vt, err
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return vt, err
	}
	volatile := map[string]bool{}
	for _, c := range spec.Volatile {
		if t, col, ok := strings.Cut(c, "."); ok && t == table {
			if !slices.Contains(cols, col) {
				return vt, fmt.Errorf("Spec.Volatile names column %s, which the table does not have", c)
			}
			volatile[col] = true
		}
	}
	var exprs []string
	key := "NULL::pg_catalog.text"
	for _, c := range cols {
		if volatile[c] {
			continue
		}
		alias := fmt.Sprintf("c%d", len(exprs))
		exprs = append(exprs, fmt.Sprintf("%s::pg_catalog.text AS %s", pgx.Identifier{c}.Sanitize(), alias))
		if c == vt.Key {
			key = alias
		}
	}
	if vt.Key != "" && key == "NULL::pg_catalog.text" {
		return vt, fmt.Errorf("Spec.Keys names column %s, which the table does not have", vt.Key)
	}
	if len(exprs) == 0 {
		return vt, errors.New("every column is volatile: nothing to compare")
	}
	where := ""
	if len(o.AggregateIDs) > 0 {
		where = ` WHERE ` + pgx.Identifier{vt.Key}.Sanitize() + `::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])`
	}
	sel := `SELECT ` + strings.Join(exprs, ", ") + ` FROM %s` + where
	sql := `WITH l AS (` + fmt.Sprintf(sel, live) + `), c AS (` + fmt.Sprintf(sel, copied) + `),
d AS (SELECT true AS live, x.* FROM (SELECT * FROM l EXCEPT ALL SELECT * FROM c) x
      UNION ALL
      SELECT false, y.* FROM (SELECT * FROM c EXCEPT ALL SELECT * FROM l) y)
SELECT ` + key + `, count(*) FILTER (WHERE live), count(*) FILTER (WHERE NOT live) FROM d GROUP BY 1 ORDER BY 1`
	var args []any
	if len(o.AggregateIDs) > 0 {
		args = append(args, o.AggregateIDs)
	}
	rows, err = tx.Query(ctx, sql, args...)
	if err != nil {
		return vt, err
	}
	var id *string
	var onlyLive, onlyCopy int64
	_, err = pgx.ForEachRow(rows, []any{&id, &onlyLive, &onlyCopy}, func() error {
		vt.OnlyLive += onlyLive
		vt.OnlyCopy += onlyCopy
		if vt.Key == "" || id == nil {
			return nil
		}
		a := byID[*id]
		if a == nil {
			a = &DifferingAggregate{ID: *id}
			if len(spec.AggregateTypes) == 1 {
				a.Type = spec.AggregateTypes[0]
			}
			byID[*id] = a
		}
		if !slices.Contains(a.Tables, table) {
			a.Tables = append(a.Tables, table)
		}
		a.OnlyLive += onlyLive
		a.OnlyCopy += onlyCopy
		return nil
	})
	return vt, err
}

// Record stores a verification's outcome in readside.verifications (what
// the verify metrics read): v's, or, when v is nil, that the verification
// started at started failed with cause.
func Record(ctx context.Context, db checkpoint.DB, projection string, started time.Time, v *Verification, cause error) error {
	result, finished := VerifyError, time.Now()
	var differing int
	var rows, events int64
	var msg *string
	if v != nil {
		result, finished, events = v.Result(), v.Finished, int64(v.Events)
		differing = len(v.Aggregates) + len(v.Unkeyed())
		for _, t := range v.Tables {
			rows += t.OnlyLive + t.OnlyCopy
		}
	}
	if cause != nil {
		s := dbschema.Clip(cause.Error(), 2000)
		msg = &s
		if v == nil || result == VerifyOK {
			result = VerifyError
		}
	}
	if _, err := db.Exec(ctx, `INSERT INTO readside.verifications
		(projection, started_at, finished_at, result, differing, differing_rows, events, error)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, projection, started, finished, result, differing, rows, events, msg); err != nil {
		return fmt.Errorf("record the verification of %s: %w", projection, err)
	}
	return nil
}
