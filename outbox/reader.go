package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/internal/dbschema"
)

// Event is an event as a projection sees it.
type Event struct {
	Cursor        Cursor // Cursor.Position is the event's id
	AggregateType string
	AggregateID   string
	Type          string
	Version       int
	SchemaVersion int
	Data          json.RawMessage
	Metadata      json.RawMessage
	OccurredAt    time.Time
	// AppendedAt is when the outbox row was written (clock_timestamp() in
	// the writing transaction); zero for history replayed from events.
	AppendedAt time.Time
}

// ID is the event's id in the events table.
func (e *Event) ID() int64 { return e.Cursor.Position }

// Filter selects which events a reader receives. Rows that do not match are
// still passed over: the batch's Next cursor moves beyond them.
type Filter struct {
	EventTypes     []string // empty means all
	AggregateTypes []string // empty means all
	// Segments > 1 splits the stream by hash of aggregate id; only events
	// whose aggregate hashes to Segment are returned.
	Segment  int
	Segments int
	// MaxBytes is the byte budget of a batch: it stops at the first event
	// that takes the payloads (event_data and metadata, uncompressed) of
	// its matching events to MaxBytes or beyond, so a batch holds at most
	// MaxBytes plus one event, and at least one event. 0 means
	// FetchMaxBytesDefault. Not a filter: the events after the cut come in
	// the next batch.
	MaxBytes int64
}

// FetchMaxBytesDefault is the byte budget of a batch when Filter.MaxBytes
// is 0: 8 MiB, eight of the largest events the contract accepts by
// default (readside_max_event_bytes).
const FetchMaxBytesDefault = 8 << 20

// Batch is one read.
type Batch struct {
	Events []Event
	// Next is the cursor after every row this read passed over, matching or
	// not: the checkpoint to store once Events are applied. A segmented
	// read that found all of its rows moves it to the end of the read window
	// even when it passed over nothing (Scanned 0): store it too.
	Next Cursor
	// Scanned counts the rows passed over (matching or not).
	Scanned int
	// Cut means the byte budget (Filter.MaxBytes) ended the batch before
	// rows it would otherwise have passed over. A batch with Scanned below
	// the fetch's limit that was not cut reached the end of the read
	// window.
	Cut bool
	// Held means the batch reached the end of the read window while
	// committed rows of the buckets it reads (all of them for a read by
	// hash) lay beyond it, read in the same snapshot: a
	// transaction still running below them holds them back (see Head), so
	// a reader that has caught up must look again once the window moves,
	// which may send no notification.
	Held bool
}

// fetchSQL reads up to $3 rows after the cursor ($1, $2) in (txid, position)
// order. History up to the pruning horizon comes from the events table; the
// rest from the outbox, limited to transactions below the read bound (see
// windowBound: every event writer below it has finished, so nothing can
// appear behind the cursor later). Both branches are index range scans with
// LIMIT on (txid, position/id), so the cost does not depend on how much is
// waiting:
//
//	Limit
//	  -> Sort (at most 2 x limit rows)
//	       -> Append
//	            -> Limit -> Index Scan using events_txid_id_idx on events
//	                          Index Cond: (ROW(txid, id) > ROW($1, $2)) AND (txid <= (InitPlan: horizon txid))
//	            -> Limit -> Index Scan using outbox_pkey on outbox
//	                          Index Cond: ((ROW(txid, position) > ROW($1, $2)) AND (txid < (InitPlan: the bound)))
//
// (TestFetchPlan checks this plan on a 1M-row outbox.) Matching rows are
// joined to events for their payload by primary key. A segmented read
// (segments dividing 64) replaces the outbox branch with one such range scan
// per bucket of the segment on outbox_bucket_idx, merged in read order; see
// segmentFetchSQL.
const fetchSQL = fetchHistory + `
    UNION ALL
    (SELECT o.txid, o.position, o.aggregate_type, o.aggregate_id, o.event_type, o.created_at,
            coalesce(o.payload_bytes, 0)::bigint AS bytes
       FROM readside.outbox o
      WHERE (o.txid, o.position) > ($1::xid8, $2::bigint)
        AND o.txid < (SELECT b.txid FROM bound b)
      ORDER BY o.txid, o.position
      LIMIT $3)` + fetchTail + heldAll

