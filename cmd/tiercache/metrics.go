package main

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/tiercacheprom"
)

// metrics serves Prometheus metrics while the demo runs: tiercache's own
// (tiercacheprom, one cache label per scenario and instance, such as
// "full/0") and the demo's loader calls and reads per scenario. A nil
// *metrics does nothing, so the scenarios need not check.
type metrics struct {
	addr string
	reg  *prometheus.Registry
	col  *tiercacheprom.Collector
	srv  *http.Server
	done chan error
}

func serveMetrics(addr string) (*metrics, error) {
	col, err := tiercacheprom.New()
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(col, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, usagef("--metrics-addr %q: %v", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/metrics", http.StatusFound)
	})
	m := &metrics{
		addr: ln.Addr().String(), reg: reg, col: col, done: make(chan error, 1),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
	}
	go func() { m.done <- m.srv.Serve(ln) }()
	return m, nil
}

// observer returns the tiercache observer of the cache named name.
func (m *metrics) observer(name string) tiercache.Observer {
	if m == nil {
		return nil
	}
	return m.col.Observer(name)
}

// track exports the gauges of the cache named name from stats.
func (m *metrics) track(name string, stats func() tiercache.Stats) {
	if m != nil {
		m.col.Track(name, stats)
	}
}

// untrack stops exporting the gauges of a closed cache.
func (m *metrics) untrack(name string) {
	if m != nil {
		m.col.Untrack(name)
	}
}

// scenario exports the demo's counters of a scenario, read from loads and
// reads at every scrape; they stay, frozen, after the scenario ends.
func (m *metrics) scenario(name string, loads, reads, errs func() uint64) {
	if m == nil {
		return
	}
	labels := prometheus.Labels{"scenario": name}
	counter := func(metric, help string, f func() uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "tiercache_demo", Name: metric, Help: help, ConstLabels: labels,
		}, func() float64 { return float64(f()) })
	}
	// A scenario name is registered once per run, so these cannot clash.
	m.reg.MustRegister(
		counter("loader_calls_total", "Calls of the simulated database's load.", loads),
		counter("reads_total", "Reads issued by the demo's workers.", reads),
		counter("errors_total", "Requests that returned an error.", errs),
	)
}

func (m *metrics) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = m.srv.Shutdown(ctx)
	<-m.done // http.ErrServerClosed, or why it stopped serving earlier
}
