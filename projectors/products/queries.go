package products

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/projectors/readmodel"
)

// Product is a row of products. Price is the amount exactly as
// PostgreSQL's numeric(12,2) prints it (two decimals), with no trip through
// float64; times are in UTC.
type Product struct {
	ProductID  string      `json:"product_id"`
	Name       string      `json:"name"`
	Price      json.Number `json:"price"`
	CategoryID string      `json:"category_id,omitempty"`
	SKU        string      `json:"sku"`
	CreatedAt  time.Time   `json:"created_at"`
	Deleted    bool        `json:"deleted"`
	DeletedAt  *time.Time  `json:"deleted_at,omitempty"`
	Version    int         `json:"version"`
}

// Filter selects the products of a List.
type Filter struct {
	IncludeDeleted bool // false leaves deleted products out
}

// Key is where a product stands in a List: a page resumes after the key of
// the previous page's last product.
type Key struct {
	Name      string
	ProductID string
}

// Key returns the product's Key.
func (p Product) Key() Key { return Key{Name: p.Name, ProductID: p.ProductID} }

// listOrder is by name, ties broken by product id.
var listOrder = readmodel.Keyset{
	Columns: []readmodel.Column{{Name: "name", Type: "text"}, {Name: "product_id", Type: "text"}},
}

// List returns up to limit products that match f by name, after the product
// whose key is after (nil for the first page), and whether more follow.
func List(ctx context.Context, db readmodel.Querier, f Filter, after *Key, limit int) ([]Product, bool, error) {
	s := readmodel.NewSelect(`SELECT product_id, name, price::text, coalesce(category_id, ''), sku, created_at, deleted, deleted_at, version
	          FROM readside.products`)
	if !f.IncludeDeleted {
		s.Where("NOT deleted")
	}
	var key []any
	if after != nil {
		key = []any{after.Name, after.ProductID}
	}
	list, more, err := readmodel.Page(ctx, db, s, listOrder, key, limit, scanProduct)
	if err != nil {
		return nil, false, fmt.Errorf("%s: list: %w", Name, err)
	}
	return list, more, nil
}

func scanProduct(row pgx.CollectableRow) (Product, error) {
	var p Product
	var price string
	err := row.Scan(&p.ProductID, &p.Name, &price, &p.CategoryID, &p.SKU, &p.CreatedAt, &p.Deleted, &p.DeletedAt, &p.Version)
	p.Price = json.Number(price)
	p.CreatedAt, p.DeletedAt = p.CreatedAt.UTC(), readmodel.UTC(p.DeletedAt)
	return p, err
}
