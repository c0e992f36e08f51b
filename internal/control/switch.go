package control

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/internal/backoff"
	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/deadletter"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// nearLive is how many outbox rows, at most in any segment, a copy may be
// behind the live projection for a switch to be tried: the switch holds the
// live projection back while the copy catches up the rest.
const nearLive = 10_000

// rebuildSwitch is one attempt to swap a rebuild's copy in, in one
// transaction.
type rebuildSwitch struct {
	spec    projectors.Spec
	shadow  string // the copy's projection
	schema  string // the copy's tables
	retired string // where the live tables go, to be dropped after the commit
	tx      pgx.Tx
	live    map[int]outbox.Cursor // the live checkpoints, locked
}

// trySwitch swaps the copy in once it has caught up: it locks the live
// checkpoints (live batches wait), waits up to SwitchWait for the copy to
// reach them, then swaps the tables, points the live checkpoints at the
// copy's cursors with a new lease epoch (fencing every batch that waited),
// carries the copy's dead letters over (the live projection's discards
// stand) and drops the shadow registration, all in one transaction. The
// old tables are dropped after the commit. It returns false, changing
// nothing, when the copy is not there yet.
func (c *Control) trySwitch(ctx context.Context, p projectors.Projection) (bool, error) {
	spec := p.Spec()
	live := c.db.Schema().String()
	s := &rebuildSwitch{spec: spec, shadow: ShadowName(spec.Name), schema: ShadowSchema(live, spec.Name),
		retired: retiredSchema(live, spec.Name)}
	// The copy's schema is the one its rebuild registered (a rebuild
	// started by an earlier binary, or under another --schema, named it).
	regs, err := checkpoint.Registry(ctx, c.db)
	if err != nil {
		return false, err
	}
	for _, r := range regs {
		if r.Name == s.shadow && r.Schema != "" {
			s.schema = r.Schema
		}
	}
	if near, err := s.copyNearLive(ctx, c.db); err != nil || !near {
		return false, err
	}
	tx, err := c.db.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	s.tx = tx
	if err := s.lockLive(ctx); err != nil {
		return false, err
	}
	if ok, err := s.awaitCopy(ctx, c.cfg.SwitchWait); err != nil || !ok {
		return false, err
	}
	for _, step := range []func(context.Context) error{s.swapTables, s.adoptCheckpoints, s.moveDeadLetters, s.dropShadow} {
		if err := step(ctx); err != nil {
			return false, fmt.Errorf("switch %s: %w", spec.Name, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return false, err
	}
	if _, err := c.db.Exec(ctx, `DROP SCHEMA `+pgx.Identifier{s.retired}.Sanitize()+` CASCADE`); err != nil {
		c.log.Warn("control: dropping the retired tables failed; the next switch of the projection drops them, or drop the schema by hand", "schema", s.retired, "err", err)
	}
	return true, nil
}

// copyNearLive is the cheap check before any lock: is the copy within
// nearLive rows of the live projection in every segment?
func (s *rebuildSwitch) copyNearLive(ctx context.Context, db checkpoint.DB) (bool, error) {
	var behind int64
	if err := db.QueryRow(ctx, `SELECT coalesce(max(x.n), 0) FROM (
		SELECT (SELECT count(*) FROM (SELECT 1 FROM readside.outbox o WHERE (o.txid, o.position) > (s.cursor_txid, s.cursor_position)
		         AND (o.txid, o.position) <= (l.cursor_txid, l.cursor_position) LIMIT $3 + 1) y) AS n
		  FROM readside.checkpoints s JOIN readside.checkpoints l ON l.projection = $2 AND l.segment = s.segment
		 WHERE s.projection = $1) x`, s.shadow, s.spec.Name, nearLive).Scan(&behind); err != nil {
		return false, err
	}
	return behind <= nearLive, nil
}

// lockLive locks the live checkpoints, waiting at most 5 s for batches in
// flight: from here the live projection stands still until the switch
// commits or gives up.
func (s *rebuildSwitch) lockLive(ctx context.Context) error {
	if _, err := s.tx.Exec(ctx, `SET LOCAL lock_timeout = '5s'`); err != nil {
		return err
	}
	live, err := checkpoint.LockForOperation(ctx, s.tx, s.spec.Name)
	s.live = live
	return err
}

// awaitCopy gives the copy up to wait to reach the live cursors, then locks
// its checkpoints (waiting for its batches in flight, and stopping new
// ones) and checks again. False means the copy is not there: the live
// projection resumes when the transaction rolls back; try again later.
func (s *rebuildSwitch) awaitCopy(ctx context.Context, wait time.Duration) (bool, error) {
	deadline := time.Now().Add(wait)
	for {
		ok, err := s.caughtUp(ctx, checkpoint.Cursors)
		if err != nil {
			return false, err
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		if err := backoff.Sleep(ctx, 20*time.Millisecond); err != nil {
			return false, err
		}
	}
	return s.caughtUp(ctx, checkpoint.LockForOperation)
}

// caughtUp reads the copy's cursors with read and says whether every
// segment has reached the live one.
func (s *rebuildSwitch) caughtUp(ctx context.Context, read func(context.Context, checkpoint.DB, string) (map[int]outbox.Cursor, error)) (bool, error) {
	copies, err := read(ctx, s.tx, s.shadow)
	if err != nil {
		return false, err
	}
	for seg, cur := range copies {
		if cur.Less(s.live[seg]) {
			return false, nil
		}
	}
	return len(copies) == len(s.live), nil
}

// swapTables moves the live tables into the retired schema (dropping one an
// earlier switch left behind) and the copy's, with the live ones' grants and
// owner, into the live tables' schemas. It refuses when other objects depend
// on the live tables.
func (s *rebuildSwitch) swapTables(ctx context.Context) error {
	tables, err := liveTables(ctx, s.tx, s.spec)
	if err != nil {
		return err
	}
	if err := checkDependents(ctx, s.tx, s.spec, tables); err != nil {
		return err
	}
	for _, t := range s.spec.Tables {
		if err := carryGrants(ctx, s.tx, pgx.Identifier{tables[t], t}.Sanitize(), pgx.Identifier{s.schema, t}.Sanitize()); err != nil {
			return err
		}
	}
	// A switch that crashed between its commit and the drop of the
	// retired tables left them behind: drop them now, in this transaction,
	// instead of failing on the name until an operator does.
	if _, err := s.tx.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{s.retired}.Sanitize()+` CASCADE`); err != nil {
		return fmt.Errorf("drop the tables an earlier switch retired: %w", err)
	}
	if _, err := s.tx.Exec(ctx, `CREATE SCHEMA `+pgx.Identifier{s.retired}.Sanitize()); err != nil {
		return err
	}
	move := func(from, table, to string) error {
		_, err := s.tx.Exec(ctx, fmt.Sprintf(`ALTER TABLE %s SET SCHEMA %s`, pgx.Identifier{from, table}.Sanitize(), pgx.Identifier{to}.Sanitize()))
		return err
	}
	for _, t := range s.spec.Tables {
		if err := move(tables[t], t, s.retired); err != nil {
			return err
		}
		if err := move(s.schema, t, tables[t]); err != nil {
			return err
		}
	}
	return nil
}

// adoptCheckpoints points the live checkpoints at the copy's cursors.
func (s *rebuildSwitch) adoptCheckpoints(ctx context.Context) error {
	return checkpoint.Adopt(ctx, s.tx, s.spec.Name, s.shadow)
}

// moveDeadLetters carries the copy's dead letters over to the live
// projection.
func (s *rebuildSwitch) moveDeadLetters(ctx context.Context) error {
	return deadletter.Adopt(ctx, s.tx, s.spec.Name, s.shadow)
}

// dropShadow unregisters the copy's projection and drops its, now empty,
// schema.
func (s *rebuildSwitch) dropShadow(ctx context.Context) error {
	if err := checkpoint.Unregister(ctx, s.tx, s.shadow); err != nil {
		return err
	}
	_, err := s.tx.Exec(ctx, `DROP SCHEMA `+pgx.Identifier{s.schema}.Sanitize())
	return err
}
