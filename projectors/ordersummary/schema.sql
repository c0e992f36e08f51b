-- The order_summary projection's tables. `projector migrate` runs this every time
-- (it is idempotent), in readside's schema, for a binary that carries the
-- projection; the projection is their only writer, and its Reset empties
-- them before a replay. Upserts only overwrite a row with a newer version,
-- so replaying events over existing rows converges.

-- Order list: one row per order, for the seed's OrdersController#index and
-- the shipped-orders query.
CREATE TABLE IF NOT EXISTS order_summary (
    order_id      text          PRIMARY KEY,
    customer_name text          NOT NULL,
    total_amount  numeric(12,2) NOT NULL,
    status        text          NOT NULL CHECK (status IN ('pending', 'confirmed', 'shipped', 'cancelled')),
    placed_at     timestamptz   NOT NULL,
    confirmed_at  timestamptz,
    shipped_at    timestamptz,
    cancelled_at  timestamptz,
    version       integer       NOT NULL,
    updated_at    timestamptz   NOT NULL DEFAULT now()
);

-- "All orders, recent first, paged" (ORDER BY placed_at DESC, order_id DESC
-- with a keyset on both) walks this index backwards without a sort.
CREATE INDEX IF NOT EXISTS order_summary_placed_at_idx ON order_summary (placed_at DESC, order_id DESC);
-- "Shipped orders, recent first" (WHERE status = 'shipped' ORDER BY
-- placed_at DESC): equality on status, then the index order is the result
-- order. Also serves "pending orders" and the same query for any status.
CREATE INDEX IF NOT EXISTS order_summary_status_placed_at_idx ON order_summary (status, placed_at DESC);
-- "A customer's orders in a status" (WHERE customer_name = $1 AND status =
-- $2), and by its prefix "all of a customer's orders".
CREATE INDEX IF NOT EXISTS order_summary_customer_status_idx ON order_summary (customer_name, status);
