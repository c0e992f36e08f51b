package outbox_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/outbox"
)

// PrepareAppend's statement, sent in one pipeline with its BEGIN and
// COMMIT, appends as Append does (one event and several), and Read
// reports a taken version as a conflict; the COMMIT behind it then does
// not run.
func TestPrepareAppendInAPipeline(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	agg := outbox.Aggregate{Type: "Order", ID: "o-1"}
	send := func(expected int, events ...outbox.NewEvent) (*outbox.AppendResult, error) {
		q, err := outbox.PrepareAppend(agg, expected, events)
		require.NoError(t, err)
		c, err := pool.Acquire(ctx)
		require.NoError(t, err)
		defer c.Release()
		b := &pgx.Batch{}
		b.Queue("begin")
		b.Queue(q.SQL, q.Args...)
		b.Queue("commit")
		br := c.SendBatch(ctx, b)
		_, err = br.Exec()
		require.NoError(t, err)
		res, err := q.Read(br.QueryRow())
		if err == nil {
			_, err = br.Exec()
		}
		_ = br.Close()
		if c.Conn().PgConn().TxStatus() != 'I' {
			_, rerr := c.Exec(ctx, "rollback")
			require.NoError(t, rerr)
		}
		return res, err
	}
	one, err := send(0, ev("OrderPlaced", 1))
	require.NoError(t, err)
	require.Equal(t, 1, one.Version)
	two, err := send(1, ev("OrderConfirmed", 2), ev("OrderShipped", 3))
	require.NoError(t, err)
	require.Equal(t, 3, two.Version)
	require.Len(t, two.Positions, 2)

	var ids []int64
	var txids []uint64
	rows, err := pool.Query(ctx, `SELECT id, txid::text::bigint FROM readside.events WHERE aggregate_id = 'o-1' ORDER BY version`)
	require.NoError(t, err)
	for rows.Next() {
		var id int64
		var txid uint64
		require.NoError(t, rows.Scan(&id, &txid))
		ids, txids = append(ids, id), append(txids, txid)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, append(one.Positions, two.Positions...), ids)
	require.Equal(t, []uint64{one.TxID, two.TxID, two.TxID}, txids)

	_, err = send(1, ev("OrderCancelled", 4))
	require.ErrorIs(t, err, outbox.ErrConcurrencyConflict)
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM readside.events`).Scan(&n))
	require.Equal(t, 3, n)

	_, err = outbox.PrepareAppend(agg, 0, nil)
	require.Error(t, err, "validated as Append validates")
}
