package projectortest

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/domain"
	"github.com/readside/readside/outbox"
)

// Lifecycles configures Generate: concurrent writers driving orders and
// products through realistic life cycles.
type Lifecycles struct {
	// Orders to place, across all writers. 0 means 60.
	Orders int
	// Products to create, across all writers; orders buy from them. 0 means
	// Orders/4, at least 3.
	Products int
	// Writers appending concurrently, each on its own aggregates. 0 means 4.
	Writers int
	// Seed makes each writer's choices reproducible (the interleaving of
	// writers is not). 0 means 1.
	Seed uint64
	// V1Share is the share of ProductCreated events written with schema
	// version 1 (no SKU), which readers must upcast. 0 means 0.3; negative
	// means none.
	V1Share float64
	// Interval is the pause between two transactions of a writer, for a
	// steady load while something else happens; Generate then runs until
	// its orders are done or ctx ends. 0 means none.
	Interval time.Duration
	// FirstWriter numbers the writers from it (aggregate ids carry the
	// number), so that a second Generate on the same database writes
	// aggregates of its own. 0 means 0.
	FirstWriter int
}

// EventsPerOrder is roughly how many events Generate appends per order
// (placed, then confirmed/shipped/cancelled), products included; use it to
// size a backlog.
const EventsPerOrder = 3.2

// Generator returns a gen function for Run that appends l's life cycles.
func (l Lifecycles) Generator() func(t *testing.T, pool *pgxpool.Pool) {
	return func(t *testing.T, pool *pgxpool.Pool) {
		t.Helper()
		if _, err := l.Generate(context.Background(), pool); err != nil {
			t.Fatalf("projectortest: generate: %v", err)
		}
	}
}

func (l Lifecycles) withDefaults() Lifecycles {
	if l.Orders == 0 {
		l.Orders = 60
	}
	if l.Products == 0 {
		l.Products = max(3, l.Orders/4)
	}
	if l.Writers == 0 {
		l.Writers = 4
	}
	if l.Seed == 0 {
		l.Seed = 1
	}
	if l.V1Share == 0 {
		l.V1Share = 0.3
	}
	return l
}

// Generate appends the life cycles with outbox.Append, each writer in
// transactions of 1 to 6 appends on different aggregates, and returns the
// number of events appended.
func (l Lifecycles) Generate(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	l = l.withDefaults()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int
		first error
	)
	for w := range l.Writers {
		share := func(n int) int { return n/l.Writers + btoi(w < n%l.Writers) }
		g := &writer{
			id: l.FirstWriter + w, rng: rand.New(rand.NewPCG(l.Seed, uint64(w))), pool: pool, v1Share: l.V1Share, interval: l.Interval,
			ordersLeft: share(l.Orders), productsLeft: max(1, share(l.Products)),
			clock: time.Date(2025, 1, 1, 9, 0, 0, 0, time.UTC),
		}
		wg.Go(func() {
			n, err := g.run(ctx)
			mu.Lock()
			defer mu.Unlock()
			total += n
			if err != nil && first == nil {
				first = err
			}
		})
	}
	wg.Wait()
	return total, first
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

type product struct {
	id, name string
	price    domain.Money
	version  int
	deleted  bool
}

type order struct {
	id      string
	status  string
	version int
	stopAt  string // the customer never goes further: pending or confirmed; "" runs to the end
}

type pending struct {
	agg    outbox.Aggregate
	exp    int
	events []outbox.NewEvent
	commit func() // updates the writer's state once the transaction commits
}

type writer struct {
	id           int
	rng          *rand.Rand
	pool         *pgxpool.Pool
	v1Share      float64
	ordersLeft   int
	productsLeft int
	products     []*product
	open         []*order // orders not yet shipped or cancelled
	nOrders      int
	nProducts    int
	clock        time.Time
	appended     int
	interval     time.Duration
}

func (g *writer) now() time.Time {
	g.clock = g.clock.Add(time.Duration(1+g.rng.IntN(90)) * time.Second)
	return g.clock
}

