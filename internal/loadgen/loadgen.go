// Package loadgen generates realistic order life cycles through the
// command path (aggregate.Execute): products first, then orders placed,
// confirmed, and shipped or cancelled, with occasional price changes. The
// writer's `load` subcommand and the projector's demo drive it.
package loadgen

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/readside/readside/aggregate"
	"github.com/readside/readside/domain"
	"github.com/readside/readside/internal/backoff"
	"github.com/readside/readside/internal/pgerr"
	"github.com/readside/readside/outbox"
)

// Config of a load run.
type Config struct {
	Events      int           // events to write in total, product creation included
	Aggregates  int           // orders in flight at once; fewer means more conflicts
	Concurrency int           // concurrent writers
	Rate        float64       // commands per second over all writers; 0 means as fast as possible
	Products    int           // products created first; 0 means 20
	Progress    time.Duration // progress report interval; 0 means 1s
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	c.Products = cmp.Or(c.Products, 20)
	c.Progress = cmp.Or(c.Progress, time.Second)
	switch {
	case c.Events < 1:
		return errors.New("load: --events must be at least 1")
	case c.Aggregates < 1:
		return errors.New("load: --aggregates must be at least 1")
	case c.Concurrency < 1:
		return errors.New("load: --concurrency must be at least 1")
	case c.Products < 1:
		return errors.New("load: --products must be at least 1")
	case c.Rate < 0:
		return errors.New("load: --rate must not be negative")
	case c.Progress < 0:
		return errors.New("load: --progress must be positive")
	}
	return nil
}

// Run writes cfg.Events events through repo, printing progress to out.
func Run(ctx context.Context, repo *aggregate.Repository, cfg Config, out io.Writer) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	l := &loader{cfg: cfg, repo: repo, out: out}
	return l.run(ctx)
}

// loader generates order life cycles: a set of products, then commands on
// cfg.aggregates order slots (place, confirm, ship or cancel; a finished
// order's slot starts a new order) and occasional price changes.
type loader struct {
	cfg  Config
	repo *aggregate.Repository
	out  io.Writer

	catalog []domain.Product
	slots   []atomic.Pointer[string] // the order id each slot works on
	limit   *limiter

	budget    int64        // commands that write one event each
	issued    atomic.Int64 // commands started (returned when they wrote nothing)
	written   atomic.Int64 // events committed
	orders    atomic.Int64 // orders placed
	conflicts atomic.Int64 // conflicts retried
	gaveUp    atomic.Int64 // commands that still conflicted after the retries
	transient atomic.Int64 // commands retried after a lost connection
}

var (
	customers    = []string{"Aiko Tanaka", "Kenji Sato", "Yuki Suzuki", "Haruto Ito", "Sakura Watanabe", "Ren Yamamoto", "Mei Nakamura", "Sota Kobayashi"}
	productNames = []string{"Notebook", "Fountain pen", "Desk lamp", "Tea set", "Backpack", "Umbrella", "Headphones", "Coffee mill", "Bento box", "Sneakers"}
	errOrderDone = errors.New("order finished")
)

func (l *loader) run(ctx context.Context) error {
	start := time.Now()
	if l.cfg.Rate > 0 {
		l.limit = &limiter{every: time.Duration(float64(time.Second) / l.cfg.Rate)}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	var wg sync.WaitGroup
	stopProgress := make(chan struct{})
	wg.Go(func() { l.progress(start, stopProgress) })

	err := l.createProducts(ctx)
	if err == nil {
		l.slots = make([]atomic.Pointer[string], l.cfg.Aggregates)
		for i := range l.slots {
			id := domain.NewID()
			l.slots[i].Store(&id)
		}
		l.budget = int64(l.cfg.Events) - l.written.Load()
		var workers sync.WaitGroup
		for range l.cfg.Concurrency {
			workers.Go(func() {
				if err := l.work(ctx); err != nil {
					cancel(err)
				}
			})
		}
		workers.Wait()
		err = context.Cause(ctx)
	}
	close(stopProgress)
	wg.Wait()

	elapsed := time.Since(start)
	n := l.written.Load()
	fmt.Fprintf(l.out, "load: %d events in %.2fs (%.0f events/s), %d orders, %d products, %d conflicts retried, %d commands gave up after retries, %d retried after connection errors\n",
		n, elapsed.Seconds(), float64(n)/elapsed.Seconds(), l.orders.Load(), len(l.catalog), l.conflicts.Load(), l.gaveUp.Load(), l.transient.Load())
	if err != nil {
		return fmt.Errorf("load stopped after %d events: %w", n, err)
	}
	return nil
}

func (l *loader) progress(start time.Time, stop <-chan struct{}) {
	t := time.NewTicker(l.cfg.Progress)
	defer t.Stop()
	last, lastAt := int64(0), start
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			n := l.written.Load()
			fmt.Fprintf(l.out, "load: %d/%d events, %.0f events/s, %d conflicts, %s elapsed\n",
				n, l.cfg.Events, float64(n-last)/now.Sub(lastAt).Seconds(), l.conflicts.Load(), now.Sub(start).Round(time.Second))
			last, lastAt = n, now
		}
	}
}

func (l *loader) createProducts(ctx context.Context) error {
	n := min(l.cfg.Products, l.cfg.Events)
	for i := range n {
		cmd := domain.CreateProduct{
			ProductID:  domain.NewID(),
			Name:       fmt.Sprintf("%s #%d", productNames[i%len(productNames)], i+1),
			Price:      domain.Money(100 + rand.N(20000)),
			CategoryID: fmt.Sprintf("cat-%d", i%5),
		}
		var p *domain.Product
		res, err := aggregate.Execute(ctx, l.repo, cmd.ProductID, meta(), func(s *domain.Product) ([]domain.Event, error) {
			events, err := s.Create(cmd, time.Now())
			if err == nil {
				cp := *s
				p = &cp
				for _, e := range events {
					_ = p.Apply(e)
				}
			}
			return events, err
		})
		if err != nil {
			return fmt.Errorf("create product: %w", err)
		}
		l.account(res)
		l.catalog = append(l.catalog, *p)
	}
	return nil
}

