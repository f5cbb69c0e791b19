// Package catalog holds the catalog's domain: the Product, the
// ProductRepository that stores products, its implementations (in memory and
// PostgreSQL) and CachedRepository, the decorator that puts tiercache in front
// of any of them.
//
// The HTTP layer depends on ProductRepository only, so it neither knows nor
// cares whether a cache sits in front of the database: the decorator keeps the
// repository's contract, errors included.
package catalog

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrNotFound is returned by a ProductRepository for a product id that does
// not exist. Test for it with errors.Is: implementations wrap it with the id.
var ErrNotFound = errors.New("catalog: product not found")

// ErrInvalidProduct is returned by Product.Validate, wrapped with the reason.
var ErrInvalidProduct = errors.New("catalog: invalid product")

// Product is one entry of the catalog. It is what the cache stores, encoded
// as JSON: a change to its fields that old cached values cannot be decoded
// into needs a bump of the cache's schema version (see cacheSchemaVersion in
// package main).
type Product struct {
	ID         int64     `json:"id"`
	Name       string    `json:"name"`
	PriceCents int64     `json:"price_cents"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// Validate reports whether p can be stored: a positive id, a non-empty name of
// at most 200 bytes, a price that is not negative.
func (p Product) Validate() error {
	switch {
	case p.ID <= 0:
		return fmt.Errorf("%w: id %d is not positive", ErrInvalidProduct, p.ID)
	case strings.TrimSpace(p.Name) == "":
		return fmt.Errorf("%w: empty name", ErrInvalidProduct)
	case len(p.Name) > 200:
		return fmt.Errorf("%w: name longer than 200 bytes", ErrInvalidProduct)
	case p.PriceCents < 0:
		return fmt.Errorf("%w: negative price", ErrInvalidProduct)
	}
	return nil
}

// ProductRepository stores products. Implementations are safe for concurrent
// use.
type ProductRepository interface {
	// Get returns the product with id, or an error wrapping ErrNotFound.
	Get(ctx context.Context, id int64) (Product, error)
	// GetMany returns the products of ids that exist, in one round trip.
	// Ids that do not exist are absent from the map; that is not an error.
	GetMany(ctx context.Context, ids []int64) (map[int64]Product, error)
	// Put creates or replaces p (an upsert keyed by p.ID) and returns the
	// product as stored, with its new UpdatedAt, and whether it was created.
	Put(ctx context.Context, p Product) (saved Product, created bool, err error)
}

// SampleProducts returns n products with ids 1 to n, to seed an empty store.
func SampleProducts(n int) []Product {
	names := []string{
		"Espresso cup", "Pour-over kettle", "Burr grinder", "Milk jug",
		"Tamper", "Scale", "Filter papers", "Travel mug", "Cold-brew jar", "Beans, 1 kg",
	}
	ps := make([]Product, n)
	for i := range ps {
		id := int64(i + 1)
		ps[i] = Product{
			ID:         id,
			Name:       fmt.Sprintf("%s #%d", names[i%len(names)], id),
			PriceCents: 500 + (id*731)%9500,
		}
	}
	return ps
}

// now is the time products are stamped with: UTC, to the microsecond, as
// PostgreSQL's timestamptz keeps it, so that both stores return the same.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }
