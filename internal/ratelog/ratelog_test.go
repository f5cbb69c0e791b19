package ratelog

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLogRateLimited(t *testing.T) {
	var buf bytes.Buffer
	log := New(slog.New(slog.NewTextHandler(&buf, nil)), 1<<62)
	for range 100 {
		log.Warn("tiercache: unreadable cached value treated as a miss", "key", "k")
	}
	log.Warn("tiercache: another message")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("logged %d lines for 100 identical warnings and one other, want 2:\n%s", len(lines), buf.String())
	}
	// After the interval, the next record says how many were held back.
	buf.Reset()
	h := New(slog.New(slog.NewTextHandler(&buf, nil)), time.Second).Handler()
	t0 := time.Now()
	for i := range 3 {
		_ = h.Handle(context.Background(), slog.NewRecord(t0.Add(time.Duration(i)*time.Millisecond), slog.LevelWarn, "m", 0))
	}
	_ = h.Handle(context.Background(), slog.NewRecord(t0.Add(2*time.Second), slog.LevelWarn, "m", 0))
	if n := strings.Count(buf.String(), "\n"); n != 2 || !strings.Contains(buf.String(), "suppressed=2") {
		t.Fatalf("want two lines, the second with suppressed=2:\n%s", buf.String())
	}
	// With no interval, every record passes and the count of held-back
	// ones rides on the next.
	buf.Reset()
	log = New(slog.New(slog.NewTextHandler(&buf, nil)), 0)
	log.With("cache", "users").Warn("m")
	if !strings.Contains(buf.String(), "cache=users") {
		t.Fatalf("attributes lost: %s", buf.String())
	}
}
