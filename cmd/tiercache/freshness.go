package main

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tiercache/tiercache"
)

// The documented bound of a stale read. A read on instance B that starts
// after a write on instance A was acknowledged may return the old value
// only until B has applied the write's invalidation message; on A itself,
// never. Whatever happens to the messages, an L1 entry lives at most the
// L1 max TTL, and at most the L1 outage TTL while B's subscription is down.
//
// The demo cannot see which message carried which key, but it sees every
// message B applies, with its delay (tiercache.DelayObserver): the send time
// and the moment B dropped the keys. A stale read on B that began L after
// the acknowledgement is within the bound if B applied, from the read's
// start on, an invalidation sent before the acknowledgement: B's
// invalidations then took at least L (its measured delay at that time), and
// the write's own message may have been among those still on their way. If
// B had applied every invalidation sent before the acknowledgement by the
// time the read began, the read broke the bound.
//
// The full scenario is judged so; the others promise no such bound (aside
// and coalesced have the stale set of cache-aside, which no invalidation
// fixes).
const (
	// clockSlack is the leeway of the bound: the demo's timestamps and
	// tiercache's (Unix µs, the wall clock) are read a few calls apart.
	clockSlack = time.Millisecond
	// l1MaxTTL and l1OutageTTL are the full scenario's L1 TTLs (tiercache's
	// defaults, given explicitly so that the demo knows its backstops).
	l1MaxTTL    = 30 * time.Second
	l1OutageTTL = time.Second
	// subscriptionPoll is how often the demo reads whether each instance's
	// subscription is up.
	subscriptionPoll = 10 * time.Millisecond
	// subscribeWait bounds how long a scenario's setup waits for the
	// instances' subscriptions to come up; after that it starts anyway,
	// the outage backstop covering the instances still down.
	subscribeWait = 2 * time.Second
	// maxTimelineBuckets bounds each instance's timeline: 1 ms buckets up
	// to about 16 s of scenario, wider ones beyond.
	maxTimelineBuckets = 1 << 14
	// timelineMargin is the span of a timeline beyond the scenario's
	// duration: the setup before and the requests in flight after.
	timelineMargin = 5 * time.Second
	// maxJudged bounds the stale reads a scenario keeps for judging.
	maxJudged = 1 << 16
)

// judgedScenario reports whether a scenario's stale reads are judged
// against the bound.
func judgedScenario(name string) bool { return name == scenarioFull }

// verdict is the judgement of one stale read.
type verdict uint8

const (
	unjudged      verdict = iota // not judged (not a judged scenario, or too many)
	withinDelay                  // before the reader applied the write's invalidation
	withinOutage                 // within the outage TTL of the reader's subscription
	beyondSame                   // on the writer's own instance
	beyondApplied                // after the reader applied every invalidation sent before the ack
	beyondTTL                    // older than the L1 TTL (max, or outage) allows
)

func (v verdict) beyond() bool { return v >= beyondSame }

// timeline records, for one instance, when it applied invalidation
// messages and when its subscription was down, in fixed buckets of time.
// The subscriber and the sampler write it with atomics while the scenario
// runs; seal makes the summaries that judge reads once it is over.
type timeline struct {
	start, width int64 // Unix ns
	// minSent is, per bucket, the earliest send time (Unix ns) of the
	// messages applied in it (math.MaxInt64: none); maxDelay their
	// longest delay (ns).
	minSent  []atomic.Int64
	maxDelay []atomic.Int64
	down     []atomic.Bool // the subscription was seen down in the bucket

	sufMinSent  []int64 // min of minSent over buckets i..
	preMaxDelay []int64 // max of maxDelay over buckets ..i
	preDown     []int32 // down buckets before i
}

func newTimeline(start time.Time, span time.Duration) *timeline {
	n := min(int64(maxTimelineBuckets), max(1, int64(span/time.Millisecond)))
	tl := &timeline{
		start: start.UnixNano(), width: max(int64(time.Millisecond), (int64(span)+n-1)/n),
		minSent: make([]atomic.Int64, n), maxDelay: make([]atomic.Int64, n), down: make([]atomic.Bool, n),
	}
	for i := range tl.minSent {
		tl.minSent[i].Store(math.MaxInt64)
	}
	return tl
}

// index is the bucket of time t (Unix ns); times outside the span go to
// the first or the last bucket.
func (tl *timeline) index(t int64) int {
	if t < tl.start {
		return 0
	}
	return int(min((t-tl.start)/tl.width, int64(len(tl.minSent)-1)))
}

// applied records a message sent at sent and applied at at (Unix ns).
func (tl *timeline) applied(at, sent int64) {
	i := tl.index(at)
	for m := tl.minSent[i].Load(); sent < m && !tl.minSent[i].CompareAndSwap(m, sent); m = tl.minSent[i].Load() {
	}
	d := at - sent
	for m := tl.maxDelay[i].Load(); d > m && !tl.maxDelay[i].CompareAndSwap(m, d); m = tl.maxDelay[i].Load() {
	}
}

// markDown records that the subscription was down, or may have been,
// between from and to (Unix ns).
func (tl *timeline) markDown(from, to int64) {
	for i := tl.index(from); i <= tl.index(to); i++ {
		tl.down[i].Store(true)
	}
}

// seal computes the summaries; the timeline is not written after it.
func (tl *timeline) seal() {
	n := len(tl.minSent)
	tl.sufMinSent = make([]int64, n+1)
	tl.sufMinSent[n] = math.MaxInt64
	for i := n - 1; i >= 0; i-- {
		tl.sufMinSent[i] = min(tl.sufMinSent[i+1], tl.minSent[i].Load())
	}
	tl.preMaxDelay = make([]int64, n)
	tl.preDown = make([]int32, n+1)
	var m int64
	for i := range n {
		m = max(m, tl.maxDelay[i].Load())
		tl.preMaxDelay[i] = m
		tl.preDown[i+1] = tl.preDown[i]
		if tl.down[i].Load() {
			tl.preDown[i+1]++
		}
	}
}