// heldRow returns the read bound as a cursor (is_head and matched) when
// committed rows lie at or beyond it in the statement's snapshot: rows of
// the buckets the read takes, which a transaction below them holds back
// (Batch.Held). A segment's read puts "o.bucket IN (...) AND " between
// heldRow and heldTail (segmentFetchSQL); heldAll is the read of every
// bucket. One index probe per bucket, stopping at the first row.
const (
	heldRow = `
UNION ALL
(SELECT b.txid, 0::bigint, true, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, true, false
   FROM bound b
  WHERE EXISTS (SELECT 1 FROM readside.outbox o WHERE `
	heldTail = `o.txid >= b.txid))`
	heldAll  = heldRow + heldTail
)

// windowBound is the read bound of the statement's own snapshot, computed
// once per statement (migration 012, readside_read_bound): rows of
// transactions below it are final. Only event-writing transactions (those
// the events trigger registered) hold it back; a transaction that writes
// no event, in this database or any other, does not. It replaces the
// snapshot's xmin, which every transaction with an xid in the cluster held
// back.
const windowBound = `bound AS MATERIALIZED (SELECT readside.readside_read_bound(pg_current_snapshot()) AS txid)`

// fetchHistory is the start of the scan: history up to the pruning horizon,
// from the events table.
const fetchHistory = `
WITH ` + windowBound + `, scan AS (
    (SELECT e.txid, e.id AS position, e.aggregate_type, e.aggregate_id, e.event_type, NULL::timestamptz AS created_at,
            readside.readside_event_bytes(e.event_data, e.metadata) AS bytes
       FROM readside.events e
      WHERE (e.txid, e.id) > ($1::xid8, $2::bigint)
        -- Scalar subqueries (InitPlans) make the horizon an index bound:
        -- with no horizon row the bound is NULL and the scan reads nothing.
        AND e.txid <= (SELECT h.txid FROM readside.outbox_horizon h)
        AND (e.txid < (SELECT h.txid FROM readside.outbox_horizon h) OR e.id <= (SELECT h.position FROM readside.outbox_horizon h))
      ORDER BY e.txid, e.id
      LIMIT $3)`

// fetchTail filters the scanned rows, keeps them up to the byte budget
// ($8: the payloads of the matching rows before a row, as readside_event_bytes
// counts them, must be below it, so the first matching row is always kept
// and the row that passes the budget is the batch's last), joins the
// payloads of those that match, and (is_head) returns the last row of the
// read window, which a segmented read moves to once it has read all of its
// own rows, unless the budget cut the batch short (heldRow follows it).
// There is
// no final ORDER BY: sorting a thousand rows with their payloads cost more
// than the rest of the statement (a 1M-row outbox: about 84 ms against 46
// ms per batch, loaded machine), so Fetch puts them in read order itself.
const fetchTail = `
), window_rows AS (
    SELECT s.*,
           (cardinality($4::text[]) = 0 OR s.event_type = ANY ($4::text[]))
       AND (cardinality($5::text[]) = 0 OR s.aggregate_type = ANY ($5::text[]))
       AND ($7::int <= 1 OR readside.readside_segment(s.aggregate_id, $7::int) = $6::int) AS matched
      FROM scan s
     ORDER BY s.txid, s.position
     LIMIT $3
), budget AS (
    SELECT w.*,
           coalesce(sum(w.bytes) FILTER (WHERE w.matched)
                        OVER (ORDER BY w.txid, w.position ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) < $8::bigint AS kept
      FROM window_rows w
)
SELECT w.txid, w.position, w.matched, e.aggregate_type, e.aggregate_id, e.event_type, e.version,
       e.schema_version, e.event_data, e.metadata, e.occurred_at, w.created_at, false AS is_head,
       EXISTS (SELECT 1 FROM budget c WHERE NOT c.kept) AS cut
  FROM budget w
  LEFT JOIN readside.events e ON w.matched AND e.id = w.position
 WHERE w.kept
UNION ALL
(SELECT o.txid, o.position, false, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, true, false
   FROM readside.outbox o
  WHERE $7::int > 1 AND o.txid < (SELECT b.txid FROM bound b)
    AND NOT EXISTS (SELECT 1 FROM budget w WHERE NOT w.kept)
  ORDER BY o.txid DESC, o.position DESC LIMIT 1)`

// bucketCount is the number of buckets outbox rows are indexed by
// (migration 006).
const bucketCount = 64

var segmentSQL sync.Map // n -> SQL