func meta() outbox.Metadata {
	return outbox.Metadata{CorrelationID: domain.NewID(), UserID: "writer-load"}
}

func (l *loader) account(res *aggregate.Result) {
	l.conflicts.Add(int64(res.Attempts - 1))
	if res.Append != nil {
		l.written.Add(int64(len(res.Append.Positions)))
	}
}

// work runs commands until the budget is spent. Each command writes one
// event or nothing; a command that wrote nothing gives its budget back.
func (l *loader) work(ctx context.Context) error {
	var down time.Time // when the database became unreachable for this writer
	for {
		if ctx.Err() != nil {
			return nil // the cause is reported by run
		}
		if !l.reserve() {
			return nil
		}
		if err := l.limit.wait(ctx); err != nil {
			return nil
		}
		wrote, err := l.command(ctx)
		switch {
		case err == nil:
			down = time.Time{}
		case errors.Is(err, outbox.ErrConcurrencyConflict):
			l.gaveUp.Add(1)
		case ctx.Err() != nil:
			return nil
		case pgerr.Transient(err) != "":
			// The database restarted or dropped the connection: wait and
			// carry on, for up to outageLimit. A command whose commit was
			// in flight may have committed; the next one reloads the
			// aggregate, so nothing is written twice.
			l.transient.Add(1)
			if down.IsZero() {
				down = time.Now()
			} else if time.Since(down) > outageLimit {
				return fmt.Errorf("database unavailable for %s: %w", outageLimit, err)
			}
			if backoff.Sleep(ctx, time.Duration(100+rand.N(400))*time.Millisecond) != nil {
				return nil
			}
		default:
			return err
		}
		if !wrote {
			l.issued.Add(-1)
		}
	}
}

// outageLimit is how long a writer waits for the database to come back.
const outageLimit = 2 * time.Minute

// reserve takes one command from the budget. issued never passes the
// budget, so a command that gives its reservation back is always redone by
// the worker that gave it back, and the total comes out exact.
func (l *loader) reserve() bool {
	for {
		n := l.issued.Load()
		if n >= l.budget {
			return false
		}
		if l.issued.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// command runs one random command and reports whether it wrote an event.
func (l *loader) command(ctx context.Context) (bool, error) {
	if rand.N(100) < 5 {
		p := l.catalog[rand.N(len(l.catalog))]
		res, err := aggregate.Execute(ctx, l.repo, p.ID, meta(), func(s *domain.Product) ([]domain.Event, error) {
			return s.UpdatePrice(domain.UpdatePrice{ProductID: p.ID, NewPrice: domain.Money(100 + rand.N(20000))}, time.Now())
		})
		if err != nil {
			return false, err
		}
		l.account(res)
		return res.Append != nil, nil
	}

	slot := &l.slots[rand.N(len(l.slots))]
	idp := slot.Load()
	id := *idp
	res, err := aggregate.Execute(ctx, l.repo, id, meta(), func(o *domain.Order) ([]domain.Event, error) {
		now := time.Now()
		switch o.Status {
		case "":
			return o.Place(domain.PlaceOrder{OrderID: id, CustomerName: customers[rand.N(len(customers))], Items: l.items()}, now)
		case domain.OrderStatusPending:
			if rand.N(10) == 0 {
				return o.Cancel(domain.CancelOrder{OrderID: id, Reason: "customer changed their mind"}, now)
			}
			return o.Confirm(domain.ConfirmOrder{OrderID: id}, now)
		case domain.OrderStatusConfirmed:
			if rand.N(100) < 15 {
				return o.Cancel(domain.CancelOrder{OrderID: id, Reason: "out of stock"}, now)
			}
			return o.Ship(domain.ShipOrder{OrderID: id, TrackingNumber: fmt.Sprintf("JP%010d", rand.N(int64(1e10)))}, now)
		default:
			return nil, errOrderDone
		}
	})
	if errors.Is(err, errOrderDone) {
		next := domain.NewID()
		slot.CompareAndSwap(idp, &next) // another writer may have moved it on already
		return false, nil
	}
	if err != nil {
		return false, err
	}
	l.account(res)
	if res.Version == 1 && res.Append != nil {
		l.orders.Add(1)
	}
	return res.Append != nil, nil
}

// items picks 1 to 3 lines from the catalog at their creation prices.
func (l *loader) items() []domain.OrderItem {
	items := make([]domain.OrderItem, 1+rand.N(3))
	for i := range items {
		p := l.catalog[rand.N(len(l.catalog))]
		items[i] = domain.OrderItem{ProductID: p.ID, ProductName: p.Name, Quantity: 1 + rand.N(5), UnitPrice: p.Price}
	}
	return items
}

// limiter spaces commands evenly at a rate; a nil limiter does not wait.
type limiter struct {
	mu    sync.Mutex
	next  time.Time
	every time.Duration
}

func (l *limiter) wait(ctx context.Context) error {
	if l == nil {
		return ctx.Err()
	}
	l.mu.Lock()
	now := time.Now()
	at := now
	if l.next.After(now) {
		at = l.next
	}
	l.next = at.Add(l.every)
	l.mu.Unlock()
	return backoff.Sleep(ctx, at.Sub(now))
}
