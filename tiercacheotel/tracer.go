package tiercacheotel

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tiercache/tiercache"
)

// notFound marks a load span whose loader said the record does not exist.
var notFound = attribute.Bool("tiercache.not_found", true)

// spanSpec is the name and start options of the spans of one operation.
type spanSpec struct {
	name string
	opts []trace.SpanStartOption
}

// loadOps are the operations of loads that the cache starts spans for:
// a single key, and a batch.
var loadOps = [...]string{"load", "load_many"}

// spanSpecs makes the specs of the operations known in advance: loads,
// and each Redis operation.
func (o *Observer) spanSpecs() {
	for i, op := range loadOps {
		o.loadSpans[i] = spanSpec{"tiercache." + op, []trace.SpanStartOption{
			trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(o.cache),
		}}
	}
	for i, op := range redisOps {
		o.redisSpans[i] = spanSpec{"tiercache.redis." + op, []trace.SpanStartOption{
			trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(o.cache, keyRedisOp.String(op), attribute.String("db.system.name", "redis")),
		}}
	}
}

// spanFor returns the spec of the spans of op.
func (o *Observer) spanFor(op string) spanSpec {
	switch op {
	case "load":
		return o.loadSpans[0]
	case "load_many":
		return o.loadSpans[1]
	}
	if i := redisOpIndex(op); i >= 0 {
		return o.redisSpans[i]
	}
	return spanSpec{"tiercache." + op, []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(o.cache),
	}}
}

// Start begins the span of op, a child of the span in ctx:
// tiercache.<op> for a load (tiercache.load, tiercache.load_many),
// tiercache.redis.<op> for a Redis operation. The function it
// returns ends the span, with an error status if err is not nil, except
// for [tiercache.ErrNotFound], which is an answer, not a failure.
func (o *Observer) Start(ctx context.Context, op string) (context.Context, func(err error)) {
	s := o.spanFor(op)
	ctx, span := o.tracer.Start(ctx, s.name, s.opts...)
	return ctx, func(err error) { end(span, err) }
}

func end(span trace.Span, err error) {
	switch {
	case err == nil:
	case errors.Is(err, tiercache.ErrNotFound):
		span.SetAttributes(notFound)
	default:
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
