package projectors

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/readside/readside/checkpoint"
	"github.com/readside/readside/deadletter"
	"github.com/readside/readside/internal/backoff"
	"github.com/readside/readside/outbox"
)

// RebuildArgs rebuilds a projection without downtime (blue/green): a copy of
// its tables is built from the start in its own schema by the fleet, next to
// the live one, which keeps serving; once the copy has caught up, the tables
// are swapped in one transaction and the old ones dropped. Readers never see
// an empty or half-built model. The copy never reads past the live
// projection's checkpoints and applies everything as a replay
// (Batch.Replay): side effects fire once, from the live projection, for
// history and for the events it applies while the rebuild runs alike.
type RebuildArgs struct {
	Projection string `json:"projection" river:"unique"`
}

// Kind implements river.JobArgs.
func (RebuildArgs) Kind() string { return "readside_rebuild" }

// InsertOpts implements river.JobArgsWithInsertOpts.
func (RebuildArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: ControlQueue, UniqueOpts: uniqueByProjection()}
}

// ShadowName is the name of a projection's rebuild in progress, and
// ShadowSchema the schema its tables are built in.
func ShadowName(projection string) string { return short(projection, 50) + "__rebuild" }

// ShadowSchema is the schema a rebuild of projection builds its tables in.
func ShadowSchema(projection string) string { return "readside_rebuild_" + short(projection, 40) }

func short(name string, n int) string {
	if len(name) <= n {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return name[:n-9] + "_" + hex.EncodeToString(sum[:4])
}

type rebuildWorker struct {
	river.WorkerDefaults[RebuildArgs]
	c *Control
}

// Timeout: a rebuild job runs once per check; the build itself happens in
// the fleet between checks.
func (w *rebuildWorker) Timeout(*river.Job[RebuildArgs]) time.Duration { return time.Minute }

func (w *rebuildWorker) Work(ctx context.Context, job *river.Job[RebuildArgs]) error {
	p, err := w.c.projection(job.Args.Projection, job.CreatedAt)
	if err != nil {
		return err
	}
	spec := p.Spec().withDefaults()
	if len(spec.Tables) == 0 {
		return river.JobCancel(fmt.Errorf("rebuild %s: the projection lists no Tables, so it cannot be built in a copy", spec.Name))
	}
	pool := w.c.cfg.Pool
	exists, err := checkpoint.Registered(ctx, pool, ShadowName(spec.Name))
	if err != nil {
		return err
	}
	if !exists {
		if err := StartRebuild(ctx, pool, p); err != nil {
			if errors.Is(err, checkpoint.ErrUnknownProjection) {
				return river.JobCancel(err)
			}
			return err
		}
		w.c.log.Info("control: rebuild started", "projection", spec.Name, "schema", ShadowSchema(spec.Name))
		return river.JobSnooze(w.c.cfg.RebuildCheck)
	}
	switched, err := w.c.trySwitch(ctx, p)
	if err != nil {
		return err
	}
	if !switched {
		return river.JobSnooze(w.c.cfg.RebuildCheck)
	}
	w.c.log.Info("control: rebuild switched in", "projection", spec.Name, "job", job.ID)
	return nil
}

// StartRebuild creates the copy of p's tables in the shadow schema, empties
// it with p.Reset, and registers the shadow projection (same segments, from
// the start, inheriting the live segments' high-water marks). Workers pick it
// up at their next renewal.
func StartRebuild(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, p Projection) error {
	spec := p.Spec().withDefaults()
	shadow, schema := ShadowName(spec.Name), ShadowSchema(spec.Name)
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if err := checkpoint.Exists(ctx, tx, spec.Name); err != nil {
			return err
		}
		var live string
		if err := tx.QueryRow(ctx, `SELECT current_schema()`).Scan(&live); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE SCHEMA `+pgx.Identifier{schema}.Sanitize()); err != nil {
			return fmt.Errorf("rebuild %s: %w", spec.Name, err)
		}
		for _, t := range spec.Tables {
			if _, err := tx.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s (LIKE %s INCLUDING ALL)`,
				pgx.Identifier{schema, t}.Sanitize(), pgx.Identifier{live, t}.Sanitize())); err != nil {
				return fmt.Errorf("rebuild %s: copy table %s: %w", spec.Name, t, err)
			}
		}
		if _, err := tx.Exec(ctx, `SELECT set_config('search_path', $1, true)`, pgx.Identifier{schema}.Sanitize()+", "+pgx.Identifier{live}.Sanitize()); err != nil {
			return err
		}
		if err := p.Reset(ctx, tx); err != nil {
			return fmt.Errorf("rebuild %s: reset the copy: %w", spec.Name, err)
		}
		if _, err := tx.Exec(ctx, `SELECT set_config('search_path', $1, true)`, pgx.Identifier{live}.Sanitize()); err != nil {
			return err
		}
		if err := checkpoint.RegisterShadow(ctx, tx, shadow, spec.Name, schema); err != nil {
			return fmt.Errorf("rebuild %s: %w", spec.Name, err)
		}
		return nil
	})
}

