// Package shipped lists the projections that readside ships for the seed
// domain, for the projector binary and the query API. It is a package of
// its own so that the runtime in package projectors does not import its
// own subpackages.
package shipped

import (
	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/notifications"
	"github.com/readside/readside/projectors/orderdetails"
	"github.com/readside/readside/projectors/orderstatistics"
	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/products"
)

// All returns a new instance of every shipped projection, in a fixed order:
// the read models, then the side-effect example.
func All() []projectors.Projection {
	return append(ReadModels(), notifications.New())
}

// ReadModels returns the shipped projections that build tables.
func ReadModels() []projectors.Projection {
	return []projectors.Projection{
		ordersummary.New(),
		orderdetails.New(),
		products.New(),
		orderstatistics.New(),
	}
}

// ByName returns the shipped projection whose Spec().Name is name.
func ByName(name string) (projectors.Projection, bool) {
	for _, p := range All() {
		if p.Spec().Name == name {
			return p, true
		}
	}
	return nil, false
}
