package projectorcli

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/observe"
	"github.com/readside/readside/internal/pgtest"
)

// TestStatusShowsUnsubscribedEvents: `status` names the aggregate types that
// no projection of the binary takes, so their events do not vanish.
func TestStatusShowsUnsubscribedEvents(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)
	out, err := runCmd(t, "status", "--database-url", url)
	require.NoError(t, err)
	require.NotContains(t, out, "no projection takes")

	_, err = pool.Exec(context.Background(), `INSERT INTO readside.events (aggregate_type, aggregate_id, event_type, event_data, version) VALUES
		('Order', 'o-1', 'OrderPlaced', '{}', 1), ('Foo', 'f-1', 'FooHappened', '{}', 1),
		('order', 'o-1', 'OrderPlaced', '{}', 1), ('order', 'o-1', 'OrderConfirmed', '{}', 2)`)
	require.NoError(t, err)
	out, err = runCmd(t, "status", "--database-url", url)
	require.NoError(t, err)
	require.Contains(t, out, `events no projection takes`)
	require.Contains(t, out, `"Foo" (1 events), "order" (2 events)`)

	out, err = runCmd(t, "status", "--json", "--database-url", url)
	require.NoError(t, err)
	var st statusJSON
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	require.Equal(t, []observe.UnsubscribedType{{AggregateType: "Foo", Events: 1}, {AggregateType: "order", Events: 2}}, st.Unsubscribed)
}
