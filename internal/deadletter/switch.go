package deadletter

import (
	"context"
	"fmt"
)

// Adopt carries the dead letters of shadow, a rebuild's copy switching in,
// over to live, in the switch's transaction. The copy only replays, so its
// dead letters are replays, except for events the live projection never
// applied either (parked or discarded there, and not as a replay):
// retrying those fires their side effects. The live projection's discards
// stand (the copy skipped those events): they replace the copy's dead
// letters of the same events. The rest of live's dead letters go: the copy
// has applied, or parked anew, every event they held.
func Adopt(ctx context.Context, tx DB, live, shadow string) error {
	for _, step := range []struct {
		what, sql string
		args      []any
	}{
		{"keep side effects of events live never applied", `UPDATE readside.dead_letters s SET replay = false
			WHERE s.projection = $2 AND EXISTS (SELECT 1 FROM readside.dead_letters l WHERE l.projection = $1 AND l.event_id = s.event_id
			   AND l.status IN ('parked', 'discarded') AND NOT l.replay)`, []any{live, shadow}},
		{"drop live's dead letters but its discards", `DELETE FROM readside.dead_letters WHERE projection = $1 AND status <> 'discarded'`, []any{live}},
		{"drop the copy's dead letters of events live discarded", `DELETE FROM readside.dead_letters s WHERE s.projection = $2
			AND EXISTS (SELECT 1 FROM readside.dead_letters l WHERE l.projection = $1 AND l.event_id = s.event_id)`, []any{live, shadow}},
		{"move the copy's dead letters to live", `UPDATE readside.dead_letters SET projection = $1 WHERE projection = $2`, []any{live, shadow}},
	} {
		if _, err := tx.Exec(ctx, step.sql, step.args...); err != nil {
			return fmt.Errorf("adopt dead letters of %s into %s: %s: %w", shadow, live, step.what, err)
		}
	}
	return nil
}
