// Package readmodel is what the shipped read models (ordersummary,
// orderdetails, products, orderstatistics) share: the shape of their Spec,
// their Reset and Forget statements, how they name an event they cannot
// apply, and the keyset paging of their list queries. Each read model keeps
// its own upserts and queries; only logic that is the same in all of them
// lives here.
package readmodel