func (g *writer) run(ctx context.Context) (int, error) {
	for g.ordersLeft > 0 || g.productsLeft > 0 || len(g.open) > 0 {
		var tx []pending
		used := map[string]bool{}
		for range 1 + g.rng.IntN(6) {
			p, ok := g.next()
			if !ok {
				break
			}
			if used[p.agg.ID] { // one append per aggregate per transaction
				continue
			}
			used[p.agg.ID] = true
			tx = append(tx, p)
		}
		if len(tx) == 0 {
			continue
		}
		err := pgx.BeginFunc(ctx, g.pool, func(t pgx.Tx) error {
			for _, p := range tx {
				if _, err := outbox.Append(ctx, t, p.agg, p.exp, p.events); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return g.appended, fmt.Errorf("writer %d: %w", g.id, err)
		}
		for _, p := range tx {
			p.commit()
			g.appended += len(p.events)
		}
		if g.interval > 0 {
			select {
			case <-ctx.Done():
				return g.appended, ctx.Err()
			case <-time.After(g.interval):
			}
		}
	}
	return g.appended, nil
}

// next picks the next command: create a product, change one, place an
// order, or move an open order along.
func (g *writer) next() (pending, bool) {
	live := g.liveProducts()
	switch r := g.rng.Float64(); {
	case g.productsLeft > 0 && (len(live) == 0 || r < 0.15):
		return g.createProduct(), true
	case len(live) > 1 && r < 0.22:
		return g.changeProduct(live), true
	case g.ordersLeft > 0 && len(live) > 0 && (len(g.open) == 0 || r < 0.55):
		return g.placeOrder(live), true
	case len(g.open) > 0:
		return g.advanceOrder(), true
	case g.productsLeft > 0:
		return g.createProduct(), true
	}
	return pending{}, false
}

func (g *writer) liveProducts() []*product {
	var out []*product
	for _, p := range g.products {
		if !p.deleted {
			out = append(out, p)
		}
	}
	return out
}

func event(typ string, v any) outbox.NewEvent {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return outbox.NewEvent{Type: typ, Data: b, SchemaVersion: domain.SchemaVersion(typ)}
}

var (
	adjectives = []string{"Red", "Blue", "Compact", "Deluxe", "Organic", "Wireless", "Classic", "Smart"}
	nouns      = []string{"Mug", "Lamp", "Chair", "Headphones", "Notebook", "Kettle", "Backpack", "Tea"}
	customers  = []string{"Sato", "Suzuki", "Takahashi", "Tanaka", "Watanabe", "Ito", "Yamamoto", "Nakamura", "Kobayashi", "Kato"}
)

func (g *writer) createProduct() pending {
	g.productsLeft--
	g.nProducts++
	p := &product{
		id:    fmt.Sprintf("prod-%d-%04d", g.id, g.nProducts),
		name:  adjectives[g.rng.IntN(len(adjectives))] + " " + nouns[g.rng.IntN(len(nouns))],
		price: domain.Money(100 + g.rng.IntN(50000)),
	}
	ev := domain.ProductCreated{
		ProductID: p.id, Name: p.name, Price: p.price,
		CategoryID: fmt.Sprintf("cat-%d", g.rng.IntN(5)),
		SKU:        fmt.Sprintf("SKU-%d-%04d", g.id, g.nProducts), CreatedAt: g.now(),
	}
	if g.rng.IntN(6) == 0 {
		ev.CategoryID = ""
	}
	ne := event(domain.ProductCreatedType, ev)
	if g.rng.Float64() < g.v1Share {
		// Schema version 1 had no SKU: the upcaster derives it.
		var m map[string]any
		_ = json.Unmarshal(ne.Data, &m)
		delete(m, "sku")
		ne.Data, _ = json.Marshal(m)
		ne.SchemaVersion = 1
	}
	return pending{
		agg: outbox.Aggregate{Type: domain.ProductAggregate, ID: p.id}, exp: 0, events: []outbox.NewEvent{ne},
		commit: func() { p.version = 1; g.products = append(g.products, p) },
	}
}

func (g *writer) changeProduct(live []*product) pending {
	p := live[g.rng.IntN(len(live))]
	agg := outbox.Aggregate{Type: domain.ProductAggregate, ID: p.id}
	if g.rng.IntN(8) == 0 {
		return pending{agg: agg, exp: p.version,
			events: []outbox.NewEvent{event(domain.ProductDeletedType, domain.ProductDeleted{ProductID: p.id, DeletedAt: g.now()})},
			commit: func() { p.version++; p.deleted = true }}
	}
	price := max(domain.Money(50), p.price+domain.Money(g.rng.IntN(2001)-1000))
	return pending{agg: agg, exp: p.version,
		events: []outbox.NewEvent{event(domain.PriceUpdatedType, domain.PriceUpdated{ProductID: p.id, OldPrice: p.price, NewPrice: price, UpdatedAt: g.now()})},
		commit: func() { p.version++; p.price = price }}
}

func (g *writer) placeOrder(live []*product) pending {
	g.ordersLeft--
	g.nOrders++
	o := &order{id: fmt.Sprintf("ord-%d-%06d", g.id, g.nOrders), status: "pending"}
	switch g.rng.IntN(10) {
	case 0:
		o.stopAt = "pending"
	case 1:
		o.stopAt = "confirmed"
	}
	ev := domain.OrderPlaced{
		OrderID:      o.id,
		CustomerName: customers[g.rng.IntN(len(customers))],
		PlacedAt:     g.now(),
	}
	for range 1 + g.rng.IntN(4) {
		p := live[g.rng.IntN(len(live))]
		it := domain.OrderItem{ProductID: p.id, ProductName: p.name, Quantity: 1 + g.rng.IntN(5), UnitPrice: p.price}
		ev.Items = append(ev.Items, it)
		ev.TotalAmount += it.Subtotal()
	}
	return pending{
		agg: outbox.Aggregate{Type: domain.OrderAggregate, ID: o.id}, exp: 0,
		events: []outbox.NewEvent{event(domain.OrderPlacedType, ev)},
		commit: func() {
			o.version = 1
			if o.stopAt != "pending" {
				g.open = append(g.open, o)
			}
		},
	}
}

// advanceOrder moves a random open order: pending -> confirmed (80%) or
// cancelled; confirmed -> shipped (85%) or cancelled.
func (g *writer) advanceOrder() pending {
	i := g.rng.IntN(len(g.open))
	o := g.open[i]
	agg := outbox.Aggregate{Type: domain.OrderAggregate, ID: o.id}
	var ev outbox.NewEvent
	next := ""
	switch {
	case o.status == "pending" && g.rng.IntN(10) < 8:
		next, ev = "confirmed", event(domain.OrderConfirmedType, domain.OrderConfirmed{OrderID: o.id, ConfirmedAt: g.now()})
	case o.status == "confirmed" && g.rng.IntN(100) < 85:
		next, ev = "shipped", event(domain.OrderShippedType, domain.OrderShipped{OrderID: o.id, TrackingNumber: fmt.Sprintf("TRK%08d", g.rng.IntN(1e8)), ShippedAt: g.now()})
	default:
		next, ev = "cancelled", event(domain.OrderCancelledType, domain.OrderCancelled{OrderID: o.id, Reason: "customer request", CancelledAt: g.now()})
	}
	return pending{agg: agg, exp: o.version, events: []outbox.NewEvent{ev}, commit: func() {
		o.version++
		o.status = next
		if next == "shipped" || next == "cancelled" || next == o.stopAt {
			g.open = removeOrder(g.open, o)
		}
	}}
}

func removeOrder(s []*order, o *order) []*order {
	for i, x := range s {
		if x == o {
			return append(s[:i], s[i+1:]...)
		}
	}
	return s
}
