package modeltest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/projectors"
)

// payload is what the generated events carry: marks that make the test
// projection misbehave.
type payload struct {
	Poison bool `json:"poison,omitempty"` // Apply fails until the aggregate is cured
	Crash  bool `json:"crash,omitempty"`  // the first Apply kills its own connection
	Steal  bool `json:"steal,omitempty"`  // the first Apply has its lease taken over and fails transiently
}

// probe is the test projection: per aggregate, the last version applied and
// the sequence of versions it was applied in (a version guard makes replays
// no-ops; a version that skips its predecessor is recorded as "!v"), a
// counter of every event applied (replays included: it counts twice if the
// runtime applies twice), and a side-effect row per event the side-effect
// ledger says is due (the first application of the event, whichever path
// applies it). Each projection has tables of its own, so that a rebuild swaps
// only them.
type probe struct {
	name     string
	segments int
	halt     bool // policy Halt

	mu      *sync.Mutex
	crashed map[int64]bool // shared across projections: each mark fires once per history
	stolen  map[int64]bool
	pool    *pgxpool.Pool
	thieves *sync.WaitGroup
}

func (p *probe) state() string { return "mt_state_" + p.name }
func (p *probe) count() string { return "mt_count_" + p.name }

func (p *probe) ddl() string {
	return fmt.Sprintf(`
CREATE TABLE IF NOT EXISTS %[1]s (aggregate_id text PRIMARY KEY, last_version int NOT NULL, seq text NOT NULL);
CREATE TABLE IF NOT EXISTS %[2]s (one bool PRIMARY KEY DEFAULT true, n bigint NOT NULL);
CREATE TABLE IF NOT EXISTS mt_effects (projection text NOT NULL, event_id bigint NOT NULL);
CREATE TABLE IF NOT EXISTS mt_cured (aggregate_id text PRIMARY KEY);`, p.state(), p.count())
}

func (p *probe) Spec() projectors.Spec {
	policy := projectors.Park
	if p.halt {
		policy = projectors.Halt
	}
	return projectors.Spec{Name: p.name, Segments: p.segments, OnError: policy, Tables: []string{p.state(), p.count()}}
}

func (p *probe) once(m map[int64]bool, id int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m[id] {
		return false
	}
	m[id] = true
	return true
}

func (p *probe) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	for _, e := range b.Events {
		var pl payload
		if err := json.Unmarshal(e.Data, &pl); err != nil {
			return fmt.Errorf("event %d: %w", e.ID(), err)
		}
		if pl.Poison {
			var cured bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM mt_cured WHERE aggregate_id = $1)`, e.AggregateID).Scan(&cured); err != nil {
				return err
			}
			if !cured {
				return fmt.Errorf("event %d: poison", e.ID())
			}
		}
		if pl.Crash && p.once(p.crashed, e.ID()) {
			// A crash between fetch and commit: the connection dies with
			// the batch in flight.
			_, err := tx.Exec(ctx, `SELECT pg_terminate_backend(pg_backend_pid())`)
			if err == nil {
				err = fmt.Errorf("event %d: backend survived its termination", e.ID())
			}
			return err
		}
		if pl.Steal && p.once(p.stolen, e.ID()) {
			// Another worker takes the lease over (epoch + 1). Its UPDATE
			// waits for this transaction's row lock, so this batch fails
			// transiently and the retry finds the lease gone.
			p.thieves.Add(1)
			go func(seg int) {
				defer p.thieves.Done()
				_, _ = p.pool.Exec(context.Background(), `UPDATE readside.checkpoints SET lease_epoch = lease_epoch + 1,
					lease_owner = NULL, lease_expires_at = NULL WHERE projection = $1 AND segment = $2`, p.name, seg)
			}(b.Segment)
			return &pgconn.PgError{Code: "40001", Message: "modeltest: lease stolen"}
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf(`
INSERT INTO %[1]s AS s (aggregate_id, last_version, seq)
VALUES ($1, $2, CASE WHEN $2 = 1 THEN '1' ELSE '!' || $2 END)
ON CONFLICT (aggregate_id) DO UPDATE SET
    seq = CASE WHEN excluded.last_version <= s.last_version THEN s.seq
               WHEN excluded.last_version = s.last_version + 1 THEN s.seq || ',' || excluded.last_version
               ELSE s.seq || ',!' || excluded.last_version END,
    last_version = greatest(s.last_version, excluded.last_version)`, p.state()), e.AggregateID, e.Version); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf(`INSERT INTO %s AS c (n) VALUES (1) ON CONFLICT (one) DO UPDATE SET n = c.n + 1`, p.count())); err != nil {
			return err
		}
	}
	// The side effects, after the read model's rows (an event that fails
	// has rolled back nothing of the ledger): once per event, the first
	// time it is applied, whichever path applies it.
	due, err := b.SideEffectsDue(ctx, tx, nil)
	if err != nil {
		return err
	}
	for _, e := range due {
		if _, err := tx.Exec(ctx, `INSERT INTO mt_effects (projection, event_id) VALUES ($1, $2)`, p.name, e.ID()); err != nil {
			return err
		}
	}
	return nil
}

// Forget implements projectors.Forgetter: a repair forgets the aggregates'
// state (the counter counts the repair's applies on top).
func (p *probe) Forget(ctx context.Context, tx pgx.Tx, _ string, ids []string) error {
	_, err := tx.Exec(ctx, fmt.Sprintf(`DELETE FROM %s WHERE aggregate_id = ANY ($1)`, p.state()), ids)
	return err
}

func (p *probe) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, fmt.Sprintf(`TRUNCATE %s, %s`, p.state(), p.count()))
	return err
}
