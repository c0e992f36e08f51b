-- The order_notifications projection's table: the River job that "sends"
-- an order-shipped notification records it here, once per event.
-- `projector migrate` runs this every time (it is idempotent), in
-- readside's schema, for a binary that carries the projection.
CREATE TABLE IF NOT EXISTS order_notifications (
    event_id        bigint      PRIMARY KEY,
    order_id        text        NOT NULL,
    tracking_number text,
    sent_at         timestamptz NOT NULL DEFAULT now()
);
