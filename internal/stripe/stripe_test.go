package stripe

import (
	"runtime"
	"sync"
	"testing"
)

// The striped counter loses no add, whichever stripes the goroutines land
// on and however often they collide and remap (run under -race).
func TestCounterCountsEveryAdd(t *testing.T) {
	var c Counter
	const goroutines, adds = 16, 20_000
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range adds {
				if i%1000 == g {
					runtime.Gosched() // move goroutines between threads
				}
				c.Add()
			}
		}()
	}
	wg.Wait()
	if got := c.Load(); got != goroutines*adds {
		t.Fatalf("counted %d adds, want %d", got, goroutines*adds)
	}
}