// segmentFetchSQL reads one segment of n (n dividing bucketCount) from its
// own buckets, given as $9, $10, ... (segmentBuckets): one index range
// scan with LIMIT per bucket, merged in read order, so a segment passes
// over its own rows only. Every segment of n shares the statement, so a
// connection plans it once rather than once per segment (its generic plan
// takes about 10 ms).
func segmentFetchSQL(n int) string {
	if v, ok := segmentSQL.Load(n); ok {
		return v.(string)
	}
	var b strings.Builder
	b.WriteString(fetchHistory)
	for i := range bucketCount / n {
		fmt.Fprintf(&b, `
    UNION ALL
    (SELECT o.txid, o.position, o.aggregate_type, o.aggregate_id, o.event_type, o.created_at,
            coalesce(o.payload_bytes, 0)::bigint AS bytes
       FROM readside.outbox o
      WHERE o.bucket = $%d::smallint AND (o.txid, o.position) > ($1::xid8, $2::bigint)
        AND o.txid < (SELECT b.txid FROM bound b)
      ORDER BY o.txid, o.position
      LIMIT $3)`, 9+i)
	}
	b.WriteString(fetchTail)
	params := make([]string, bucketCount/n)
	for i := range params {
		params[i] = fmt.Sprintf("$%d::smallint", 9+i)
	}
	b.WriteString(heldRow + "o.bucket IN (" + strings.Join(params, ", ") + ") AND " + heldTail)
	v, _ := segmentSQL.LoadOrStore(n, b.String())
	return v.(string)
}

// segmentBuckets are the buckets of segment seg of n, the arguments
// segmentFetchSQL(n) takes after the common eight.
func segmentBuckets(n, seg int) []any {
	var out []any
	for m := uint64(SegmentBuckets(n, seg)); m != 0; m &= m - 1 {
		out = append(out, int16(bits.TrailingZeros64(m)))
	}
	return out
}

// Fetch reads the next batch after cursor: at most limit rows are passed
// over, fewer when their payloads pass f.MaxBytes, and those that match f
// are returned in order. Events of one aggregate come in version order.
func Fetch(ctx context.Context, q Querier, after Cursor, limit int, f Filter) (*Batch, error) {
	if limit <= 0 {
		return nil, errors.New("fetch: limit must be positive")
	}
	if f.Segments > 1 && (f.Segment < 0 || f.Segment >= f.Segments) {
		return nil, fmt.Errorf("fetch: segment %d out of range [0, %d)", f.Segment, f.Segments)
	}
	maxBytes := f.MaxBytes
	if maxBytes <= 0 {
		maxBytes = FetchMaxBytesDefault
	}
	sql := fetchSQL
	args := []any{after.TxID, after.Position, limit, nonNil(f.EventTypes), nonNil(f.AggregateTypes), f.Segment, f.Segments, maxBytes}
	if f.Segments > 1 && bucketCount%f.Segments == 0 {
		sql = segmentFetchSQL(f.Segments)
		args = append(args, segmentBuckets(f.Segments, f.Segment)...)
	}
	// Generic from the first execution (dbschema.QueryGeneric): the plan
	// PostgreSQL settles on anyway, index range scans with LIMIT merged in
	// read order (TestFetchPlan), without planning the many-branch
	// statement for its parameters on each connection first.
	rows, err := dbschema.QueryGeneric(ctx, q, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("fetch after %s: %w", after, err)
	}
	defer rows.Close()
	b, head, bound, err := scanBatch(rows, after)
	if err != nil {
		return nil, fmt.Errorf("fetch after %s: %w", after, err)
	}
	// A segmented read that has read all of its rows in the window (fewer
	// than limit) stands at the window's end: rows of other segments in
	// between are not its own, and the head was read in the same snapshot,
	// so nothing of its own lies behind it.
	if head != nil && b.Scanned < limit && b.Next.Less(*head) {
		b.Next = *head
	}
	b.Held = b.Scanned < limit && !b.Cut && bound != nil && b.Next.Less(*bound)
	return b, nil
}

