package modeltest

import (
	"testing"

	"github.com/readside/readside/internal/pgtest"
)

// Histories that failed once, shrunk by hand from the failing checks that
// found them. Each runs against the model as it stands: while a hole's gate
// (see holes) is off, the model expects today's behaviour; once on, the fix.
var regressions = []struct {
	name  string
	cfg   config
	steps []step
	// gate, if set, is the hole whose model the case needs: the case is
	// left out until the gate is on (the model expects the fix).
	gate *bool
}{
	{
		// Found by CI on 2026-12-07 (seed 9025906705344161382, shrunk): a
		// Halt projection is rebuilt and switched in with a failing event
		// its live projection halted at. The copy stops there without
		// failing (it never passes the live projection); the switched-in
		// projection runs on and halts at the event again. The model used
		// to stop at the switch and expect it running.
		name: "HaltedLiveSwitchedIn",
		cfg:  config{BatchSize: 1, MaxAttempts: 1, Halt: true},
		steps: []step{
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "sql", Rows: []row{{Agg: "a0", Version: 1}, {Agg: "a1", Version: 1}, {Agg: "a1", Version: 2, Mark: "poison"}}}}, End: "commit"},
			{Op: "switch", Proj: "mt_one"},
		},
	},
	{
		// Issue 23 item 2 (found by this test): a poison event is parked,
		// its aggregate cured, the projection reset to the start: the event
		// is applied for the first time, flagged Replay; its side effect
		// fires (the ledger says it never did).
		name: "ParkedThenResetToStart",
		cfg:  config{BatchSize: 2},
		steps: []step{
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "sql", Rows: []row{{Agg: "a1", Version: 1, Mark: "poison"}, {Agg: "a1", Version: 2}}}}, End: "commit"},
			{Op: "run"},
			{Op: "cure", Agg: "a1"},
			{Op: "reset", Proj: "mt_one", To: "start", Pick: -1},
			{Op: "run"},
		},
	},
	{
		// Issue 23 item 2: the same, cured and then rebuilt: the copy
		// applies the event for the first time and fires its side effect.
		name: "ParkedThenRebuilt",
		cfg:  config{BatchSize: 2},
		steps: []step{
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "sql", Rows: []row{{Agg: "a1", Version: 1, Mark: "poison"}, {Agg: "a1", Version: 2}}}}, End: "commit"},
			{Op: "run"},
			{Op: "cure", Agg: "a1"},
			{Op: "switch", Proj: "mt_one"},
		},
	},
	{
		// Issue 23 item 2: parked, reset to the start (its dead letters
		// go), parked again while replaying (a replay dead letter), cured,
		// retried: the retry is the event's first application and fires
		// its side effect.
		name: "ParkedResetParkedAgainThenRetried",
		cfg:  config{BatchSize: 1},
		steps: []step{
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "append", Rows: []row{{Agg: "a2", Version: 1}, {Agg: "a2", Version: 2, Mark: "poison"}, {Agg: "a2", Version: 3}}}}, End: "commit"},
			{Op: "run"},
			{Op: "reset", Proj: "mt_one", To: "start", Pick: -1},
			{Op: "run"},
			{Op: "cure", Agg: "a2"},
			{Op: "retry", Proj: "mt_one"},
			{Op: "retry", Proj: "mt_four"},
		},
	},
	{
		// Issue 23 item 1: an applied event parked again (blocked) by a
		// replay behind its aggregate's poison event, the poison discarded,
		// the aggregate repaired: the event is applied again, its side
		// effect not fired again.
		name: "ReparkedByReplayThenRepaired",
		cfg:  config{BatchSize: 5},
		steps: []step{
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "append", Rows: []row{{Agg: "a0", Version: 1}, {Agg: "a0", Version: 2, Mark: "poison"}}}}, End: "commit"},
			{Op: "run"},
			{Op: "reset", Proj: "mt_one", To: "cursor", Pick: -1},
			{Op: "run"},
			{Op: "discard", Proj: "mt_one", Pick: 1},
			{Op: "repair", Proj: "mt_one", Agg: "a0"},
			{Op: "reset", Proj: "mt_four", To: "cursor", Pick: -1},
			{Op: "run"},
			{Op: "discard", Proj: "mt_four", Pick: 1},
			{Op: "retry", Proj: "mt_four"},
		},
	},
	{
		// ReplayOverDeadLetters: dead letters discarded, then a reset to
		// a cursor before them: the runner reads them again.
		name: "DiscardedThenResetToCursor",
		cfg:  config{BatchSize: 1},
		steps: []step{
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "append", Rows: []row{{Agg: "a0", Version: 1}, {Agg: "a0", Version: 2, Mark: "poison"}, {Agg: "a0", Version: 3}}}}, End: "commit"},
			{Op: "run"},
			{Op: "discard", Proj: "mt_four", Pick: -1},
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "append", Rows: []row{{Agg: "a0", Version: 4}}}}, End: "commit"},
			{Op: "run"},
			{Op: "reset", Proj: "mt_four", To: "cursor", Pick: 0},
			{Op: "run"},
		},
		gate: &enabled.ReplayOverDeadLetters,
	},
	{
		// Rebuild (issue 10 item 5), found by TestModel on fa6c229: events
		// the live projection applies after a rebuild started fire their
		// side effects again when the copy applies them.
		name: "RebuildFiresSideEffectsTwice",
		cfg:  config{BatchSize: 1000},
		steps: []step{
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "append", Rows: []row{{Agg: "a0", Version: 1}}}}, End: "commit"},
			{Op: "run"},
			{Op: "rebuild", Proj: "mt_four"},
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "append", Rows: []row{{Agg: "a3", Version: 1}, {Agg: "a3", Version: 2}}}}, End: "commit"},
			{Op: "run"},
			{Op: "switch", Proj: "mt_four"},
		},
		gate: &enabled.Rebuild,
	},
	{
		// Out-of-order rows (issue 10 item 1) and a forged txid (item 2):
		// refused with 23514.
		name: "OutOfOrderRowsAndForgedTxid",
		cfg:  config{BatchSize: 5},
		steps: []step{
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "sql", Savepoint: "rollback", Rows: []row{{Agg: "a0", Version: 2}, {Agg: "a0", Version: 1}}}}, End: "commit"},
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "sql", Rows: []row{{Agg: "a1", Version: 1}, {Agg: "a0", Version: 1}, {Agg: "a1", Version: 3}, {Agg: "a1", Version: 2}}}}, End: "commit"},
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "forge", Rows: []row{{Agg: "a2", Version: 1}}}}, End: "commit"},
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "sql", Rows: []row{{Agg: "a2", Version: 1}}}}, End: "commit"},
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "update", Savepoint: "release", Rows: []row{{Agg: "a2", Version: 1}}}, {Via: "delete", Rows: []row{{Agg: "a2", Version: 1}}}}, End: "commit"},
			{Op: "run"},
		},
		gate: &enabled.AppendOnly,
	},
	{
		// Issue 20: an unrelated write transaction held open holds
		// nothing back once the fence has passed it; if it then writes its
		// first event (savepoint: it stays open), it is refused with 40001
		// readside_read_fence, and its later events as well: never lost.
		// Fails if the trigger's fence check is removed.
		name: "EarlyWriterCrossesTheFence",
		cfg:  config{BatchSize: 2},
		steps: []step{
			{Op: "idle", Slot: 0},
			{Op: "write", Slot: 2, Stmts: []stmt{{Via: "append", Rows: []row{{Agg: "a0", Version: 1}}}}, End: "commit"},
			{Op: "fence"},
			{Op: "run"},
			{Op: "more", Slot: 0, Stmts: []stmt{{Via: "sql", Savepoint: "release", Rows: []row{{Agg: "a1", Version: 1}}}}},
			{Op: "more", Slot: 0, Stmts: []stmt{{Via: "append", Rows: []row{{Agg: "a2", Version: 1}}}}},
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "append", Rows: []row{{Agg: "a1", Version: 1}}}}, End: "commit"},
			{Op: "run"},
		},
	},
	{
		// Issue 20: a transaction that wrote an event holds the window past
		// the fence; a younger event waits behind it (the run reads up to
		// the older one only), and a second event of the held transaction
		// is not refused. Fails if the trigger's registration is removed:
		// the run reads the younger event too, passing the held
		// transaction, whose events then commit behind the cursor.
		name: "RegisteredWriterHoldsPastTheFence",
		cfg:  config{BatchSize: 1000},
		steps: []step{
			{Op: "write", Slot: 2, Stmts: []stmt{{Via: "append", Rows: []row{{Agg: "a2", Version: 1}}}}, End: "commit"},
			{Op: "write", Slot: 0, Stmts: []stmt{{Via: "append", Rows: []row{{Agg: "a0", Version: 1}}}}, End: "hold"},
			{Op: "write", Slot: 2, Stmts: []stmt{{Via: "append", Rows: []row{{Agg: "a1", Version: 1}}}}, End: "commit"},
			{Op: "fence"},
			{Op: "run"},
			{Op: "more", Slot: 0, Stmts: []stmt{{Via: "sql", Rows: []row{{Agg: "a0", Version: 2}}}}},
			{Op: "end", Slot: 0, End: "commit"},
			{Op: "run"},
		},
	},
	{
		// Issue 24: a scale in mid-run merges and splits segments that
		// stand at different cursors (batches of one event): events
		// below a bucket's floor are passed over, not applied again (the
		// counter would count them twice), and those above are applied.
		name:  "ScaleMidRun",
		cfg:   config{BatchSize: 1},
		steps: scaleMidRun(),
	},
}

// scaleMidRun writes versions of a0..a3 in transactions of four, and
// scales both projections up and down in the middle of runs.
func scaleMidRun() []step {
	var steps []step
	v := 0
	write := func(n int) {
		for range n {
			v++
			var rows []row
			for _, a := range aggregates {
				rows = append(rows, row{Agg: a, Version: v})
			}
			steps = append(steps, step{Op: "write", Slot: 0, Stmts: []stmt{{Via: "sql", Rows: rows}}, End: "commit"})
		}
	}
	write(10)
	steps = append(steps, step{Op: "scale", Proj: "mt_four", N: 1})
	write(6)
	steps = append(steps, step{Op: "scale", Proj: "mt_one", N: 8})
	write(6)
	steps = append(steps, step{Op: "scale", Proj: "mt_four", N: 4}, step{Op: "scale", Proj: "mt_one", N: 1})
	write(2)
	return append(steps, step{Op: "run"})
}

func TestModelRegressions(t *testing.T) {
	pool := pgtest.NewDB(t)
	for _, r := range regressions {
		if r.gate != nil && !*r.gate {
			continue
		}
		t.Run(r.name, func(t *testing.T) { replay(t, pool, r.cfg, r.steps) })
	}
}
