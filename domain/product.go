package domain

import (
	"fmt"
	"strings"
	"time"
)

// ProductStatus is active after ProductCreated and deleted after
// ProductDeleted. The empty status is a product that does not exist yet.
type ProductStatus string

// Product statuses.
const (
	ProductStatusActive  ProductStatus = "active"
	ProductStatusDeleted ProductStatus = "deleted"
)

// MaxSKU bounds the length of a SKU.
const MaxSKU = 64

// Commands on a product.
type (
	// CreateProduct adds a product. An empty SKU is derived from the id
	// (DefaultSKU).
	CreateProduct struct {
		ProductID  string
		Name       string
		Price      Money
		CategoryID string
		SKU        string
	}
	// UpdatePrice changes an active product's price; the new price must be
	// greater than 0. The current price decides nothing.
	UpdatePrice struct {
		ProductID string
		NewPrice  Money
	}
	// DeleteProduct removes an active product.
	DeleteProduct struct{ ProductID string }
)

// Product is the product aggregate's state. The zero value is a product that
// has not been created.
type Product struct {
	ID         string        `json:"id"`
	Name       string        `json:"name"`
	Price      Money         `json:"price"`
	CategoryID string        `json:"category_id,omitempty"`
	SKU        string        `json:"sku"`
	Status     ProductStatus `json:"status"`
	CreatedAt  time.Time     `json:"created_at"`
	UpdatedAt  time.Time     `json:"updated_at"`
}

// AggregateType implements State.
func (*Product) AggregateType() string { return ProductAggregate }

// Exists reports whether the product has been created (it may be deleted).
func (p *Product) Exists() bool { return p.Status != "" }

// DefaultSKU is the SKU of a product created without one: "SKU-" and the
// first upper-cased characters of its id, as the catalog did before SKUs
// were entered (and as the ProductCreated v1 -> v2 upcaster fills in).
func DefaultSKU(productID string) string {
	sku := "SKU-" + strings.ToUpper(strings.ReplaceAll(productID, "-", ""))
	if len(sku) > 12 {
		sku = sku[:12]
	}
	return sku
}

// Create decides CreateProduct.
func (p *Product) Create(cmd CreateProduct, now time.Time) ([]Event, error) {
	if p.Exists() {
		return nil, alreadyExists(ProductAggregate, p.ID)
	}
	if err := checkID("product_id", cmd.ProductID); err != nil {
		return nil, err
	}
	name := strings.TrimSpace(cmd.Name)
	sku := strings.TrimSpace(cmd.SKU)
	switch {
	case name == "":
		return nil, invalid("name", "must not be empty")
	case len(name) > MaxProductName:
		return nil, invalid("name", fmt.Sprintf("must be at most %d bytes", MaxProductName))
	case strings.ContainsRune(name, 0):
		return nil, invalid("name", nulReason)
	case cmd.Price <= 0:
		return nil, invalid("price", "must be greater than 0")
	case cmd.Price > MaxMoney:
		return nil, invalid("price", fmt.Sprintf("must be at most %s", MaxMoney))
	case cmd.CategoryID != "" && !ValidID(cmd.CategoryID):
		return nil, invalid("category_id", "is not a valid id")
	case len(sku) > MaxSKU:
		return nil, invalid("sku", fmt.Sprintf("must be at most %d bytes", MaxSKU))
	case strings.ContainsRune(sku, 0):
		return nil, invalid("sku", nulReason)
	}
	if sku == "" {
		sku = DefaultSKU(cmd.ProductID)
	}
	return []Event{&ProductCreated{
		ProductID:  cmd.ProductID,
		Name:       name,
		Price:      cmd.Price,
		CategoryID: cmd.CategoryID,
		SKU:        sku,
		CreatedAt:  now.UTC(),
	}}, nil
}

// UpdatePrice decides UpdatePrice. Setting the current price again decides
// nothing (no events, no error).
func (p *Product) UpdatePrice(cmd UpdatePrice, now time.Time) ([]Event, error) {
	if err := p.requireActive("UpdatePrice", cmd.ProductID); err != nil {
		return nil, err
	}
	if cmd.NewPrice <= 0 {
		return nil, invalid("price", "must be greater than 0")
	}
	if cmd.NewPrice > MaxMoney {
		return nil, invalid("price", fmt.Sprintf("must be at most %s", MaxMoney))
	}
	if cmd.NewPrice == p.Price {
		return nil, nil
	}
	return []Event{&PriceUpdated{ProductID: p.ID, OldPrice: p.Price, NewPrice: cmd.NewPrice, UpdatedAt: now.UTC()}}, nil
}

// Delete decides DeleteProduct.
func (p *Product) Delete(cmd DeleteProduct, now time.Time) ([]Event, error) {
	if err := p.requireActive("DeleteProduct", cmd.ProductID); err != nil {
		return nil, err
	}
	return []Event{&ProductDeleted{ProductID: p.ID, DeletedAt: now.UTC()}}, nil
}

func (p *Product) requireActive(command, id string) error {
	if !p.Exists() {
		return notFound(ProductAggregate, id)
	}
	if id != "" && id != p.ID {
		return fmt.Errorf("%s: product id %q does not match loaded product %q", command, id, p.ID)
	}
	if p.Status != ProductStatusActive {
		return &TransitionError{Aggregate: ProductAggregate, ID: p.ID, Command: command, Status: string(p.Status)}
	}
	return nil
}

// Apply implements State. An event that is not a legal step from the
// product's status is an InvalidEventError.
func (p *Product) Apply(e Event) error {
	if _, err := ProductStatusAfter(p.Status, e); err != nil {
		return fmt.Errorf("product %s: %w", p.ID, err)
	}
	switch e := e.(type) {
	case *ProductCreated:
		*p = Product{
			ID:         e.ProductID,
			Name:       e.Name,
			Price:      e.Price,
			CategoryID: e.CategoryID,
			SKU:        e.SKU,
			Status:     ProductStatusActive,
			CreatedAt:  e.CreatedAt,
			UpdatedAt:  e.CreatedAt,
		}
	case *PriceUpdated:
		p.Price, p.UpdatedAt = e.NewPrice, e.UpdatedAt
	case *ProductDeleted:
		p.Status, p.UpdatedAt = ProductStatusDeleted, e.DeletedAt
	default:
		return fmt.Errorf("product %s: cannot apply %T", p.ID, e)
	}
	return nil
}
