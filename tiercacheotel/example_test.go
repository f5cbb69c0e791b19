package tiercacheotel_test

import (
	"context"
	"fmt"
	"log"
	"slices"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/tiercacheotel"
)

func ExampleNew() {
	// A service would set up its exporters here, or set the global
	// providers and leave out WithMeterProvider and WithTracerProvider.
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())

	obs, err := tiercacheotel.New("users",
		tiercacheotel.WithMeterProvider(mp), tiercacheotel.WithTracerProvider(tp))
	if err != nil {
		log.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr(), ContextTimeoutEnabled: true})
	defer rdb.Close()
	users, err := tiercache.New[string](rdb, tiercache.WithPrefix("example"), tiercache.WithObserver(obs))
	if err != nil {
		log.Fatal(err)
	}
	defer users.Close()
	reg, err := obs.Track(users.Stats) // the breaker and L1 gauges
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Unregister()

	ctx := context.Background()
	load := func(context.Context) (string, error) { return "Ada", nil }
	for range 2 { // a miss that loads, then a hit in Redis
		if _, err := users.GetOrLoad(ctx, "user:42", load); err != nil {
			log.Fatal(err)
		}
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	var lines []string
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if sum, ok := m.Data.(metricdata.Sum[int64]); ok {
			for _, p := range sum.DataPoints {
				lines = append(lines, fmt.Sprintf("%s{%s} %d", m.Name, p.Attributes.Encoded(attribute.DefaultEncoder()), p.Value))
			}
		}
	}
	slices.Sort(lines)
	for _, l := range lines {
		fmt.Println(l)
	}
	for _, s := range spans.Ended() {
		if s.Name() == "tiercache.redis.generation" {
			continue // the namespace's generation, read when the cache sees fit
		}
		fmt.Println("span", s.Name(), s.Status().Code)
	}
	// Output:
	// tiercache.loads{tiercache.cache=users,tiercache.result=ok} 1
	// tiercache.requests{tiercache.cache=users,tiercache.result=hit,tiercache.tier=l2} 1
	// tiercache.requests{tiercache.cache=users,tiercache.result=miss,tiercache.tier=l2} 1
	// span tiercache.redis.get Unset
	// span tiercache.redis.acquire Unset
	// span tiercache.load Unset
	// span tiercache.redis.fill Unset
	// span tiercache.redis.get Unset
}
