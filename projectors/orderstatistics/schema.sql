-- The order_statistics projection's tables. `projector migrate` runs this
-- every time (it is idempotent), in readside's schema, for a binary that
-- carries the projection.

-- Orders per status: a counter projection. Counts are incremented and
-- decremented as orders move between statuses, so unlike the other read models a
-- replay over existing rows double-counts: it is right only if every event
-- is applied exactly once (apply and checkpoint in one transaction). It is
-- the canary for that guarantee.
--
-- The four rows always exist (a status no order has reached reads 0), so
-- the table's shape does not depend on how events were batched. The table
-- is four rows, read whole: no index beyond the key.
CREATE TABLE IF NOT EXISTS order_statistics (
    status              text          PRIMARY KEY CHECK (status IN ('pending', 'confirmed', 'shipped', 'cancelled')),
    order_count         bigint        NOT NULL DEFAULT 0,
    total_revenue       numeric(16,2) NOT NULL DEFAULT 0,
    average_order_value numeric(12,2) GENERATED ALWAYS AS (
        CASE WHEN order_count > 0 THEN round(total_revenue / order_count, 2) END) STORED
);
INSERT INTO order_statistics (status) VALUES ('pending'), ('confirmed'), ('shipped'), ('cancelled')
    ON CONFLICT (status) DO NOTHING;

-- The current status and amount of every order, owned by the
-- order_statistics projection: a transition must know which counter to
-- decrement.
CREATE TABLE IF NOT EXISTS order_statistics_orders (
    order_id     text          PRIMARY KEY,
    status       text          NOT NULL,
    total_amount numeric(12,2) NOT NULL
);
