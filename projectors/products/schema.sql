-- The products projection's tables. `projector migrate` runs this every time
-- (it is idempotent), in readside's schema, for a binary that carries the
-- projection; the projection is their only writer, and its Reset empties
-- them before a replay. Upserts only overwrite a row with a newer version,
-- so replaying events over existing rows converges.

-- The product catalog. Deleted products stay (orders refer to them) and are
-- flagged.
CREATE TABLE IF NOT EXISTS products (
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
CREATE INDEX IF NOT EXISTS products_name_idx ON products (name) WHERE NOT deleted;
CREATE INDEX IF NOT EXISTS products_category_name_idx ON products (category_id, name) WHERE NOT deleted;
