package tiercacheotel

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Attribute keys of the follower's measurements.
const (
	keyFollower = attribute.Key("tiercache.follower")
	keyTable    = attribute.Key("tiercache.follower.table")
)

// followerBuckets are the advised bucket bounds, in seconds, of the
// follower's commit-to-invalidation delay histogram: 0.1ms to 10s in steps
// of 1, 2.5 and 5. A follower that keeps up invalidates a commit in a few
// tenths of a millisecond; one catching up after an outage, in seconds.
var followerBuckets = []float64{
	0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005,
	0.01, 0.025, 0.05,
	0.1, 0.25, 0.5,
	1, 2.5, 5,
	10,
}

// FollowerObserver reports the figures of a tiercachepg follower to
// OpenTelemetry: set it as the follower's Options.Observer. Its method set
// is tiercachepg.Observer's, which it implements without this module
// importing tiercachepg (and pgx with it). Create it with [NewFollower];
// it is safe for concurrent use, and its methods are quick and, but for
// Unmapped, record into precomputed attribute sets, as the follower asks
// of an observer.
type FollowerObserver struct {
	follower attribute.KeyValue

	delay    metric.Float64Histogram
	txns     metric.Int64Counter
	changes  metric.Int64Counter
	failures metric.Int64Counter
	unmapped metric.Int64Counter
	lag      metric.Int64Gauge
	exceeded metric.Int64Gauge

	// The follower's attribute set, made in NewFollower and only read
	// afterwards.
	add    []metric.AddOption
	record []metric.RecordOption
}

// NewFollower returns the observer of the tiercachepg follower named
// follower, which every measurement carries as the attribute
// tiercache.follower:
//
//	obs, err := tiercacheotel.NewFollower("orders")
//	...
//	f, err := tiercachepg.New(dsn, tiercachepg.Options{..., Observer: obs})
//
// It takes the options of [New]; only the meter provider is used. It makes
// the instruments (see the package doc); their errors, and options that
// make no sense (wrapping [ErrInvalidOption]), are returned.
func NewFollower(follower string, opts ...Option) (*FollowerObserver, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	o := &FollowerObserver{follower: keyFollower.String(follower)}
	if err := o.instruments(cfg.meterProvider.Meter(scope)); err != nil {
		return nil, fmt.Errorf("tiercacheotel: %w", err)
	}
	a := newAttrs(o.follower)
	o.add, o.record = a.add(), a.record()
	return o, nil
}

// instruments makes the instruments.
func (o *FollowerObserver) instruments(m metric.Meter) error {
	var err, e error
	counter := func(name, unit, desc string) metric.Int64Counter {
		var c metric.Int64Counter
		c, e = m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		err = errors.Join(err, e)
		return c
	}
	gauge := func(name, unit, desc string) metric.Int64Gauge {
		var g metric.Int64Gauge
		g, e = m.Int64Gauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		err = errors.Join(err, e)
		return g
	}
	o.delay, e = m.Float64Histogram("tiercache.follower.invalidation.delay", metric.WithUnit("s"),
		metric.WithDescription("Delay of each committed transaction's invalidation, from the commit (the database's clock) to the return of the Invalidate call that covered it."),
		metric.WithExplicitBucketBoundaries(followerBuckets...))
	err = errors.Join(err, e)
	o.txns = counter("tiercache.follower.transactions", "{transaction}",
		"Committed transactions whose invalidation returned nil (a transaction replayed after a restart counts again).")
	o.changes = counter("tiercache.follower.changes", "{change}",
		"Row changes of the followed tables in those transactions.")
	o.failures = counter("tiercache.follower.invalidate.failures", "{call}",
		"Invalidate calls that returned an error; each is retried.")
	o.unmapped = counter("tiercache.follower.unmapped", "{change}",
		"Changes that could not be mapped to an invalidation and went to the dead-letter policy, by table (schema.name).")
	o.lag = gauge("tiercache.follower.slot.lag", "By",
		"How far the replication slot's confirmed position is behind the server's WAL position, as last read.")
	o.exceeded = gauge("tiercache.follower.lag.exceeded", "1",
		"Whether the slot's lag is above the follower's MaxLag: 1 above, 0 not (or no MaxLag).")
	return err
}

// Applied counts a committed transaction whose invalidation returned nil
// and its changes, and records its commit-to-invalidation delay.
func (o *FollowerObserver) Applied(changes int, delay time.Duration) {
	ctx := context.Background()
	o.txns.Add(ctx, 1, o.add...)
	o.changes.Add(ctx, int64(max(changes, 0)), o.add...)
	o.delay.Record(ctx, delay.Seconds(), o.record...)
}

// Failed counts a failed Invalidate call.
func (o *FollowerObserver) Failed(error) { o.failures.Add(context.Background(), 1, o.add...) }

// Unmapped counts a change of table that went to the dead-letter policy.
func (o *FollowerObserver) Unmapped(table string) {
	o.unmapped.Add(context.Background(), 1, metric.WithAttributes(o.follower, keyTable.String(table)))
}

// SlotLag records the slot's lag in bytes, and 1 or 0 for whether it is
// above the follower's MaxLag.
func (o *FollowerObserver) SlotLag(bytes int64, exceeded bool) {
	ctx := context.Background()
	o.lag.Record(ctx, bytes, o.record...)
	o.exceeded.Record(ctx, int64(b2i(exceeded)), o.record...)
}
