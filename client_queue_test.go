package readside_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/readside/readside"
	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/projectors"
)

// qcounter queues its writes (Batch.Queue), and also uses the ledger.
type qcounter struct{}

func (qcounter) Spec() projectors.Spec {
	return projectors.Spec{Name: "per_type_q", Tables: []string{"per_type_q"}}
}

func (qcounter) Schema() string {
	return `CREATE TABLE IF NOT EXISTS per_type_q (aggregate_type text PRIMARY KEY, n bigint NOT NULL)`
}

func (qcounter) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	for _, e := range b.Events {
		if err := b.Queue(ctx, tx, `INSERT INTO per_type_q VALUES ($1, 1) ON CONFLICT (aggregate_type) DO UPDATE SET n = per_type_q.n + 1`,
			e.AggregateType); err != nil {
			return err
		}
	}
	return nil
}

func (qcounter) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `TRUNCATE per_type_q`)
	return err
}

// A queuing projection in a readside schema of another name, in every
// exec mode that queues, with a decoy of its table in public.
func TestQueuedQueuedCustomSchema(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			url := pgtest.NewEmptyDatabaseURL(t)
			cfg, err := pgxpool.ParseConfig(url)
			require.NoError(t, err)
			cfg.ConnConfig.DefaultQueryExecMode = mode
			pool, err := pgxpool.NewWithConfig(ctx, cfg)
			require.NoError(t, err)
			t.Cleanup(pool.Close)
			_, err = pool.Exec(ctx, `CREATE TABLE public.per_type_q (aggregate_type int PRIMARY KEY, n uuid)`)
			require.NoError(t, err)
			const schema = "rs_q"
			c := newClient(t, readside.Config{Pool: pool, Schema: schema, Projections: []projectors.Projection{qcounter{}}})
			_, err = c.Migrate(ctx)
			require.NoError(t, err)
			start(t, c)
			token := appendOrders(t, pool, schema, 20)
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			require.NoError(t, c.WaitFor(wctx, token, "per_type_q"))
			var n int64
			require.NoError(t, pool.QueryRow(ctx, `SELECT n FROM rs_q.per_type_q WHERE aggregate_type = 'Order'`).Scan(&n))
			require.EqualValues(t, 20, n)
		})
	}
}
