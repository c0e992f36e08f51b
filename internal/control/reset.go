package control

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/internal/deadletter"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// ResetArgs moves a projection's checkpoints (all segments) and, for a
// reset to the start, empties its read model first. Targets: "start",
// "cursor:TXID/POSITION" (a pure checkpoint move) or "time:RFC3339" (a pure
// move to just before the first event, in log order, that occurred at or
// after that time). Pure moves keep the read model: idempotent projections
// converge when replaying over it; counters would count twice. A pure move
// never goes past the read window (see outbox.ClampToWindow): a target at
// or after a transaction still running is clamped to the end of the window,
// and a target beyond the head of the log is refused with ErrBeyondHead.
type ResetArgs struct {
	Projection string `json:"projection" river:"unique"`
	To         string `json:"to"`
}

// Kind implements river.JobArgs.
func (ResetArgs) Kind() string { return "readside_reset" }

// InsertOpts implements river.JobArgsWithInsertOpts: one reset per
// projection at a time.
func (ResetArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: Queue, UniqueOpts: uniqueByProjection()}
}

// ErrBeyondHead refuses a reset target past the last event of the log: the
// checkpoint would skip every event written until the log reached it, while
// lag read 0.
var ErrBeyondHead = outbox.ErrBeyondHead

// errNoEventSince refuses a reset to a time after the last event.
var errNoEventSince = errors.New("no event occurred at or after")

// CheckResetTarget parses a target and resolves it against the database
// without moving anything, so that a caller (the CLI) can refuse a target
// beyond the head before it queues the reset.
func CheckResetTarget(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, to string) error {
	if err := ValidateResetTarget(to); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		_, err := resolveTarget(ctx, tx, to)
		return err
	})
}

// ValidateResetTarget checks a target string ("start", "cursor:…", "time:…").
func ValidateResetTarget(to string) error {
	kind, val, _ := strings.Cut(to, ":")
	switch kind {
	case "start":
		return nil
	case "cursor":
		_, err := outbox.ParseCursor(val)
		return err
	case "time":
		_, err := time.Parse(time.RFC3339Nano, val)
		return err
	}
	return fmt.Errorf("reset target %q: want start, cursor:TXID/POSITION or time:RFC3339", to)
}

type resetWorker struct {
	river.WorkerDefaults[ResetArgs]
	c *Control
}

func (w *resetWorker) Work(ctx context.Context, job *river.Job[ResetArgs]) error {
	p, err := w.c.projection(job.Args.Projection, job.CreatedAt)
	if err != nil {
		return err
	}
	if err := ValidateResetTarget(job.Args.To); err != nil {
		return river.JobCancel(err)
	}
	err = MoveCheckpoints(ctx, w.c.db, p, job.Args.To)
	if errors.Is(err, ErrRebuildRunning) || errors.Is(err, checkpoint.ErrUnknownProjection) || errors.Is(err, ErrBeyondHead) || errors.Is(err, errNoEventSince) {
		return river.JobCancel(err)
	}
	if err != nil {
		return err
	}
	w.c.log.Info("control: projection reset", "projection", job.Args.Projection, "to", job.Args.To, "job", job.ID)
	return nil
}

// Reset runs a reset in one transaction: it takes every segment's
// checkpoint row lock (waiting for batches in flight), moves the
// checkpoints and bumps their lease epochs (so no current owner can commit
// across the reset), and for a reset to the start runs the projection's
// Reset and clears its dead letters. Workers re-claim the segments at their
// next lease renewal and replay from the new cursor; batches at or below the
// segment's high-water mark are flagged as replays.
func MoveCheckpoints(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, p projectors.Projection, to string) error {
	name := p.Spec().Name
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if err := checkpoint.Exists(ctx, tx, name); err != nil {
			return err
		}
		if _, err := checkpoint.LockForOperation(ctx, tx, name); err != nil {
			return fmt.Errorf("reset %s: lock: %w", name, err)
		}
		rebuilding, err := checkpoint.Rebuilding(ctx, tx, name)
		if err != nil {
			return err
		}
		if rebuilding {
			return fmt.Errorf("reset %s: %w (wait for it or cancel it first)", name, ErrRebuildRunning)
		}
		target, err := resolveTarget(ctx, tx, to)
		if err != nil {
			return fmt.Errorf("reset %s: %w", name, err)
		}
		if err := checkpoint.Move(ctx, tx, name, target); err != nil {
			return err
		}
		if to == "start" {
			ptx, err := dbschema.Projection(ctx, tx, "")
			if err != nil {
				return err
			}
			if err := p.Reset(ctx, ptx); err != nil {
				return fmt.Errorf("reset %s: projection reset: %w", name, err)
			}
			if err := deadletter.Clear(ctx, tx, name); err != nil {
				return err
			}
		}
		return nil
	})
}

// resolveTarget turns a target into the cursor to move to, clamped to the
// read window: a transaction still running when the reset commits has its
// events after the cursor, however early its xid sorts.
func resolveTarget(ctx context.Context, tx pgx.Tx, to string) (outbox.Cursor, error) {
	kind, val, _ := strings.Cut(to, ":")
	var c outbox.Cursor
	switch kind {
	case "start":
		return outbox.Start, nil
	case "cursor":
		var err error
		if c, err = outbox.ParseCursor(val); err != nil {
			return c, err
		}
	case "time":
		t, err := time.Parse(time.RFC3339Nano, val)
		if err != nil {
			return c, err
		}
		err = tx.QueryRow(ctx, `SELECT txid, id - 1 FROM readside.events WHERE occurred_at >= $1 ORDER BY txid, id LIMIT 1`, t).Scan(&c.TxID, &c.Position)
		if errors.Is(err, pgx.ErrNoRows) {
			return c, fmt.Errorf("%w %s", errNoEventSince, t.Format(time.RFC3339Nano))
		}
		if err != nil {
			return c, err
		}
	default:
		return c, ValidateResetTarget(to)
	}
	return outbox.ClampToWindow(ctx, tx, c)
}
