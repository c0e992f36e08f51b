-- The order_details projection's tables. `projector migrate` runs this every time
-- (it is idempotent), in readside's schema, for a binary that carries the
-- projection; the projection is their only writer, and its Reset empties
-- them before a replay. Upserts only overwrite a row with a newer version,
-- so replaying events over existing rows converges.

-- One order's full view: the summary's fields plus what only the detail page
-- shows. Read by primary key only, so no other index.
CREATE TABLE IF NOT EXISTS order_details (
    order_id        text          PRIMARY KEY,
    customer_name   text          NOT NULL,
    total_amount    numeric(12,2) NOT NULL,
    status          text          NOT NULL CHECK (status IN ('pending', 'confirmed', 'shipped', 'cancelled')),
    item_count      integer       NOT NULL,
    placed_at       timestamptz   NOT NULL,
    confirmed_at    timestamptz,
    shipped_at      timestamptz,
    tracking_number text,
    cancelled_at    timestamptz,
    cancel_reason   text,
    version         integer       NOT NULL,
    updated_at      timestamptz   NOT NULL DEFAULT now()
);

-- The lines of an order, written once from OrderPlaced (they never change,
-- so the line's key is its version guard). The primary key serves "items of
-- order X in line order". No foreign key to order_details: both are written
-- by the same projection in the same transaction, and the check would only
-- cost the apply path.
CREATE TABLE IF NOT EXISTS order_items (
    order_id     text          NOT NULL,
    line_no      integer       NOT NULL,
    product_id   text,
    product_name text          NOT NULL,
    quantity     integer       NOT NULL,
    unit_price   numeric(12,2) NOT NULL,
    subtotal     numeric(12,2) NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
