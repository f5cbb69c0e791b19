package catalog

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// MemoryRepository is a ProductRepository in a map, with a simulated round
// trip to a database on every call, so that the cache's effect shows in
// response times when the example runs without PostgreSQL.
type MemoryRepository struct {
	latency time.Duration

	mu       sync.RWMutex
	products map[int64]Product
}

// NewMemoryRepository returns an empty repository whose every call takes
// latency (0 for none) before it looks at the data.
func NewMemoryRepository(latency time.Duration) *MemoryRepository {
	return &MemoryRepository{latency: latency, products: make(map[int64]Product)}
}

// Seed stores ps as they are, replacing products with the same ids, without
// the simulated latency.
func (r *MemoryRepository) Seed(ps ...Product) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range ps {
		if p.UpdatedAt.IsZero() {
			p.UpdatedAt = now()
		}
		r.products[p.ID] = p
	}
}

// Get implements ProductRepository.
func (r *MemoryRepository) Get(ctx context.Context, id int64) (Product, error) {
	if err := r.roundTrip(ctx); err != nil {
		return Product{}, err
	}
	r.mu.RLock()
	p, ok := r.products[id]
	r.mu.RUnlock()
	if !ok {
		return Product{}, fmt.Errorf("%w: id %d", ErrNotFound, id)
	}
	return p, nil
}

// GetMany implements ProductRepository: one simulated round trip for all ids.
func (r *MemoryRepository) GetMany(ctx context.Context, ids []int64) (map[int64]Product, error) {
	if err := r.roundTrip(ctx); err != nil {
		return nil, err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make(map[int64]Product, len(ids))
	for _, id := range ids {
		if p, ok := r.products[id]; ok {
			out[id] = p
		}
	}
	return out, nil
}

// Put implements ProductRepository.
func (r *MemoryRepository) Put(ctx context.Context, p Product) (Product, bool, error) {
	if err := p.Validate(); err != nil {
		return Product{}, false, err
	}
	if err := r.roundTrip(ctx); err != nil {
		return Product{}, false, err
	}
	p.UpdatedAt = now()
	r.mu.Lock()
	_, existed := r.products[p.ID]
	r.products[p.ID] = p
	r.mu.Unlock()
	return p, !existed, nil
}

// roundTrip waits for the simulated latency, or until ctx ends.
func (r *MemoryRepository) roundTrip(ctx context.Context) error {
	if r.latency <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(r.latency)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
