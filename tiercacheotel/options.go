package tiercacheotel

import (
	"errors"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// ErrInvalidOption is returned by [New] for an option that makes no sense,
// such as a nil provider.
var ErrInvalidOption = errors.New("tiercacheotel: invalid option")

// Option configures an [Observer].
type Option func(*config)

type config struct {
	meterProvider  metric.MeterProvider
	tracerProvider trace.TracerProvider
	nilProvider    bool // an option was given a nil provider
}

// WithMeterProvider sets where the metrics go (default: the global
// MeterProvider, otel.GetMeterProvider(), as it is when [New] is called).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) {
		c.meterProvider = mp
		c.nilProvider = c.nilProvider || mp == nil
	}
}

// WithTracerProvider sets where the spans go (default: the global
// TracerProvider, otel.GetTracerProvider(), as it is when [New] is called).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) {
		c.tracerProvider = tp
		c.nilProvider = c.nilProvider || tp == nil
	}
}

// newConfig applies opts; a provider not given is the global one.
func newConfig(opts []Option) (config, error) {
	var cfg config
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if cfg.nilProvider {
		return cfg, fmt.Errorf("%w: nil provider", ErrInvalidOption)
	}
	if cfg.meterProvider == nil {
		cfg.meterProvider = otel.GetMeterProvider()
	}
	if cfg.tracerProvider == nil {
		cfg.tracerProvider = otel.GetTracerProvider()
	}
	return cfg, nil
}
