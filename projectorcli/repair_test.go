package projectorcli

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/projectortest"
)

// projector repair NAME --aggregate ID restores the order's row from its
// events; without an aggregate it says what to give.
func TestRepairCommand(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	pool := pgtest.Pool(t, url)
	_, err := projectortest.Lifecycles{Orders: 10, Writers: 1}.Generate(ctx, pool)
	require.NoError(t, err)
	p := ordersummary.New()
	require.NoError(t, checkpoint.Register(ctx, pool, ordersummary.Name, 1, "park"))
	projectortest.ApplyStream(t, pool, p, outbox.Filter{AggregateTypes: p.Spec().AggregateTypes}, 100)
	_, err = pool.Exec(ctx, `UPDATE readside.checkpoints SET (cursor_txid, cursor_position) =
		(SELECT txid, id FROM readside.events ORDER BY txid DESC, id DESC LIMIT 1) WHERE projection = 'order_summary'`)
	require.NoError(t, err)

	row := func(id string) string {
		var s string
		require.NoError(t, pool.QueryRow(ctx, `SELECT (to_jsonb(o) - 'updated_at')::text FROM readside.order_summary o WHERE order_id = $1`, id).Scan(&s))
		return s
	}
	const id = "ord-0-000001"
	before := row(id)
	_, err = pool.Exec(ctx, `UPDATE readside.order_summary SET total_amount = 0, customer_name = 'Mallory' WHERE order_id = $1`, id)
	require.NoError(t, err)
	require.NotEqual(t, before, row(id))

	_, err = runCmd(t, "repair", ordersummary.Name, "--database-url", url)
	require.ErrorContains(t, err, "--aggregate")
	_, err = runCmd(t, "repair", ordersummary.Name, "--database-url", url, "--aggregate-type", "Product", "--aggregate", id)
	require.ErrorContains(t, err, `aggregate type "Product"`)

	out, err := runCmd(t, "repair", ordersummary.Name, "--aggregate", id, "--aggregate", "no-such-order", "--database-url", url)
	require.NoError(t, err)
	require.Contains(t, out, "Order/"+id)
	require.Contains(t, out, "repaired 2 aggregate(s) of order_summary")
	require.Equal(t, before, row(id))

	out, err = runCmd(t, "repair", ordersummary.Name, "--aggregate", id, "--json", "--database-url", url)
	require.NoError(t, err)
	var res []repairedJSON
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	require.Len(t, res, 1)
	require.Equal(t, id, res[0].AggregateID)
	require.Positive(t, res[0].Replayed)
}
