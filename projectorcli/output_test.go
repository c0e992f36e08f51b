package projectorcli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside"
	"github.com/readside/readside/internal/deadletter"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/shipped"
)

// hostileID is an aggregate id that, printed raw, colours the terminal,
// retitles its window and forges a table line.
const hostileID = "\x1b[31mred\x1b]0;pwned\x07\n1  order_summary  fake  row\u009b2J\u202e"

// requireNoRawControls fails when out holds a control character other
// than newline, or a bidirectional override.
func requireNoRawControls(t *testing.T, out string) {
	t.Helper()
	for _, bad := range []string{"\x1b", "\x07", "\u009b", "\u202e", "\r"} {
		require.NotContains(t, out, bad, "raw %q in:\n%s", bad, out)
	}
}

// Dead letters of an aggregate whose id, type and error hold terminal
// escapes are listed and shown with those escaped: one table line per
// dead letter, the terminal left alone.
func TestDeadLettersEscapeControlCharacters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)
	require.NoError(t, projectors.Register(ctx, pool, shipped.All()...))
	agg := outbox.Aggregate{Type: "Order\x1b[1m", ID: hostileID}
	res, err := outbox.Append(ctx, pool, agg, 0,
		[]outbox.NewEvent{{Type: "OrderPlaced\a", Data: json.RawMessage(`{"note":"\u001b[2J \u009b"}`),
			Metadata: outbox.Metadata{CorrelationID: "corr\u009b1m"}}})
	require.NoError(t, err)
	// The event as a projector read it (the read window may be held back
	// by another test's transaction: no Fetch).
	ev := outbox.Event{Cursor: res.Cursor(), AggregateType: agg.Type, AggregateID: agg.ID, Type: "OrderPlaced\a", Version: 1}
	require.NoError(t, deadletter.Park(ctx, pool, deadletter.Parking{Projection: "order_summary", Reason: deadletter.Failed,
		Error: "apply: \x1b[2Jboom\nsecond line", Attempts: 3}, []outbox.Event{ev}))

	out, _, err := run3(t, "dead-letters", "list", "--database-url", url)
	require.NoError(t, err)
	requireNoRawControls(t, out)
	require.Contains(t, out, `\x1b[31mred\x1b]0;pwned\x07\n1  order_summary`)
	require.Len(t, strings.Split(strings.TrimSpace(out), "\n"), 3, "header, one dead letter, count:\n%s", out)

	list, _, err := run3(t, "dead-letters", "list", "--json", "--database-url", url)
	require.NoError(t, err)
	var dls []deadLetterJSON
	require.NoError(t, json.Unmarshal([]byte(list), &dls))
	require.Len(t, dls, 1)
	require.Equal(t, hostileID, dls[0].AggregateID, "JSON carries the id as it is")

	out, _, err = run3(t, "dead-letters", "show", fmt.Sprint(dls[0].ID), "--database-url", url)
	require.NoError(t, err)
	requireNoRawControls(t, out)
	require.Contains(t, out, `Order\x1b[1m/\x1b[31mred`)
	require.Contains(t, out, `apply: \x1b[2Jboom\nsecond line`)
	require.Contains(t, out, `\u009b`)
}

// status escapes what it prints from the checkpoints and other sessions,
// and shows at most 80 bytes of the window holder's query: the statement,
// not the payload it carries.
func TestStatusEscapesAndCapsItsText(t *testing.T) {
	t.Parallel()
	payload := strings.Repeat("secret-payload ", 100)
	var b bytes.Buffer
	printStatus(&b, statusJSON{
		Segments: []segmentJSON{{Projection: "order_summary", Status: "failed", Cursor: "1/2",
			Owner: "host\x1b[8m", LastError: "event 7 (Order \x1b[31mx\n/y v1) failed"}},
		WindowHolder: &outbox.Holder{PID: 42, Database: "app\a", TxID: 7, Age: time.Minute, State: "idle in transaction\x1b",
			Query: "INSERT INTO events (event_data) VALUES ('\x1b]0;pwned\x07" + payload + "')"},
	})
	out := b.String()
	requireNoRawControls(t, out)
	require.Contains(t, out, `event 7 (Order \x1b[31mx\n/y v1) failed`)
	require.Contains(t, out, `host\x1b[8m`)
	holder := out[strings.Index(out, "read window held back"):]
	require.Contains(t, holder, `INSERT INTO events (event_data) VALUES ('\x1b]0;pwned\x07secret-payload`)
	require.Less(t, strings.Count(holder, "secret-payload"), 6, "80 bytes of the query at most:\n%s", holder)
}

// A holder whose age this role cannot see (another role's session, no
// pg_read_all_stats) is named with the grant that would show it, not
// shown as 0 s old.
func TestStatusNamesTheMissingGrant(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	printStatus(&b, statusJSON{WindowHolder: &outbox.Holder{PID: 42, Database: "app", TxID: 7, AgeUnknown: true}})
	out := b.String()
	require.Contains(t, out, "read window held back by transaction 7 (pid 42, database app; age, state and query unknown")
	require.Contains(t, out, "grant this role pg_read_all_stats or pg_monitor")
	require.NotContains(t, out, "0s old")
}

// repair prints the aggregates it repaired escaped.
func TestRepairOutputEscapes(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	require.NoError(t, printRepaired(&b, "order_summary", []readside.RepairedAggregate{{Type: "Order", ID: hostileID, Segment: 0, Replayed: 2}}))
	requireNoRawControls(t, b.String())
	require.Len(t, strings.Split(strings.TrimSpace(b.String()), "\n"), 3, b.String())
}
