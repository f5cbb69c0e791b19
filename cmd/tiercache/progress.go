package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// progress shows how far the running scenario is: a bar redrawn in place
// on a terminal, a plain line now and then otherwise (a log, a pipe, a
// test).
type progress struct {
	w   io.Writer
	tty bool

	mu   sync.Mutex // guards the fields below
	done chan struct{}
	wg   sync.WaitGroup
}

type progressSnapshot struct{ reads, loads, errors uint64 }

func newProgress(w io.Writer) *progress {
	return &progress{w: w, tty: isTerminal(w)}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// useColor reports whether to colour the output on w: on a terminal,
// unless NO_COLOR is set (https://no-color.org).
func useColor(w io.Writer) bool {
	return isTerminal(w) && os.Getenv("NO_COLOR") == ""
}

// start shows the progress of scenario name until finish is called.
func (p *progress) start(name string, total time.Duration, snap func() progressSnapshot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = make(chan struct{})
	began := time.Now()
	every := 2 * time.Second
	if p.tty {
		every = 100 * time.Millisecond
	} else {
		fmt.Fprintf(p.w, "%-10s running for %v\n", name, total)
	}
	done := p.done
	p.wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.draw(name, time.Since(began), total, snap(), false)
			case <-done:
				p.draw(name, time.Since(began), total, snap(), true)
				return
			}
		}
	})
}

// finish stops the display of the current scenario.
func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done != nil {
		close(p.done)
		p.wg.Wait()
		p.done = nil
	}
}

func (p *progress) draw(name string, elapsed, total time.Duration, s progressSnapshot, final bool) {
	stats := fmt.Sprintf("%9d reads %8d loader calls %5d errors", s.reads, s.loads, s.errors)
	if !p.tty {
		state := "running"
		if final {
			state = "done   "
		}
		fmt.Fprintf(p.w, "%-10s %s %5.1fs/%v %s\n", name, state, elapsed.Seconds(), total, stats)
		return
	}
	const width = 30
	frac := min(float64(elapsed)/float64(total), 1)
	if final {
		frac = 1
	}
	n := int(frac * width)
	bar := strings.Repeat("█", n) + strings.Repeat("░", width-n)
	line := fmt.Sprintf("\r\x1b[K%-10s %s %5.1fs/%v %s", name, bar, min(elapsed, total).Seconds(), total, stats)
	if final {
		line += "\n"
	}
	fmt.Fprint(p.w, line)
}