// fetchBehindLive reads the next batch of a rebuild's copy (segment of the
// live projection live), no further than the live projection's checkpoint:
// everything the copy applies, the live projection has applied already and
// fired its side effects for, so the copy applies it all as a replay. A copy
// allowed past the live projection would fire an event's side effects
// first, and the live projection (which cannot know) again; one allowed to
// fire above the mark it inherited would fire again what the live projection
// applied after the rebuild started. Reading the live checkpoint before the
// fetch makes the bound a cursor the fetch's window has passed, so the rows
// up to it are all in the batch. The switch stops the live projection and
// waits for the copy to reach it.
func fetchBehindLive(ctx context.Context, db outbox.Querier, live string, segment int, after outbox.Cursor, limit int, f outbox.Filter) (*outbox.Batch, error) {
	var bound outbox.Cursor
	if err := db.QueryRow(ctx, `SELECT cursor_txid, cursor_position FROM checkpoints WHERE projection = $1 AND segment = $2`,
		live, segment).Scan(&bound.TxID, &bound.Position); err != nil {
		return nil, fmt.Errorf("rebuild: checkpoint of %s/%d: %w", live, segment, err)
	}
	if !after.Less(bound) {
		return &outbox.Batch{Next: after}, nil // level with the live projection: wait for it
	}
	b, err := outbox.Fetch(ctx, db, after, limit, f)
	if err != nil || !bound.Less(b.Next) {
		return b, err
	}
	n := 0
	for n < len(b.Events) && !bound.Less(b.Events[n].Cursor) {
		n++
	}
	return &outbox.Batch{Events: b.Events[:n], Next: bound, Scanned: n}, nil
}

// trySwitch swaps the copy in once it has caught up. It locks the live
// checkpoints (live batches wait), gives the copy up to SwitchWait to reach
// the live cursors, then locks the copy's checkpoints and, in the same
// transaction, moves the live tables out and the copy's in, points the live
// checkpoints at the copy's cursors with a new lease epoch (fencing every
// batch that waited), carries the copy's dead letters over (the live
// projection's discards stand), and drops the shadow registration. The old
// tables are dropped after the commit.
func (c *Control) trySwitch(ctx context.Context, p Projection) (bool, error) {
	spec := p.Spec().withDefaults()
	shadow, schema := ShadowName(spec.Name), ShadowSchema(spec.Name)
	pool := c.cfg.Pool

	// Cheap check first: is the copy close to the live projection?
	var behind int64
	if err := pool.QueryRow(ctx, `SELECT coalesce(max(x.n), 0) FROM (
		SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox o WHERE (o.txid, o.position) > (s.cursor_txid, s.cursor_position)
		         AND (o.txid, o.position) <= (l.cursor_txid, l.cursor_position) LIMIT 10001) y) AS n
		  FROM checkpoints s JOIN checkpoints l ON l.projection = $2 AND l.segment = s.segment
		 WHERE s.projection = $1) x`, shadow, spec.Name).Scan(&behind); err != nil {
		return false, err
	}
	if behind > 10000 {
		return false, nil
	}

	retired := "readside_retired_" + short(spec.Name, 40)
	tx, err := pool.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '5s'`); err != nil {
		return false, err
	}
	live, err := checkpoint.LockForOperation(ctx, tx, spec.Name)
	if err != nil {
		return false, err
	}
	caughtUp := func(read func(context.Context, checkpoint.DB, string) (map[int]outbox.Cursor, error)) (bool, error) {
		copies, err := read(ctx, tx, shadow)
		if err != nil {
			return false, err
		}
		for seg, cur := range copies {
			if cur.Less(live[seg]) {
				return false, nil
			}
		}
		return len(copies) == len(live), nil
	}
	deadline := time.Now().Add(c.cfg.SwitchWait)
	for {
		ok, err := caughtUp(checkpoint.Cursors)
		if err != nil {
			return false, err
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			return false, nil // the live projection resumes; try again later
		}
		if err := backoff.Sleep(ctx, 20*time.Millisecond); err != nil {
			return false, err
		}
	}
	// Wait for the copy's batches in flight, and stop new ones.
	if ok, err := caughtUp(checkpoint.LockForOperation); err != nil || !ok {
		return false, err
	}
	var liveSchema string
	if err := tx.QueryRow(ctx, `SELECT current_schema()`).Scan(&liveSchema); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, `CREATE SCHEMA `+pgx.Identifier{retired}.Sanitize()); err != nil {
		return false, err
	}
	for _, t := range spec.Tables {
		if _, err := tx.Exec(ctx, fmt.Sprintf(`ALTER TABLE %s SET SCHEMA %s`, pgx.Identifier{liveSchema, t}.Sanitize(), pgx.Identifier{retired}.Sanitize())); err != nil {
			return false, fmt.Errorf("switch %s: %w", spec.Name, err)
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf(`ALTER TABLE %s SET SCHEMA %s`, pgx.Identifier{schema, t}.Sanitize(), pgx.Identifier{liveSchema}.Sanitize())); err != nil {
			return false, fmt.Errorf("switch %s: %w", spec.Name, err)
		}
	}
	if err := checkpoint.Adopt(ctx, tx, spec.Name, shadow); err != nil {
		return false, err
	}
	if err := deadletter.Adopt(ctx, tx, spec.Name, shadow); err != nil {
		return false, err
	}
	if err := checkpoint.Unregister(ctx, tx, shadow); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, `DROP SCHEMA `+pgx.Identifier{schema}.Sanitize()); err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, err
	}
	if _, err := pool.Exec(ctx, `DROP SCHEMA `+pgx.Identifier{retired}.Sanitize()+` CASCADE`); err != nil {
		c.log.Warn("control: dropping the retired tables failed; drop the schema by hand", "schema", retired, "err", err)
	}
	return true, nil
}