// inFlight reports whether a message sent by ack was applied at or after
// from (Unix ns).
func (tl *timeline) inFlight(ack, from int64) bool { return tl.sufMinSent[tl.index(from)] <= ack }

// wasDown reports whether the subscription was seen down between from and
// to (Unix ns).
func (tl *timeline) wasDown(from, to int64) bool {
	return tl.preDown[tl.index(to)+1]-tl.preDown[tl.index(from)] > 0
}

// maxDelayBy is the longest delay of the messages applied by t (Unix ns).
func (tl *timeline) maxDelayBy(t int64) time.Duration {
	return time.Duration(tl.preMaxDelay[tl.index(t)])
}

// freshness judges a scenario's stale reads against the bound: a timeline
// per instance, fed by the instances' observers and a sampler of their
// subscriptions. Nil for a scenario that is not judged; its methods are
// then no-ops.
type freshness struct {
	tl   []*timeline
	kept atomic.Int64 // stale reads kept for judging

	stopOnce sync.Once
	done     chan struct{}
	wg       sync.WaitGroup
}

func newFreshness(instances int, duration time.Duration) *freshness {
	f := &freshness{done: make(chan struct{})}
	start := time.Now()
	for range instances {
		f.tl = append(f.tl, newTimeline(start, duration+timelineMargin))
	}
	return f
}

// observer returns instance inst's observer: inner (which may be nil),
// with the invalidation delays recorded in inst's timeline too.
func (f *freshness) observer(inst int, inner tiercache.Observer) tiercache.Observer {
	if f == nil {
		return inner
	}
	if inner == nil {
		inner = tiercache.NopObserver{}
	}
	return delayRecorder{Observer: inner, tl: f.tl[inst]}
}

// delayRecorder is a tiercache.Observer that records the delays of the
// applied invalidations in a timeline, and passes everything on.
type delayRecorder struct {
	tiercache.Observer
	tl *timeline
}

func (r delayRecorder) InvalidationDelay(d time.Duration) {
	now := time.Now().UnixNano()
	r.tl.applied(now, now-int64(d))
	if do, ok := r.Observer.(tiercache.DelayObserver); ok {
		do.InvalidationDelay(d)
	}
}

// watch samples subscribed for every instance until stop, marking the
// times an instance's subscription was down (from the sample before).
func (f *freshness) watch(subscribed func(inst int) bool) {
	if f == nil {
		return
	}
	f.wg.Go(func() {
		prevAt := time.Now().UnixNano()
		prevUp := make([]bool, len(f.tl)) // down until seen up
		t := time.NewTicker(subscriptionPoll)
		defer t.Stop()
		for {
			now := time.Now().UnixNano()
			for i, tl := range f.tl {
				up := subscribed(i)
				if !up || !prevUp[i] {
					tl.markDown(prevAt, now)
				}
				prevUp[i] = up
			}
			prevAt = now
			select {
			case <-t.C:
			case <-f.done:
				return
			}
		}
	})
}

// stop ends the sampler and seals the timelines: call it once the
// instances are closed, before judge.
func (f *freshness) stop() {
	if f == nil {
		return
	}
	f.stopOnce.Do(func() {
		close(f.done)
		f.wg.Wait()
		for _, tl := range f.tl {
			tl.seal()
		}
	})
}

// keep reports whether one more stale read may be kept for judging.
func (f *freshness) keep() bool { return f != nil && f.kept.Add(1) <= maxJudged }

// staleRead is one read that returned a version older than one
// acknowledged before it began.
type staleRead struct {
	key            int
	got, acked     uint64
	reader, writer int
	start, ack     int64 // Unix ns: the read's start, the write's acknowledgement
	took           time.Duration
	verdict        verdict
	delayThen      time.Duration // the reader's longest invalidation delay by the read's start
}

func (r *staleRead) lag() time.Duration { return time.Duration(r.start - r.ack) }

// judge sets r's verdict.
func (f *freshness) judge(r *staleRead) {
	if r.reader == r.writer {
		r.verdict = beyondSame // the writer drops its own L1 entry before the write returns
		return
	}
	lag := r.lag()
	tl := f.tl[r.reader]
	r.delayThen = tl.maxDelayBy(r.start)
	switch {
	case lag > l1MaxTTL+clockSlack:
		r.verdict = beyondTTL
	case tl.wasDown(r.ack-int64(subscriptionPoll), r.start):
		// The message may have been lost: the outage TTL is the bound.
		r.verdict = withinOutage
		if lag > l1OutageTTL+clockSlack {
			r.verdict = beyondTTL
		}
	case lag <= clockSlack, tl.inFlight(r.ack, r.start-int64(clockSlack)):
		r.verdict = withinDelay
	default:
		r.verdict = beyondApplied
	}
}

// why says what a verdict means, for the report.
func (r *staleRead) why() string {
	switch r.verdict {
	case withinDelay:
		return "within the bound: an invalidation sent before the acknowledgement was still on its way to the reader"
	case withinOutage:
		return "within the bound: the reader's subscription was down, and the read within the L1 outage TTL"
	case beyondSame:
		return "beyond the bound: on the writer's own instance"
	case beyondApplied:
		return fmt.Sprintf("beyond the bound: the reader had applied every invalidation sent before the acknowledgement (its longest delay by then: %s)",
			fmtLatency(float64(r.delayThen.Nanoseconds())/1000))
	case beyondTTL:
		return "beyond the bound: older than the L1 TTL allows"
	}
	return ""
}
