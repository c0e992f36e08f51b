package readside

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/readside/readside/internal/control"
)

// Errors Verify returns.
var (
	// ErrVerifyRunning refuses a verification of a projection while
	// another one of it runs.
	ErrVerifyRunning = control.ErrVerifyRunning
	// ErrLiveTablesReplaced: a reset to the start or a rebuild's switch
	// replaced the live tables during the verification; verify again.
	ErrLiveTablesReplaced = control.ErrLiveTablesReplaced
)

// Verification results (Verification.Result), as recorded and exported in
// readside_verify_last_result.
const (
	VerifyOK       = control.VerifyOK
	VerifyDiffers  = control.VerifyDiffers
	VerifyRepaired = control.VerifyRepaired
	VerifyError    = control.VerifyError
)

// VerifyOptions restricts and extends Verify.
type VerifyOptions struct {
	// AggregateIDs restricts the comparison to the rows of these
	// aggregates, in the tables with a key column (projectors.Spec.Keys).
	// Empty means every row of every table. The copy is built from the
	// whole log either way.
	AggregateIDs []string
	// Repair hands the differing aggregates to Repair once the comparison
	// is done. Differences in a table without a key column cannot be
	// repaired by aggregate (rebuild the projection).
	Repair bool
}

// Verify checks projection name's read model against its log while the
// fleet runs: it rebuilds the read model from the events into a scratch
// schema up to the live checkpoints and compares it with the live tables
// row by row, at one consistent point (one REPEATABLE READ snapshot; the
// fleet is not stopped). It costs one rebuild's work, during which the
// snapshot holds back vacuum. The scratch schema is dropped afterwards,
// on error and cancellation too. The projection must list its Tables;
// Spec.Keys names the aggregates whose rows differ and Spec.Volatile the
// columns left out (updated_at = now()). See Verification.Differs.
//
// Every verification that ran is recorded in readside.verifications (the
// verify metrics read it), failed ones too. An error with a non-nil
// Verification is a repair or the recording that failed after the
// comparison.
func (c *Client) Verify(ctx context.Context, name string, o VerifyOptions) (*Verification, error) {
	p, err := c.projection(name)
	if err != nil {
		return nil, err
	}
	if len(p.Spec().Tables) == 0 {
		return nil, fmt.Errorf("verify %s: %w", name, ErrNoTables)
	}
	if err := c.known(ctx, name); err != nil {
		return nil, err
	}
	started := time.Now()
	v, err := control.Verify(ctx, c.db, p, control.VerifyOptions{AggregateIDs: o.AggregateIDs})
	if err == nil && o.Repair && len(v.Aggregates) > 0 {
		ids := make([]string, 0, len(v.Aggregates))
		for _, a := range v.Aggregates {
			ids = append(ids, a.ID)
		}
		v.Repaired, err = c.Repair(ctx, name, RepairOptions{AggregateIDs: ids})
		v.Finished = time.Now()
		if err != nil {
			v.Repaired = nil
			err = fmt.Errorf("verify %s: %d aggregate(s) differ; repairing them failed: %w", name, len(ids), err)
		}
	}
	if errors.Is(err, ErrVerifyRunning) {
		return nil, err // the one running records its own result
	}
	if v == nil && err == nil {
		panic("readside: control.Verify returned neither a verification nor an error")
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if rerr := control.Record(rctx, c.db, name, started, v, err); rerr != nil && err == nil {
		err = rerr
	}
	if v == nil {
		return nil, err
	}
	return v, err
}
