package degrade

import (
	"context"
	"errors"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// ErrorRate is a [Signal]: the share of calls that failed over a sliding
// window, from 0 to 1. Recording adds to counters that only grow, spread
// over stripes by goroutine so that cores do not contend for one cache
// line; it reads no clock, takes no lock and allocates nothing. Value
// reads the counters and keeps a copy of them at most every window/10, and
// the rate over the window is the difference from the newest copy at
// least a window old.
//
// Because the copies are made by Value, the window is exact to within the
// longer of window/10 and the time between calls of Value; a trigger calls
// it every evaluation interval. Until a window has passed since
// NewErrorRate, Value covers the time since then.
//
// While a trigger holds a feature off, the calls it guarded stop, the
// window holds fewer than minCalls calls and Value is 0: the trigger
// recovers after its RecoverFor and the feature tries again. RecoverFor is
// therefore how long to wait before trying.
//
// An ErrorRate is safe for concurrent use.
type ErrorRate struct {
	minCalls uint64
	stripes  []rateStripe
	shift    uint8 // stripeHint() >> shift picks a stripe
	epoch    time.Time

	mu   sync.Mutex
	hist history[rateCounts]
}

type rateCounts struct{ total, failed uint64 }

// rateStripe is one stripe of counters, padded so that two stripes never
// share a cache line (nor an adjacent pair, which x86 prefetches together).
type rateStripe struct {
	total, failed atomic.Uint64
	_             [128 - 16]byte
}

// NewErrorRate returns an error rate over the last window, which reads 0
// until at least minCalls calls were recorded in the window, so that a
// handful of calls, one of them failed, does not fire a trigger.
func NewErrorRate(window time.Duration, minCalls int) (*ErrorRate, error) {
	if window <= 0 {
		return nil, configError("NewErrorRate: window", "must be positive", window)
	}
	if minCalls < 1 {
		return nil, configError("NewErrorRate: minCalls", "must be at least 1", minCalls)
	}
	n := stripeCount()
	r := &ErrorRate{
		minCalls: uint64(minCalls),
		stripes:  make([]rateStripe, n),
		shift:    stripeShift(n),
		epoch:    time.Now(),
		hist:     newHistory[rateCounts](window),
	}
	return r, nil
}

// Record counts the outcome of one call: a failure if err is not nil.
// Errors matching [context.Canceled] (the caller gave up: that says
// nothing about the dependency) and [ErrDegraded] (the call was not made
// because a feature was off: counting it would keep the trigger that
// turned the feature off from ever recovering) are not counted at all.
func (r *ErrorRate) Record(err error) {
	if err != nil && (errors.Is(err, context.Canceled) || errors.Is(err, ErrDegraded)) {
		return
	}
	r.Observe(err != nil)
}

// Observe counts one call, failed or not.
func (r *ErrorRate) Observe(failed bool) {
	s := &r.stripes[stripeHint()>>r.shift]
	// total before failed, and Value reads them the other way round, so
	// that it never sees more failures than calls.
	s.total.Add(1)
	if failed {
		s.failed.Add(1)
	}
}

// Value returns the share of calls that failed in the last window, or 0
// when fewer than minCalls calls were recorded in it.
func (r *ErrorRate) Value() float64 { return r.value(int64(time.Since(r.epoch))) }

// ValueAt is Value at instant t, for tests and simulations. Instants
// should not go back: one earlier than an instant already seen counts as
// that instant.
func (r *ErrorRate) ValueAt(t time.Time) float64 { return r.value(int64(t.Sub(r.epoch))) }

func (r *ErrorRate) value(now int64) float64 {
	// The counters are read under the lock, so that the copies kept in the
	// history grow in the order they are kept and never exceed a later
	// reading.
	r.mu.Lock()
	var cur rateCounts
	for i := range r.stripes {
		s := &r.stripes[i]
		cur.failed += s.failed.Load()
		cur.total += s.total.Load()
	}
	base := *r.hist.base(now, &cur)
	r.mu.Unlock()
	total, failed := cur.total-base.total, cur.failed-base.failed
	if total < r.minCalls || total == 0 {
		return 0
	}
	return min(float64(failed)/float64(total), 1)
}

// Latency is a [Signal]: a quantile of call durations over a sliding
// window, in seconds (p99 above 0.5 fires a trigger Above 0.5). Durations
// are counted in a fixed histogram of 209 buckets, eight per doubling from
// 8 µs, so a quantile is estimated within 12.5% (interpolated within its
// bucket) from 1 µs to 4.5 minutes; longer durations count as 4.5 minutes.
// Recording adds one to a bucket of one of several striped histograms; it
// reads no clock, takes no lock and allocates nothing. The window is kept
// as for [ErrorRate]: exact to within the longer of window/10 and the time
// between calls of Value.
//
// A Latency is safe for concurrent use. It holds about 1.8 KB per stripe
// (four stripes per CPU, at most 32) and 22 KB of history.
type Latency struct {
	q        float64
	minCalls uint64
	stripes  []latStripe
	shift    uint8
	epoch    time.Time

	mu      sync.Mutex
	hist    history[latCounts]
	scratch latCounts
}

// The histogram counts durations in units of 1.024 µs (a shift of the
// nanoseconds). Units below 8 have a bucket each; above, each doubling
// [2^e, 2^(e+1)) is split into 8 equal buckets, up to 2^28 units (275 s);
// the last bucket holds everything longer.
const (
	latShift    = 10
	latSubBits  = 3
	latSub      = 1 << latSubBits
	latMaxExp   = 27
	latOverflow = (latMaxExp - latSubBits + 2) * latSub
	latBuckets  = latOverflow + 1
)

type latCounts [latBuckets]uint64

type latStripe struct {
	n latCounts
	_ [128]byte // keeps the last counters of one stripe off the next one's line
}

// NewLatency returns the quantile q (0.99 for p99) of the durations
// recorded over the last window, in seconds. It reads 0 until at least
// minCalls durations were recorded in the window: the p99 of a handful of
// calls is noise.
func NewLatency(window time.Duration, q float64, minCalls int) (*Latency, error) {
	if window <= 0 {
		return nil, configError("NewLatency: window", "must be positive", window)
	}
	if !(q > 0 && q <= 1) {
		return nil, configError("NewLatency: q", "must be above 0 and at most 1 (0.99 for p99)", q)
	}
	if minCalls < 1 {
		return nil, configError("NewLatency: minCalls", "must be at least 1", minCalls)
	}
	n := min(stripeCount(), 32)
	return &Latency{
		q:        q,
		minCalls: uint64(minCalls),
		stripes:  make([]latStripe, n),
		shift:    stripeShift(n),
		epoch:    time.Now(),
		hist:     newHistory[latCounts](window),
	}, nil
}

// Record counts one call that took d. A negative d counts as 0.
func (l *Latency) Record(d time.Duration) {
	s := &l.stripes[stripeHint()>>l.shift]
	atomic.AddUint64(&s.n[latIndex(d)], 1)
}

// latIndex is the histogram bucket of d.
func latIndex(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	v := uint64(d) >> latShift
	if v < latSub {
		return int(v)
	}
	e := bits.Len64(v) - 1
	if e > latMaxExp {
		return latOverflow
	}
	return (e-latSubBits+1)*latSub + int(v>>(e-latSubBits)&(latSub-1))
}

// latBounds returns the lower bound and the width of bucket i, in units.
func latBounds(i int) (lower, width uint64) {
	if i < latSub {
		return uint64(i), 1
	}
	e := i/latSub + latSubBits - 1
	return uint64(latSub+i%latSub) << (e - latSubBits), 1 << (e - latSubBits)
}

// Value returns the quantile of the durations recorded in the last
// window, in seconds, or 0 when fewer than minCalls were recorded in it.
func (l *Latency) Value() float64 { return l.value(int64(time.Since(l.epoch))) }

// ValueAt is Value at instant t, for tests and simulations. Instants
// should not go back: one earlier than an instant already seen counts as
// that instant.
func (l *Latency) ValueAt(t time.Time) float64 { return l.value(int64(t.Sub(l.epoch))) }

func (l *Latency) value(now int64) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	cur := &l.scratch
	*cur = latCounts{}
	for i := range l.stripes {
		s := &l.stripes[i].n
		for b := range s {
			cur[b] += atomic.LoadUint64(&s[b])
		}
	}
	base := l.hist.base(now, cur)
	var total uint64
	for b := range cur {
		total += cur[b] - base[b]
	}
	if total < l.minCalls || total == 0 {
		return 0
	}
	// The rank of the quantile among the window's durations, and the
	// bucket that holds it; within the bucket, durations are taken as
	// evenly spread.
	rank := l.q * float64(total)
	var below float64
	for b := range cur {
		n := float64(cur[b] - base[b])
		if n == 0 || below+n < rank {
			below += n
			continue
		}
		lower, width := latBounds(b)
		if b == latOverflow {
			return latSeconds(float64(lower))
		}
		return latSeconds(float64(lower) + float64(width)*(rank-below)/n)
	}
	lower, _ := latBounds(latOverflow) // unreachable: rank <= total
	return latSeconds(float64(lower))
}

func latSeconds(units float64) float64 {
	return units * float64(1<<latShift) / float64(time.Second)
}

// stripeHint picks a stripe for the calling goroutine from the address of
// its stack. It is the same for a goroutine on every call, so a long-lived
// worker keeps writing the cache line it wrote last, and it differs
// between goroutines, whose stacks are at least 2 KB apart. A random pick
// costs more (a call into the runtime's generator) and is worse: every
// core writes every stripe in turn, so the lines move between cores just
// as they do for one shared counter. The address is only hashed
// (Fibonacci hashing: its top bits are the best mixed), never turned back
// into a pointer.
func stripeHint() uint64 {
	var x byte
	return uint64(uintptr(unsafe.Pointer(&x))) * 0x9e3779b97f4a7c15
}

// stripeCount is how many stripes of counters a signal spreads its
// recordings over: four per CPU, so that two busy goroutines seldom share
// one, rounded up to a power of two, and at most 64.
func stripeCount() int {
	n := min(4*runtime.GOMAXPROCS(0), 64)
	return 1 << bits.Len(uint(n-1))
}

// stripeShift is the shift that turns a stripeHint into one of n stripes,
// n a power of two: its top log2(n) bits.
func stripeShift(n int) uint8 { return uint8(64 - bits.Len(uint(n-1))) }

