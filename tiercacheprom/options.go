package tiercacheprom

import (
	"errors"
	"fmt"
	"maps"
	"math"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrInvalidOption is returned by [New] for an option that makes no sense:
// buckets that are not increasing, a constant label that is not a valid name
// or that clashes with a label of the metrics (cache, tier, result, op,
// event, to, node, follower, table).
var ErrInvalidOption = errors.New("tiercacheprom: invalid option")

// defaultBuckets are the upper bounds, in seconds, of the duration
// histograms: from 1µs (an L1 hit is well under it) to about 4s (a slow
// loader), in steps of 4.
func defaultBuckets() []float64 { return prometheus.ExponentialBuckets(1e-6, 4, 12) }

// Option configures a [Collector].
type Option func(*config)

type config struct {
	buckets     []float64
	constLabels prometheus.Labels
}

// WithBuckets sets the upper bounds, in seconds, of the duration
// histograms of the caches. They must be finite and strictly increasing; the
// +Inf bucket is implied. The two delay histograms keep their own buckets
// (see the package doc). The default is 12 buckets from 1µs to about 4s in steps of 4
// (1µs, 4µs, 16µs, ... 4.19s): wide enough for an L1 hit and a slow loader
// in one histogram, at the price of a coarse resolution.
//
// Each bucket is one more series per label set: the lookup histogram alone
// has two tiers per cache.
func WithBuckets(buckets ...float64) Option {
	return func(c *config) { c.buckets = append([]float64(nil), buckets...) }
}

// WithConstLabels adds labels with fixed values to every metric, for
// example the name of the service when several share one registry. A later
// call adds to the labels of an earlier one.
func WithConstLabels(labels prometheus.Labels) Option {
	return func(c *config) {
		if c.constLabels == nil {
			c.constLabels = prometheus.Labels{}
		}
		maps.Copy(c.constLabels, labels)
	}
}

func (c *config) validate() error {
	if len(c.buckets) == 0 {
		return fmt.Errorf("%w: no histogram buckets", ErrInvalidOption)
	}
	for i, b := range c.buckets {
		if math.IsNaN(b) || math.IsInf(b, 0) {
			return fmt.Errorf("%w: histogram bucket %v is not finite", ErrInvalidOption, b)
		}
		if i > 0 && b <= c.buckets[i-1] {
			return fmt.Errorf("%w: histogram buckets %v are not strictly increasing", ErrInvalidOption, c.buckets)
		}
	}
	// Label names (and clashes with the variable labels) are checked by
	// registering the collector with a throwaway registry, in New: the
	// rules are Prometheus's, so let Prometheus apply them.
	return nil
}
