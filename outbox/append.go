package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Channel is the LISTEN/NOTIFY channel the events trigger notifies at commit.
const Channel = "readside_outbox"

// ErrConcurrencyConflict means the aggregate changed since the caller loaded
// it (another writer took the expected version), or the caller's transaction
// is older than the one that wrote the aggregate's last event. Either way the
// caller rolls back, reloads and retries. Returned wrapped in *ConflictError.
var ErrConcurrencyConflict = errors.New("concurrency conflict")

// ErrReadFence means the transaction wrote its first event after readers
// had passed its xid (SQLSTATE 40001, constraint readside_read_fence): it
// took its xid, wrote something else, and reached its first event more than
// the fence's grace period later. It is also an ErrConcurrencyConflict:
// retry the transaction; if it keeps happening, write the first event
// earlier or call readside_register() first in the transaction.
var ErrReadFence = errors.New("transaction behind the read fence")

// ConflictError says which aggregate conflicted and why.
type ConflictError struct {
	Aggregate       Aggregate
	ExpectedVersion int
	Reason          string // "version taken", "stale transaction", "version gap", "read fence"
	Err             error  // the PostgreSQL error
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s %s at expected version %d: %s: %v", e.Aggregate.Type, e.Aggregate.ID, e.ExpectedVersion, e.Reason, ErrConcurrencyConflict)
}

func (e *ConflictError) Unwrap() []error {
	if e.Reason == reasonReadFence {
		return []error{ErrConcurrencyConflict, ErrReadFence, e.Err}
	}
	return []error{ErrConcurrencyConflict, e.Err}
}

const reasonReadFence = "read fence"

// Aggregate names an event stream.
type Aggregate struct {
	Type string // e.g. "Order"
	ID   string
}

// Metadata travels with every event.
type Metadata struct {
	CorrelationID string `json:"correlation_id,omitempty"`
	CausationID   string `json:"causation_id,omitempty"`
	UserID        string `json:"user_id,omitempty"`
}

// NewEvent is an event to append.
type NewEvent struct {
	Type string // past tense, e.g. "OrderPlaced"
	// Data is the JSON payload. It must be a JSON object.
	Data json.RawMessage
	// Metadata is stored as JSON next to the payload.
	Metadata Metadata
	// SchemaVersion of Data; 0 means 1. Readers upcast older versions.
	SchemaVersion int
	// OccurredAt is when the fact happened; zero means the database's now().
	OccurredAt time.Time
}

// AppendResult describes what Append wrote.
type AppendResult struct {
	Version   int     // the aggregate's version after the append
	Positions []int64 // the new events' positions (events.id), in version order
	TxID      uint64  // the writing transaction's id
}

// Cursor is the read position of the last appended event: once a
// projection's checkpoint has passed it, the projection has seen this write.
func (r *AppendResult) Cursor() Cursor {
	if len(r.Positions) == 0 {
		return Cursor{}
	}
	return Cursor{TxID: r.TxID, Position: r.Positions[len(r.Positions)-1]}
}

// appendSQL inserts all events in one statement (the trigger writes the
// outbox rows in the same statement) and returns one row. Columns that are
// the same for every event (metadata, schema version) travel once as a
// scalar, with a NULL array: unnest pads a NULL array with NULLs.
const appendSQL = `
WITH ins AS (
    INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, metadata, schema_version, version, occurred_at)
    SELECT $1, $2, t.event_type, t.event_data, coalesce(t.metadata, $6::jsonb), coalesce(t.schema_version, $7::int),
           $3::int + t.ord::int, coalesce(t.occurred_at, now())
      FROM unnest($4::text[], $5::jsonb[], $8::jsonb[], $9::int[], $10::timestamptz[])
           WITH ORDINALITY AS t(event_type, event_data, metadata, schema_version, occurred_at, ord)
    RETURNING id, version, txid
)
SELECT array_agg(id ORDER BY version), min(txid) FROM ins`

// appendOneSQL is appendSQL for a single event.
const appendOneSQL = `
INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, metadata, schema_version, version, occurred_at)
VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6::int, $7::int, coalesce($8::timestamptz, now()))
RETURNING id, txid`

// Append appends events to an aggregate whose current version the caller
// read as expectedVersion (0 for a new aggregate), inside tx. The events get
// versions expectedVersion+1, +2, ...; their outbox rows and the wake-up
// notification are written by the same statement (one round trip) and become
// visible when tx commits. A clash with another writer returns an error
// wrapping ErrConcurrencyConflict; tx is then aborted and must be rolled back.
func Append(ctx context.Context, tx Querier, agg Aggregate, expectedVersion int, events []NewEvent) (*AppendResult, error) {
	q, err := PrepareAppend(agg, expectedVersion, events)
	if err != nil {
		return nil, err
	}
	return q.Read(tx.QueryRow(ctx, q.SQL, q.Args...))
}

// AppendQuery is Append's statement, for a caller that sends it in a
// pipeline of its own (a pgx.Batch, with the COMMIT behind it): queue SQL
// with Args, then pass the row it returns to Read. The statement names
// readside's default schema.
type AppendQuery struct {
	SQL  string
	Args []any

	agg      Aggregate
	expected int
	n        int
}

// PrepareAppend validates events as Append does and returns the statement
// that appends them.
func PrepareAppend(agg Aggregate, expectedVersion int, events []NewEvent) (*AppendQuery, error) {
	if err := validate(agg, expectedVersion, events); err != nil {
		return nil, err
	}
	first := events[0]
	meta, err := json.Marshal(first.Metadata)
	if err != nil {
		return nil, fmt.Errorf("append: metadata: %w", err)
	}
	q := &AppendQuery{agg: agg, expected: expectedVersion, n: len(events)}
	if len(events) == 1 {
		// A command usually appends one event, and a plain VALUES insert
		// costs the server less than the unnest, CTE and array_agg of the
		// general statement.
		var occurred *time.Time
		if !first.OccurredAt.IsZero() {
			occurred = &first.OccurredAt
		}
		q.SQL = appendOneSQL
		q.Args = []any{agg.Type, agg.ID, first.Type, string(first.Data), string(meta),
			int32(max(first.SchemaVersion, 1)), expectedVersion + 1, occurred}
		return q, nil
	}
	types := make([]string, q.n)
	data := make([]string, q.n)
	for i, e := range events {
		types[i] = e.Type
		data[i] = string(e.Data)
	}
	metaArr, versionArr, occurredArr, err := perEventArrays(events)
	if err != nil {
		return nil, err
	}
	q.SQL = appendSQL
	q.Args = []any{agg.Type, agg.ID, expectedVersion, types, data, string(meta), int32(max(first.SchemaVersion, 1)),
		metaArr, versionArr, occurredArr}
	return q, nil
}

// Read scans the row the statement returned. A clash with another writer
// is an error wrapping ErrConcurrencyConflict, as from Append.
func (q *AppendQuery) Read(row pgx.Row) (*AppendResult, error) {
	res := &AppendResult{Version: q.expected + q.n}
	var err error
	if q.n == 1 {
		var id int64
		if err = row.Scan(&id, &res.TxID); err == nil {
			res.Positions = []int64{id}
		}
	} else {
		err = row.Scan(&res.Positions, &res.TxID)
	}
	if err != nil {
		return nil, classify(q.agg, q.expected, err)
	}
	return res, nil
}

// perEventArrays returns the per-event metadata, schema versions and
// occurrence times, each only where the events differ (nil otherwise: the
// statement then uses the first event's value for all).
func perEventArrays(events []NewEvent) (metaArr []string, versionArr []int32, occurredArr []*time.Time, err error) {
	first := events[0]
	n := len(events)
	for i, e := range events {
		if e.Metadata != first.Metadata && metaArr == nil {
			metaArr = make([]string, n)
			for j := range events {
				m, err := json.Marshal(events[j].Metadata)
				if err != nil {
					return nil, nil, nil, fmt.Errorf("append: metadata: %w", err)
				}
				metaArr[j] = string(m)
			}
		}
		if max(e.SchemaVersion, 1) != max(first.SchemaVersion, 1) && versionArr == nil {
			versionArr = make([]int32, n)
			for j := range events {
				versionArr[j] = int32(max(events[j].SchemaVersion, 1))
			}
		}
		if !e.OccurredAt.IsZero() {
			if occurredArr == nil {
				occurredArr = make([]*time.Time, n)
			}
			t := e.OccurredAt
			occurredArr[i] = &t
		}
	}
	return metaArr, versionArr, occurredArr, nil
}

func validate(agg Aggregate, expectedVersion int, events []NewEvent) error {
	switch {
	case agg.Type == "" || agg.ID == "":
		return errors.New("append: aggregate type and id are required")
	case expectedVersion < 0:
		return fmt.Errorf("append: expected version %d is negative", expectedVersion)
	case len(events) == 0:
		return errors.New("append: no events")
	}
	for i, e := range events {
		if e.Type == "" {
			return fmt.Errorf("append: event %d: type is required", i)
		}
		if !json.Valid(e.Data) || len(e.Data) == 0 || e.Data[0] != '{' {
			return fmt.Errorf("append: event %d (%s): data must be a JSON object", i, e.Type)
		}
	}
	return nil
}

// classify maps PostgreSQL errors to ErrConcurrencyConflict by SQLSTATE and
// constraint name, never by message text.
func classify(agg Aggregate, expected int, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		reason := ""
		switch {
		case pgErr.Code == "23505" && pgErr.ConstraintName == "events_aggregate_version_key":
			reason = "version taken"
		case pgErr.Code == "40001" && pgErr.ConstraintName == "readside_aggregate_xid_order":
			reason = "stale transaction"
		case pgErr.Code == "23514" && pgErr.ConstraintName == "readside_aggregate_version_gap":
			reason = "version gap"
		case pgErr.Code == "40001" && pgErr.ConstraintName == "readside_read_fence":
			reason = reasonReadFence
		}
		if reason != "" {
			return &ConflictError{Aggregate: agg, ExpectedVersion: expected, Reason: reason, Err: err}
		}
	}
	return fmt.Errorf("append %s %s: %w", agg.Type, agg.ID, err)
}