// historySteps is how many copies of the counters a window holds: the
// window's resolution is a tenth of it.
const historySteps = 10

// history keeps copies of counters that only grow, taken at instants at
// least a step apart, so that the counts of the last window are the
// newest counts minus the newest copy at least a window old. It is a ring
// allocated once; its user serialises calls.
type history[S any] struct {
	window, step int64 // ns
	at           []int64
	s            []S
	head, n      int // the oldest copy and how many there are
}

func newHistory[S any](window time.Duration) history[S] {
	step := max(int64(window)/historySteps, 1)
	// Copies a step or more apart in (now-window, now], plus the one at or
	// before now-window, plus one for a step that does not divide the
	// window.
	c := int(int64(window)/step) + 3
	h := history[S]{window: int64(window), step: step, at: make([]int64, c), s: make([]S, c)}
	h.n = 1 // zero counts at the epoch
	return h
}

func (h *history[S]) idx(i int) int { return (h.head + i) % len(h.at) }

// base records cur as the counts at now (ns since the epoch) when the
// newest copy is a step old or more, and returns the copy the window
// starts from: the newest one at or before now-window, else the oldest.
func (h *history[S]) base(now int64, cur *S) *S {
	newest := h.idx(h.n - 1)
	now = max(now, h.at[newest])
	for h.n >= 2 && h.at[h.idx(1)] <= now-h.window {
		h.head = h.idx(1)
		h.n--
	}
	if now-h.at[newest] >= h.step {
		if h.n == len(h.at) { // cannot happen with copies a step apart
			h.head = h.idx(1)
			h.n--
		}
		i := h.idx(h.n)
		h.at[i], h.s[i] = now, *cur
		h.n++
	}
	return &h.s[h.head]
}

var (
	_ Signal = (*ErrorRate)(nil)
	_ Signal = (*Latency)(nil)
)
