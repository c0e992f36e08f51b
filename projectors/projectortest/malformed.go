package projectortest

import (
	"encoding/json"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/outbox"
)

// MalformedDomainEvents returns, for each of the given seed-domain event
// types, an event whose payload cannot be decoded (wrong field types), for
// Features.Malformed. Their aggregate ids start with "malformed-".
func MalformedDomainEvents(eventTypes ...string) []Malformed {
	var out []Malformed
	for _, typ := range eventTypes {
		agg := domain.OrderAggregate
		switch typ {
		case domain.ProductCreatedType, domain.PriceUpdatedType, domain.ProductDeletedType:
			agg = domain.ProductAggregate
		}
		out = append(out, Malformed{
			Aggregate: outbox.Aggregate{Type: agg, ID: "malformed-" + typ},
			Event: outbox.NewEvent{
				Type:          typ,
				Data:          json.RawMessage(`{"order_id": 7, "product_id": 7, "total_amount": "lots", "price": "lots"}`),
				SchemaVersion: domain.SchemaVersion(typ),
			},
		})
	}
	return out
}
