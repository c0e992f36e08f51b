package domain_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/domain"
)

func productIn(t *testing.T, status domain.ProductStatus) *domain.Product {
	t.Helper()
	p := new(domain.Product)
	if status == "" {
		return p
	}
	es, err := p.Create(domain.CreateProduct{ProductID: "p-1", Name: "Widget", Price: 1000}, now)
	require.NoError(t, err)
	require.NoError(t, p.Apply(es[0]))
	if status == domain.ProductStatusDeleted {
		es, err := p.Delete(domain.DeleteProduct{ProductID: "p-1"}, now)
		require.NoError(t, err)
		require.NoError(t, p.Apply(es[0]))
	}
	return p
}

func TestProductTransitions(t *testing.T) {
	t.Parallel()
	create := func(p *domain.Product) ([]domain.Event, error) {
		return p.Create(domain.CreateProduct{ProductID: "p-1", Name: "Widget", Price: 1000}, now)
	}
	price := func(m domain.Money) func(p *domain.Product) ([]domain.Event, error) {
		return func(p *domain.Product) ([]domain.Event, error) {
			return p.UpdatePrice(domain.UpdatePrice{ProductID: "p-1", NewPrice: m}, now)
		}
	}
	del := func(p *domain.Product) ([]domain.Event, error) {
		return p.Delete(domain.DeleteProduct{ProductID: "p-1"}, now)
	}
	active, deleted := domain.ProductStatusActive, domain.ProductStatusDeleted
	for _, tc := range []struct {
		name   string
		from   domain.ProductStatus
		decide func(p *domain.Product) ([]domain.Event, error)
		err    error
		events int
	}{
		{"create new", "", create, nil, 1},
		{"create existing", active, create, domain.ErrAlreadyExists, 0},
		{"price unknown", "", price(500), domain.ErrNotFound, 0},
		{"price active", active, price(500), nil, 1},
		{"same price", active, price(1000), nil, 0},
		{"zero price", active, price(0), domain.ErrValidation, 0},
		{"negative price", active, price(-1), domain.ErrValidation, 0},
		{"price deleted", deleted, price(500), domain.ErrInvalidTransition, 0},
		{"delete unknown", "", del, domain.ErrNotFound, 0},
		{"delete active", active, del, nil, 1},
		{"delete deleted", deleted, del, domain.ErrInvalidTransition, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := productIn(t, tc.from)
			events, err := tc.decide(p)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Len(t, events, tc.events)
		})
	}
}

func TestCreateProduct(t *testing.T) {
	t.Parallel()
	for name, cmd := range map[string]domain.CreateProduct{
		"empty name": {ProductID: "p-1", Price: 100},
		"zero price": {ProductID: "p-1", Name: "W"},
		"bad id":     {ProductID: "", Name: "W", Price: 100},
	} {
		_, err := new(domain.Product).Create(cmd, now)
		require.ErrorIs(t, err, domain.ErrValidation, name)
	}

	p := new(domain.Product)
	es, err := p.Create(domain.CreateProduct{ProductID: "ab-cd-ef-12345", Name: "W", Price: 250}, now)
	require.NoError(t, err)
	require.NoError(t, p.Apply(es[0]))
	require.Equal(t, "SKU-ABCDEF12", p.SKU, "an empty SKU is derived from the id")

	es, err = p.UpdatePrice(domain.UpdatePrice{ProductID: p.ID, NewPrice: 300}, now)
	require.NoError(t, err)
	require.Equal(t, &domain.PriceUpdated{ProductID: p.ID, OldPrice: 250, NewPrice: 300, UpdatedAt: now}, es[0])
	require.NoError(t, p.Apply(es[0]))
	require.Equal(t, domain.Money(300), p.Price)

	b, err := json.Marshal(p)
	require.NoError(t, err)
	var back domain.Product
	require.NoError(t, json.Unmarshal(b, &back))
	require.Equal(t, *p, back)
}

func TestProductCreatedV1Upcast(t *testing.T) {
	t.Parallel()
	v1 := []byte(`{"product_id":"abc-123","name":"Old","price":12.5,"created_at":"2024-01-01T00:00:00Z"}`)
	got, err := domain.Decode(domain.ProductCreatedType, 1, v1)
	require.NoError(t, err)
	pc := got.(*domain.ProductCreated)
	require.Equal(t, domain.DefaultSKU("abc-123"), pc.SKU)
	require.Equal(t, domain.Money(1250), pc.Price)
	p := new(domain.Product)
	require.NoError(t, p.Apply(pc))
	require.Equal(t, "SKU-ABC123", p.SKU)
}
