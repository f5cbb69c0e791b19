// Package ratelog limits how often a logger repeats a message.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// limitedHandler passes at most one record per message per interval to the
// user's handler, and tells on the next one how many it held back: a sick
// Redis or a flood of corrupt entries must not flood the logs. The messages
// are the cache's own constant strings, so the table stays small.
type limitedHandler struct {
	next  slog.Handler
	every time.Duration
	state *limitState
}

type limitState struct {
	mu      sync.Mutex
	last    map[string]time.Time
	dropped map[string]int
}

// New returns a logger that passes at most one record per message per every
// to l, and says on the next how many it held back.
func New(l *slog.Logger, every time.Duration) *slog.Logger {
	return slog.New(&limitedHandler{next: l.Handler(), every: every,
		state: &limitState{last: map[string]time.Time{}, dropped: map[string]int{}}})
}

func (h *limitedHandler) Enabled(ctx context.Context, lvl slog.Level) bool {
	return h.next.Enabled(ctx, lvl)
}

func (h *limitedHandler) Handle(ctx context.Context, r slog.Record) error {
	s := h.state
	s.mu.Lock()
	if last, ok := s.last[r.Message]; ok && r.Time.Sub(last) < h.every {
		s.dropped[r.Message]++
		s.mu.Unlock()
		return nil
	}
	s.last[r.Message] = r.Time
	n := s.dropped[r.Message]
	delete(s.dropped, r.Message)
	s.mu.Unlock()
	if n > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("suppressed", n))
	}
	return h.next.Handle(ctx, r)
}

func (h *limitedHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &limitedHandler{next: h.next.WithAttrs(as), every: h.every, state: h.state}
}

func (h *limitedHandler) WithGroup(name string) slog.Handler {
	return &limitedHandler{next: h.next.WithGroup(name), every: h.every, state: h.state}
}
