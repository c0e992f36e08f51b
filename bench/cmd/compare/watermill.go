package main

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
)

const wmTopic = "order_events"

type wmSettings struct {
	tuned bool
}

// runWatermill appends the workload as events plus one message per event
// published by watermill-sql's Postgres publisher inside the writer's
// transaction, then runs one consumer group through a watermill Router
// whose handler upserts per message, and measures until every message is
// applied.
func runWatermill(ctx context.Context, cfg config, n int, s wmSettings) (result, error) {
	var r result
	w := newWorkload(n, cfg.aggregates, cfg.perTx, cfg.writers)
	r.events = w.Events()
	label := "watermill_default"
	if s.tuned {
		label = "watermill_tuned"
	}
	dbURL, drop, err := freshDB(ctx, cfg.dbURL, label)
	if err != nil {
		return r, err
	}
	defer drop()
	pool, err := newPool(ctx, dbURL, int32(cfg.writers+4))
	if err != nil {
		return r, err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, peerEventsDDL+";"+readModelDDL("bench_orders")); err != nil {
		return r, err
	}

	schema := wsql.DefaultPostgreSQLSchema{}
	subCfg := wsql.SubscriberConfig{
		ConsumerGroup:  "bench_orders",
		SchemaAdapter:  schema,
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
	}
	if s.tuned {
		schema.SubscribeBatchSize = 1000
		subCfg.SchemaAdapter = schema
		subCfg.PollInterval = 10 * time.Millisecond
	}
	logger := watermill.NopLogger{}
	sub, err := wsql.NewSubscriber(wsql.BeginnerFromPgx(pool), subCfg, logger)
	if err != nil {
		return r, err
	}
	if err := sub.SubscribeInitialize(wmTopic); err != nil {
		return r, err
	}

	type msgBody struct {
		AggregateID string          `json:"aggregate_id"`
		Version     int             `json:"version"`
		Type        string          `json:"type"`
		Data        json.RawMessage `json:"data"`
	}
	elapsed, err := w.write(ctx, pool, func(ctx context.Context, tx pgx.Tx, events []event) error {
		if err := appendEvents(ctx, tx, peerEventsSQL, events); err != nil {
			return err
		}
		pub, err := wsql.NewPublisher(wsql.TxFromPgx(tx), wsql.PublisherConfig{SchemaAdapter: schema}, logger)
		if err != nil {
			return err
		}
		msgs := make([]*message.Message, len(events))
		for i, e := range events {
			b, err := json.Marshal(msgBody{AggregateID: e.AggregateID, Version: e.Version, Type: e.Type, Data: json.RawMessage(e.Data)})
			if err != nil {
				return err
			}
			msgs[i] = message.NewMessage(watermill.NewUUID(), b)
		}
		return pub.Publish(wmTopic, msgs...)
	})
	if err != nil {
		return r, err
	}
	r.writeRate = float64(r.events) / elapsed.Seconds()
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE`); err != nil {
		return r, err
	}

	upsert := upsertOneSQL("bench_orders")
	var applied, ooo atomic.Int64
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		return r, err
	}
	router.AddConsumerHandler("apply_order_event", wmTopic, sub, func(msg *message.Message) error {
		var m msgBody
		if err := json.Unmarshal(msg.Payload, &m); err != nil {
			return err
		}
		var affected int64
		if s.tuned {
			// The upsert commits with the subscriber's offset.
			tx, ok := wsql.TxFromContext(msg.Context())
			if !ok {
				return errors.New("no subscriber transaction in the message context")
			}
			res, err := tx.ExecContext(msg.Context(), upsert, m.AggregateID, m.Version, m.Type, []byte(m.Data))
			if err != nil {
				return err
			}
			affected, _ = res.RowsAffected()
		} else {
			tag, err := pool.Exec(msg.Context(), upsert, m.AggregateID, m.Version, m.Type, []byte(m.Data))
			if err != nil {
				return err
			}
			affected = tag.RowsAffected()
		}
		if affected == 0 {
			ooo.Add(1)
		}
		applied.Add(1)
		return nil
	})
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(runCtx) }()
	defer func() {
		_ = router.Close()
		<-runErr
		_ = sub.Close()
	}()
	if err := waitCount(ctx, &applied, int64(r.events), cfg.timeout); err != nil {
		return r, err
	}
	bad, err := waitVerified(ctx, pool, "bench_orders", w, 10*time.Second)
	if err != nil {
		return r, err
	}
	r.drainRate = float64(r.events) / time.Since(start).Seconds()
	r.load = loadAvg()
	r.bad = bad
	r.ooo = ooo.Load()
	return r, nil
}