// scanBatch reads the rows of a fetch statement: the window's rows (matched
// or only passed over), for a segmented read the head row, and, when rows
// of the buckets read lie beyond the window, the read bound (heldRow).
// Rows come from the merged buckets in no global order; they are put in
// read order here rather than by a sort over their payloads in the server.
func scanBatch(rows pgx.Rows, after Cursor) (b *Batch, head, bound *Cursor, err error) {
	b = &Batch{Next: after}
	sorted := true
	for rows.Next() {
		e, matched, isHead, cut, err := scanRow(rows)
		if err != nil {
			return nil, nil, nil, err
		}
		b.Cut = b.Cut || cut
		c := e.Cursor
		if isHead {
			if matched {
				bound = &c
			} else {
				head = &c
			}
			continue
		}
		if c.Less(b.Next) {
			sorted = false
		} else {
			b.Next = c
		}
		b.Scanned++
		if matched {
			b.Events = append(b.Events, e)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, nil, err
	}
	if !sorted {
		slices.SortFunc(b.Events, func(x, y Event) int { return x.Cursor.Compare(y.Cursor) })
	}
	return b, head, bound, nil
}

// scanRow reads one row; matched is false for a row the filter passes over
// (its event columns are NULL), isHead marks the head rows (matched: the
// read bound of heldRow), and cut says that the byte budget cut the batch.
func scanRow(rows pgx.Rows) (e Event, matched, isHead, cut bool, err error) {
	var (
		aggType, aggID, typ    *string
		version, schemaVersion *int32
		data, meta             []byte
		occurredAt, appendedAt *time.Time
	)
	if err := rows.Scan(&e.Cursor.TxID, &e.Cursor.Position, &matched, &aggType, &aggID, &typ, &version,
		&schemaVersion, &data, &meta, &occurredAt, &appendedAt, &isHead, &cut); err != nil {
		return e, false, false, false, fmt.Errorf("scan: %w", err)
	}
	if isHead {
		return e, matched, true, cut, nil
	}
	if !matched || aggType == nil {
		return e, false, false, cut, nil
	}
	e.AggregateType, e.AggregateID, e.Type = *aggType, *aggID, *typ
	e.Version, e.SchemaVersion = int(*version), int(*schemaVersion)
	e.Data, e.Metadata, e.OccurredAt = data, meta, *occurredAt
	if appendedAt != nil {
		e.AppendedAt = *appendedAt
	}
	return e, true, false, cut, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Head is where the log ends.
type Head struct {
	// Window is the last row inside the read window: where a reader that
	// has caught up stands.
	Window Cursor
	// Latest is the last committed row, inside the window or not. When it
	// is past Window, an event writer (see WindowHolder) is holding the
	// window back, or the fence has not yet passed a transaction that
	// writes no events (for up to two grace periods, see the README), and a
	// reader should look again soon: the fence's advance sends no
	// notification.
	Latest Cursor
}

// Behind reports whether committed rows wait outside the read window.
func (h Head) Behind() bool { return h.Window.Less(h.Latest) }

// ReadHead returns the head of the log. It is two backwards index probes.
func ReadHead(ctx context.Context, q Querier) (Head, error) {
	var w, l struct {
		txid *uint64
		pos  *int64
	}
	err := q.QueryRow(ctx, `
WITH `+windowBound+`
SELECT w.txid, w.position, l.txid, l.position
  FROM (SELECT 1) one
  LEFT JOIN LATERAL (SELECT o.txid, o.position FROM readside.outbox o
                      WHERE o.txid < (SELECT b.txid FROM bound b)
                      ORDER BY o.txid DESC, o.position DESC LIMIT 1) w ON true
  LEFT JOIN LATERAL (SELECT o.txid, o.position FROM readside.outbox o
                      ORDER BY o.txid DESC, o.position DESC LIMIT 1) l ON true`).Scan(&w.txid, &w.pos, &l.txid, &l.pos)
	if err != nil {
		return Head{}, fmt.Errorf("head: %w", err)
	}
	var h Head
	if w.txid == nil {
		if h.Window, err = horizon(ctx, q); err != nil {
			return Head{}, err
		}
	} else {
		h.Window = Cursor{TxID: *w.txid, Position: *w.pos}
	}
	h.Latest = h.Window
	if l.txid != nil {
		h.Latest = Cursor{TxID: *l.txid, Position: *l.pos}
	}
	return h, nil
}

func horizon(ctx context.Context, q Querier) (Cursor, error) {
	var c Cursor
	err := q.QueryRow(ctx, `SELECT txid, position FROM readside.outbox_horizon`).Scan(&c.TxID, &c.Position)
	if errors.Is(err, pgx.ErrNoRows) {
		return Start, nil
	}
	if err != nil {
		return c, fmt.Errorf("horizon: %w", err)
	}
	return c, nil
}
