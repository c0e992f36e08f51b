// Package products is the product catalog read model (table products), from
// ProductCreated (schema version 2 with SKU; version 1 payloads are upcast
// by domain.Decode), PriceUpdated and ProductDeleted. Deleted products stay,
// flagged, because orders refer to them.
//
// Apply folds the batch to one final row per product in Go and writes it
// with one set-based upsert guarded by the aggregate version.
package products

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/readmodel"
)

// Name is the projection's name and checkpoint key.
const Name = "products"

// Projection maintains products. The zero value is ready to use.
type Projection struct{}

// New returns the projection.
func New() *Projection { return &Projection{} }

// Spec implements projectors.Projection (see readmodel.Spec).
func (*Projection) Spec() projectors.Spec {
	s := readmodel.Spec(Name, domain.ProductAggregate, "products")
	s.Keys = map[string]string{"products": "product_id"}
	s.Volatile = []string{"products.updated_at"}
	return s
}

// product is a product's state after the batch; nil fields were not set by
// the batch and keep their stored value.
type product struct {
	name       *string
	priceCents *int64
	categoryID *string
	sku        *string
	createdAt  *time.Time
	deleted    *bool
	deletedAt  *time.Time
	version    int32
	created    bool // ProductCreated is in the batch: category_id is known, even if empty

	readmodel.Steps[domain.ProductStatus] // checked against the stored row in the upsert
}

// Events only set fields, so the fold is merged over the stored row (read
// by the LEFT JOIN; NOT NULL is checked before ON CONFLICT). category_id is
// nullable, so $5 says which rows carry it.
//
// The same statement checks each product's first event of the batch
// against the stored row: its status (” when there is none, deleted or
// active) must be one the event may follow (r.Before()), unless the row
// already reflects that event (a replay). It writes nothing when a product
// fails the check, and returns those products.
const upsertSQL = `
WITH r AS (
    SELECT r.*, cur.name AS cur_name, cur.price AS cur_price, cur.category_id AS cur_category, cur.sku AS cur_sku,
           cur.created_at AS cur_created_at, cur.deleted AS cur_deleted, cur.deleted_at AS cur_deleted_at,
           cur.version AS cur_version,
           CASE WHEN cur.product_id IS NULL THEN '' WHEN cur.deleted THEN 'deleted' ELSE 'active' END AS cur_status
      FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bool[], $6::text[], $7::timestamptz[],
                  $8::bool[], $9::timestamptz[], $10::int[], $11::int[], $12::text[])
           AS r(product_id, name, price_cents, category_id, created, sku, created_at, deleted, deleted_at, version,
                first_version, before)
      LEFT JOIN products cur ON cur.product_id = r.product_id
), illegal AS (
    SELECT product_id, cur_status FROM r
     WHERE coalesce(cur_version, 0) < first_version
       AND strpos(before, ',' || cur_status || ',') = 0
), up AS (
INSERT INTO products AS p (product_id, name, price, category_id, sku, created_at, deleted, deleted_at, version, updated_at)
SELECT product_id,
       coalesce(name, cur_name),
       coalesce(price_cents / 100.0, cur_price),
       CASE WHEN created THEN category_id ELSE cur_category END,
       coalesce(sku, cur_sku),
       coalesce(created_at, cur_created_at),
       coalesce(deleted, cur_deleted, false),
       coalesce(deleted_at, cur_deleted_at),
       version, now()
  FROM r
 WHERE NOT EXISTS (SELECT FROM illegal)
ON CONFLICT (product_id) DO UPDATE SET
       name        = excluded.name,
       price       = excluded.price,
       category_id = excluded.category_id,
       sku         = excluded.sku,
       created_at  = excluded.created_at,
       deleted     = excluded.deleted,
       deleted_at  = excluded.deleted_at,
       version     = excluded.version,
       updated_at  = excluded.updated_at
 WHERE p.version < excluded.version
)
SELECT product_id, cur_status FROM illegal ORDER BY product_id`

// Apply implements projectors.Projection. A product whose ProductCreated
// was never applied fails the NOT NULL constraints (the runtime parks the
// event).
func (*Projection) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	rows := map[string]*product{}
	for i := range b.Events {
		e := &b.Events[i]
		r := rows[e.AggregateID]
		if r == nil {
			r = &product{}
			rows[e.AggregateID] = r
		}
		v, err := readmodel.Products.Follow(Name, &r.Steps, e)
		if err != nil {
			return err
		}
		switch ev := v.(type) {
		case *domain.ProductCreated:
			price := int64(ev.Price)
			r.name, r.priceCents, r.sku, r.createdAt, r.created = &ev.Name, &price, &ev.SKU, &ev.CreatedAt, true
			r.categoryID = nil
			if ev.CategoryID != "" {
				r.categoryID = &ev.CategoryID
			}
		case *domain.PriceUpdated:
			price := int64(ev.NewPrice)
			r.priceCents = &price
		case *domain.ProductDeleted:
			deleted := true
			r.deleted, r.deletedAt = &deleted, &ev.DeletedAt
		default:
			return eventError(e, fmt.Errorf("%s does not handle %T", Name, v))
		}
		r.version = int32(e.Version)
	}
	if len(rows) == 0 {
		return nil
	}

	keys := slices.Sorted(maps.Keys(rows)) // deterministic lock order
	n := len(keys)
	var (
		names, categories, skus = make([]*string, n), make([]*string, n), make([]*string, n)
		prices                  = make([]*int64, n)
		created, deleted        = make([]bool, n), make([]*bool, n)
		createdAt, deletedAt    = make([]*time.Time, n), make([]*time.Time, n)
		versions, firsts        = make([]int32, n), make([]int32, n)
		befores                 = make([]string, n)
	)
	for i, k := range keys {
		r := rows[k]
		names[i], categories[i], skus[i], prices[i] = r.name, r.categoryID, r.sku, r.priceCents
		created[i], deleted[i], createdAt[i], deletedAt[i], versions[i] = r.created, r.deleted, r.createdAt, r.deletedAt, r.version
		firsts[i], befores[i] = r.FirstVersion(), r.Before()
	}
	res, err := tx.Query(ctx, upsertSQL, keys, names, prices, categories, created, skus, createdAt, deleted, deletedAt, versions,
		firsts, befores)
	if err != nil {
		return fmt.Errorf("%s: upsert %d products: %w", Name, n, err)
	}
	illegal, err := pgx.CollectRows(res, pgx.RowToStructByPos[readmodel.Refused])
	if err != nil {
		return fmt.Errorf("%s: upsert %d products: %w", Name, n, err)
	}
	if len(illegal) > 0 {
		return readmodel.Products.Refuse(Name, &rows[illegal[0].ID].Steps, illegal[0])
	}
	return nil
}

// Reset implements projectors.Projection.
func (*Projection) Reset(ctx context.Context, tx pgx.Tx) error {
	return readmodel.Truncate(ctx, tx, Name, "products")
}

// eventError names the event that could not be applied.
func eventError(e *outbox.Event, err error) error { return readmodel.EventError(Name, e, err) }

var _ projectors.Projection = (*Projection)(nil)
