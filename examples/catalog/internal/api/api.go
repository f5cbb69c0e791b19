// Package api is the catalog's HTTP interface, over a
// catalog.ProductRepository (cached or not: it cannot tell).
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/tiercachepg"

	"github.com/tiercache/tiercache/examples/catalog/internal/catalog"
)

// MaxListIDs bounds the ids of one GET /products?ids=... request.
const MaxListIDs = 100

// maxBodyBytes bounds a PUT body.
const maxBodyBytes = 64 << 10

// Handler serves
//
//	GET /products/{id}          one product, 404 if it does not exist
//	GET /products?ids=1,2,3     the products that exist, in the order asked, and the ids that do not
//	PUT /products/{id}          create or replace a product (JSON body); 201 when created
//	GET /stats                  the cache's counters
//	GET /stats/follower         the commit-log follower's figures; 404 without one
type Handler struct {
	repo     catalog.ProductRepository
	stats    func() tiercache.Stats
	follower func() tiercachepg.Stats // nil: no follower
	log      *slog.Logger
	mux      *http.ServeMux
}

// New returns the handler. stats reports the cache's counters for GET
// /stats, follower (nil when the service runs none) the commit-log
// follower's for GET /stats/follower; log gets the errors that are
// answered with a 5xx.
func New(repo catalog.ProductRepository, stats func() tiercache.Stats, follower func() tiercachepg.Stats, log *slog.Logger) *Handler {
	h := &Handler{repo: repo, stats: stats, follower: follower, log: log, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /products/{id}", h.getProduct)
	h.mux.HandleFunc("GET /products", h.listProducts)
	h.mux.HandleFunc("PUT /products/{id}", h.putProduct)
	h.mux.HandleFunc("GET /stats", h.getStats)
	h.mux.HandleFunc("GET /stats/follower", h.getFollowerStats)
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) getProduct(w http.ResponseWriter, r *http.Request) {
	id, err := parseID(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	p, err := h.repo.Get(r.Context(), id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

// ListResponse is the body of GET /products?ids=...
type ListResponse struct {
	Products []catalog.Product `json:"products"`
	NotFound []int64           `json:"not_found"`
}

func (h *Handler) listProducts(w http.ResponseWriter, r *http.Request) {
	raw := r.URL.Query().Get("ids")
	if raw == "" {
		writeError(w, http.StatusBadRequest, "missing ids: GET /products?ids=1,2,3")
		return
	}
	var ids []int64
	seen := make(map[int64]bool)
	for s := range strings.SplitSeq(raw, ",") {
		id, err := parseID(strings.TrimSpace(s))
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		if seen[id] {
			continue
		}
		if len(ids) == MaxListIDs {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("at most %d ids", MaxListIDs))
			return
		}
		seen[id] = true
		ids = append(ids, id)
	}
	found, err := h.repo.GetMany(r.Context(), ids)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	resp := ListResponse{Products: []catalog.Product{}, NotFound: []int64{}}
	for _, id := range ids {
		if p, ok := found[id]; ok {
			resp.Products = append(resp.Products, p)
		} else {
			resp.NotFound = append(resp.NotFound, id)
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// PutRequest is the body of PUT /products/{id}. The id comes from the path.
type PutRequest struct {
	Name       string `json:"name"`
	PriceCents int64  `json:"price_cents"`
}

func (h *Handler) putProduct(w http.ResponseWriter, r *http.Request) {
	id, err := parseID(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var req PutRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "bad JSON body: "+err.Error())
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, "bad JSON body: more than one value")
		return
	}
	p, created, err := h.repo.Put(r.Context(), catalog.Product{ID: id, Name: req.Name, PriceCents: req.PriceCents})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
		w.Header().Set("Location", "/products/"+strconv.FormatInt(p.ID, 10))
	}
	writeJSON(w, status, p)
}

// StatsResponse is the body of GET /stats: tiercache.Stats with names.
type StatsResponse struct {
	L1Hits     uint64            `json:"l1_hits"`
	L1Misses   uint64            `json:"l1_misses"`
	L2Hits     uint64            `json:"l2_hits"`
	L2Misses   uint64            `json:"l2_misses"`
	Loads      uint64            `json:"loads"`
	LoadErrors uint64            `json:"load_errors"`
	HitRatio   float64           `json:"hit_ratio"`
	Breaker    string            `json:"breaker"`
	L1Entries  int               `json:"l1_entries"`
	Events     map[string]uint64 `json:"events"`
}

func (h *Handler) getStats(w http.ResponseWriter, _ *http.Request) {
	s := h.stats()
	resp := StatsResponse{
		L1Hits: s.L1Hits, L1Misses: s.L1Misses, L2Hits: s.L2Hits, L2Misses: s.L2Misses,
		Loads: s.Loads, LoadErrors: s.LoadErrors, HitRatio: s.HitRatio(),
		Breaker: s.BreakerState.String(), L1Entries: s.L1Entries,
		Events: make(map[string]uint64, len(s.Events)),
	}
	for i, n := range s.Events {
		resp.Events[tiercache.Event(i).String()] = n
	}
	writeJSON(w, http.StatusOK, resp)
}

// FollowerResponse is the body of GET /stats/follower: the figures of
// tiercachepg.Stats that tell whether the cache is keeping up with the
// database.
type FollowerResponse struct {
	// Running: Run is in progress. Streaming: this instance holds the
	// replication slot and reads from it; an instance whose follower is
	// running but not streaming is waiting for the slot (another
	// instance's follower has it) or reconnecting.
	Running   bool `json:"running"`
	Streaming bool `json:"streaming"`
	// ConfirmedLSN is the follower's position, "X/Y" as PostgreSQL writes
	// an LSN: every change committed before it is invalidated.
	ConfirmedLSN string `json:"confirmed_lsn"`
	// SlotLagBytes is how far the slot is behind the database's WAL, as
	// last read (every 10 s); -1 before the first reading.
	SlotLagBytes int64  `json:"slot_lag_bytes"`
	Transactions uint64 `json:"transactions"`
	Changes      uint64 `json:"changes"`
	Unmapped     uint64 `json:"unmapped"`
	Failures     uint64 `json:"invalidate_failures"`
	Pending      int    `json:"pending"`
	// The commit-to-invalidation delay of the last transactions, in
	// milliseconds.
	DelayP50Ms float64 `json:"delay_p50_ms"`
	DelayP99Ms float64 `json:"delay_p99_ms"`
	DelayMaxMs float64 `json:"delay_max_ms"`
}

func (h *Handler) getFollowerStats(w http.ResponseWriter, _ *http.Request) {
	if h.follower == nil {
		writeError(w, http.StatusNotFound, "no commit-log follower: the store is not PostgreSQL, or -follow=false")
		return
	}
	s := h.follower()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	writeJSON(w, http.StatusOK, FollowerResponse{
		Running: s.Running, Streaming: s.Streaming, ConfirmedLSN: s.ConfirmedLSN.String(),
		SlotLagBytes: s.SlotLagBytes, Transactions: s.Transactions, Changes: s.Changes,
		Unmapped: s.Unmapped, Failures: s.Failures, Pending: s.Pending,
		DelayP50Ms: ms(s.Delay.P50), DelayP99Ms: ms(s.Delay.P99), DelayMaxMs: ms(s.Delay.Max),
	})
}

// fail answers err: 404 for an unknown product, 400 for an invalid one,
// 503 (retry) when a write was saved but the cache not updated, 500 else.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, catalog.ErrNotFound):
		writeError(w, http.StatusNotFound, "product not found")
	case errors.Is(err, catalog.ErrInvalidProduct):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, catalog.ErrCacheNotUpdated):
		// PUT is idempotent: a retry saves again and updates the cache.
		h.log.ErrorContext(r.Context(), "cache not updated after a write", "err", err)
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "saved, but the cache was not updated: retry the request")
	case r.Context().Err() != nil:
		// The client has gone; nobody reads the answer.
		writeError(w, http.StatusServiceUnavailable, "request cancelled")
	default:
		h.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal error")
	}
}

func parseID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("bad product id %q: want a positive integer", s)
	}
	return id, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
