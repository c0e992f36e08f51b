package projectorcli

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/projectortest"
)

// exitCode is the code Main would exit with for err.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 1
}

// projector verify NAME exits 0 on a healthy read model, 1 naming the
// order whose row was altered by hand, and --repair fixes it; the scratch
// schema is gone afterwards.
func TestVerifyCommand(t *testing.T) {
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
	scratch := func() int {
		var n int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE '%verify%'`).Scan(&n))
		return n
	}

	out, err := runCmd(t, "verify", ordersummary.Name, "--database-url", url)
	require.NoError(t, err, out)
	require.Contains(t, out, "order_summary: ok")
	require.Zero(t, scratch())

	const id = "ord-0-000004"
	_, err = pool.Exec(ctx, `UPDATE readside.order_summary SET status = 'cancelled', cancelled_at = now() WHERE order_id = $1`, id)
	require.NoError(t, err)
	out, err = runCmd(t, "verify", ordersummary.Name, "--database-url", url)
	require.Equal(t, exitDiffers, exitCode(err), "%v\n%s", err, out)
	require.ErrorContains(t, err, "order_summary differs from its log: 1 aggregate(s) differ: Order/"+id)
	require.Contains(t, out, "Order/"+id)
	require.Contains(t, out, "order_summary: differs")
	require.Zero(t, scratch())

	out, err = runCmd(t, "verify", ordersummary.Name, "--json", "--database-url", url)
	require.Equal(t, exitDiffers, exitCode(err), "%v", err)
	var res verificationJSON
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	require.Equal(t, "differs", res.Result)
	require.Len(t, res.Aggregates, 1)
	require.Equal(t, differingJSON{AggregateType: "Order", AggregateID: id, Tables: []string{"order_summary"}, OnlyLive: 1, OnlyCopy: 1}, res.Aggregates[0])
	require.Positive(t, res.Events)

	out, err = runCmd(t, "verify", ordersummary.Name, "--aggregate", "ord-0-000005", "--database-url", url)
	require.NoError(t, err, "another order is the same: %s", out)

	out, err = runCmd(t, "verify", ordersummary.Name, "--repair", "--database-url", url)
	require.NoError(t, err, out)
	require.Contains(t, out, "repaired 1 aggregate(s) of order_summary")
	require.Contains(t, out, "order_summary: repaired")
	out, err = runCmd(t, "verify", ordersummary.Name, "--database-url", url)
	require.NoError(t, err, "re-verify after the repair: %s", out)
	require.Zero(t, scratch())

	_, err = runCmd(t, "verify", "order_notifications", "--database-url", url)
	require.Equal(t, exitNotVerified, exitCode(err), "%v", err)
	require.ErrorContains(t, err, "lists no tables")
	_, err = runCmd(t, "verify", "nope", "--database-url", url)
	require.Equal(t, exitNotVerified, exitCode(err), "%v", err)
}
