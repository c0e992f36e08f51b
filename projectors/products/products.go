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
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/outbox"
	"github.com/readside/readside/projectors"
)

// Name is the projection's name and checkpoint key.
const Name = "products"

// Projection maintains products. The zero value is ready to use.
type Projection struct{}

// New returns the projection.
func New() *Projection { return &Projection{} }

// Spec implements projectors.Projection.
func (*Projection) Spec() projectors.Spec {
	return projectors.Spec{
		Name: Name,
		// Every event of the aggregate type, not a list of known types: an
		// event type this projection does not know (a newer writer's, or a
		// bad one) fails and is parked with its reason instead of being
		// skipped silently.
		AggregateTypes: []string{domain.ProductAggregate},
		Tables:         []string{"products"},
	}
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
}

// Events only set fields, so the fold is merged over the stored row (read
// by the LEFT JOIN; NOT NULL is checked before ON CONFLICT). category_id is
// nullable, so $5 says which rows carry it.
const upsertSQL = `
INSERT INTO products AS p (product_id, name, price, category_id, sku, created_at, deleted, deleted_at, version, updated_at)
SELECT r.product_id,
       coalesce(r.name, cur.name),
       coalesce(r.price_cents / 100.0, cur.price),
       CASE WHEN r.created THEN r.category_id ELSE cur.category_id END,
       coalesce(r.sku, cur.sku),
       coalesce(r.created_at, cur.created_at),
       coalesce(r.deleted, cur.deleted, false),
       coalesce(r.deleted_at, cur.deleted_at),
       r.version, now()
  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bool[], $6::text[], $7::timestamptz[],
              $8::bool[], $9::timestamptz[], $10::int[])
       AS r(product_id, name, price_cents, category_id, created, sku, created_at, deleted, deleted_at, version)
  LEFT JOIN products cur ON cur.product_id = r.product_id
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
 WHERE p.version < excluded.version`

// Apply implements projectors.Projection. A product whose ProductCreated
// was never applied fails the NOT NULL constraints (the runtime parks the
// event).
func (*Projection) Apply(ctx context.Context, tx pgx.Tx, b *projectors.Batch) error {
	rows := map[string]*product{}
	for i := range b.Events {
		e := &b.Events[i]
		v, err := domain.Decode(e.Type, e.SchemaVersion, e.Data)
		if err != nil {
			return eventError(e, err)
		}
		r := rows[e.AggregateID]
		if r == nil {
			r = &product{}
			rows[e.AggregateID] = r
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

	keys := make([]string, 0, len(rows))
	for k := range rows {
		keys = append(keys, k)
	}
	slices.Sort(keys) // deterministic lock order
	n := len(keys)
	var (
		names, categories, skus = make([]*string, n), make([]*string, n), make([]*string, n)
		prices                  = make([]*int64, n)
		created, deleted        = make([]bool, n), make([]*bool, n)
		createdAt, deletedAt    = make([]*time.Time, n), make([]*time.Time, n)
		versions                = make([]int32, n)
	)
	for i, k := range keys {
		r := rows[k]
		names[i], categories[i], skus[i], prices[i] = r.name, r.categoryID, r.sku, r.priceCents
		created[i], deleted[i], createdAt[i], deletedAt[i], versions[i] = r.created, r.deleted, r.createdAt, r.deletedAt, r.version
	}
	if _, err := tx.Exec(ctx, upsertSQL, keys, names, prices, categories, created, skus, createdAt, deleted, deletedAt, versions); err != nil {
		return fmt.Errorf("%s: upsert %d products: %w", Name, n, err)
	}
	return nil
}

// Reset implements projectors.Projection.
func (*Projection) Reset(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `TRUNCATE products`); err != nil {
		return fmt.Errorf("%s: reset: %w", Name, err)
	}
	return nil
}

// eventError names the event that could not be applied.
func eventError(e *outbox.Event, err error) error {
	return fmt.Errorf("%s: event %d (%s %s %s v%d): %w", Name, e.ID(), e.AggregateType, e.AggregateID, e.Type, e.Version, err)
}

var _ projectors.Projection = (*Projection)(nil)
