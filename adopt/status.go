package adopt

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/internal/dbschema"
)

// Status is one adopted table as projector status shows it.
type Status struct {
	Table string `json:"table"`
	// State is "backfilling" while the history is copied (the trigger
	// then copies each aggregate's history on first touch) and "adopted"
	// once it is in readside's log.
	State         string     `json:"state"`
	HistoryCopied int64      `json:"history_copied"` // rows copied as history
	HistoryTotal  int64      `json:"history_total"`  // rows the last backfill read
	AdoptedAt     time.Time  `json:"adopted_at"`
	BackfilledAt  *time.Time `json:"backfilled_at,omitempty"`
	// UPDATEs, DELETEs and TRUNCATEs of the table since adoption: not
	// mirrored (readside's log is append-only), only counted.
	UpdatedRows int64      `json:"updated_rows"`
	DeletedRows int64      `json:"deleted_rows"`
	Truncates   int64      `json:"truncates"`
	LastChange  *time.Time `json:"last_change,omitempty"`
	// Outdated: the table was adopted by a release whose trigger ran with
	// readside's rights (SECURITY DEFINER over the table's columns).
	// Adopting it again replaces it.
	Outdated bool `json:"outdated,omitempty"`
}

// List reads the adopted tables of db's readside schema.
func List(ctx context.Context, db dbschema.DB) ([]Status, error) {
	rows, err := db.Query(ctx, `
SELECT a.table_name, a.state, a.history_events, a.history_total, a.adopted_at, a.backfilled_at,
       coalesce(sum(c.rows) FILTER (WHERE c.operation = 'UPDATE'), 0)::int8,
       coalesce(sum(c.rows) FILTER (WHERE c.operation = 'DELETE'), 0)::int8,
       count(c.id) FILTER (WHERE c.operation = 'TRUNCATE'),
       max(c.changed_at),
       coalesce((SELECT p.prosecdef FROM pg_catalog.pg_proc p WHERE p.oid = pg_catalog.to_regprocedure(a.function_name || '()')), false)
  FROM readside.readside_adoptions a
  LEFT JOIN readside.readside_adoption_changes c ON c.table_name = a.table_name
 GROUP BY a.table_name
 ORDER BY a.table_name`)
	if err != nil {
		return nil, fmt.Errorf("adoptions: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Status, error) {
		var s Status
		err := r.Scan(&s.Table, &s.State, &s.HistoryCopied, &s.HistoryTotal, &s.AdoptedAt, &s.BackfilledAt,
			&s.UpdatedRows, &s.DeletedRows, &s.Truncates, &s.LastChange, &s.Outdated)
		return s, err
	})
}
