-- Read models of the seed domain, one set of tables per shipped projection
-- (projectors/ordersummary, orderdetails, products, orderstatistics). Each
-- projection owns its tables: it is the only writer, and its Reset truncates
-- them before a replay.
--
-- Every row that a projection upserts carries the aggregate version it
-- reflects; upserts only overwrite a row with a newer version, so replaying
-- events over existing rows converges (order_statistics excepted, see below).

-- Order list: one row per order, for the seed's OrdersController#index and
-- the shipped-orders query.
CREATE TABLE order_summary (
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
CREATE INDEX order_summary_placed_at_idx ON order_summary (placed_at DESC, order_id DESC);
-- "Shipped orders, recent first" (WHERE status = 'shipped' ORDER BY
-- placed_at DESC): equality on status, then the index order is the result
-- order. Also serves "pending orders" and the same query for any status.
CREATE INDEX order_summary_status_placed_at_idx ON order_summary (status, placed_at DESC);
-- "A customer's orders in a status" (WHERE customer_name = $1 AND status =
-- $2), and by its prefix "all of a customer's orders".
CREATE INDEX order_summary_customer_status_idx ON order_summary (customer_name, status);

-- One order's full view: the summary's fields plus what only the detail page
-- shows. Read by primary key only, so no other index.
CREATE TABLE order_details (
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
CREATE TABLE order_items (
    order_id     text          NOT NULL,
    line_no      integer       NOT NULL,
    product_id   text,
    product_name text          NOT NULL,
    quantity     integer       NOT NULL,
    unit_price   numeric(12,2) NOT NULL,
    subtotal     numeric(12,2) NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

-- The product catalog. Deleted products stay (orders refer to them) and are
-- flagged.
CREATE TABLE products (
    product_id  text          PRIMARY KEY,
    name        text          NOT NULL,
    price       numeric(12,2) NOT NULL,
    category_id text,
    sku         text          NOT NULL,
    created_at  timestamptz   NOT NULL,
    deleted     boolean       NOT NULL DEFAULT false,
    deleted_at  timestamptz,
    version     integer       NOT NULL,
    updated_at  timestamptz   NOT NULL DEFAULT now()
);

-- "Product list" (WHERE NOT deleted ORDER BY name) and "products of a
-- category" (WHERE NOT deleted AND category_id = $1 ORDER BY name): deleted
-- products are never listed, so they are left out of the indexes.
CREATE INDEX products_name_idx ON products (name) WHERE NOT deleted;
CREATE INDEX products_category_name_idx ON products (category_id, name) WHERE NOT deleted;

-- Orders per status: a counter projection. Counts are incremented and
-- decremented as orders move between statuses, so unlike the tables above a
-- replay over existing rows double-counts: it is right only if every event
-- is applied exactly once (apply and checkpoint in one transaction). It is
-- the canary for that guarantee.
--
-- The four rows always exist (a status no order has reached reads 0), so
-- the table's shape does not depend on how events were batched. The table
-- is four rows, read whole: no index beyond the key.
CREATE TABLE order_statistics (
    status              text          PRIMARY KEY CHECK (status IN ('pending', 'confirmed', 'shipped', 'cancelled')),
    order_count         bigint        NOT NULL DEFAULT 0,
    total_revenue       numeric(16,2) NOT NULL DEFAULT 0,
    average_order_value numeric(12,2) GENERATED ALWAYS AS (
        CASE WHEN order_count > 0 THEN round(total_revenue / order_count, 2) END) STORED
);
INSERT INTO order_statistics (status) VALUES ('pending'), ('confirmed'), ('shipped'), ('cancelled');

-- The current status and amount of every order, owned by the
-- order_statistics projection: a transition must know which counter to
-- decrement.
CREATE TABLE order_statistics_orders (
    order_id     text          PRIMARY KEY,
    status       text          NOT NULL,
    total_amount numeric(12,2) NOT NULL
);
