package breaker

import (
	"fmt"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
)

// TripPolicy decides when a closed breaker opens. Use one of the ready-made
// policies: [ConsecutiveFailures], [FailureRate] (a time window),
// [FailureRateOfLast] (a count window), [SlowCallRate], or [AnyOf] them.
type TripPolicy interface {
	validate() error
	// configure sets the gobreaker settings the policy relies on.
	configure(*gobreaker.Settings)
	// newState makes the policy's state for one breaker.
	newState() tripState
	// slowThreshold is the duration from which a call is slow; 0: none.
	slowThreshold() time.Duration
}

// tripState is one breaker's side of a policy. observe sees every counted
// call before gobreaker does; readyToTrip is gobreaker's ReadyToTrip, called
// under its lock after a failure; reset runs on every change of state.
type tripState interface {
	observe(failure, slow bool)
	readyToTrip(gobreaker.Counts) bool
	reset()
}

// ConsecutiveFailures opens the breaker after n failures in a row.
func ConsecutiveFailures(n int) TripPolicy { return consecutive{n: n} }

type consecutive struct{ n int }

func (p consecutive) validate() error {
	if p.n < 1 {
		return configError("ConsecutiveFailures n", "must be at least 1", p.n)
	}
	return nil
}
func (consecutive) configure(*gobreaker.Settings) {}
func (p consecutive) newState() tripState         { return p }
func (consecutive) slowThreshold() time.Duration  { return 0 }
func (consecutive) observe(bool, bool)            {}
func (consecutive) reset()                        {}
func (p consecutive) readyToTrip(c gobreaker.Counts) bool {
	return c.ConsecutiveFailures >= uint32(p.n)
}

// FailureRate opens the breaker when at least ratio of the calls in the last
// window failed, once the window holds at least minCalls calls. The window
// rolls in tenths, on gobreaker's buckets.
func FailureRate(ratio float64, minCalls int, window time.Duration) TripPolicy {
	return failureRate{ratio: ratio, min: minCalls, window: window}
}

type failureRate struct {
	ratio  float64
	min    int
	window time.Duration
}

func (p failureRate) validate() error {
	switch {
	case !(p.ratio > 0 && p.ratio <= 1):
		return configError("FailureRate ratio", "must be in (0, 1]", p.ratio)
	case p.min < 1:
		return configError("FailureRate minCalls", "must be at least 1", p.min)
	case p.window < 10*time.Millisecond:
		return configError("FailureRate window", "must be at least 10ms", p.window)
	}
	return nil
}
func (p failureRate) configure(s *gobreaker.Settings) {
	s.Interval = p.window
	s.BucketPeriod = p.window / 10
}
func (p failureRate) newState() tripState        { return p }
func (failureRate) slowThreshold() time.Duration { return 0 }
func (failureRate) observe(bool, bool)           {}
func (failureRate) reset()                       {}
func (p failureRate) readyToTrip(c gobreaker.Counts) bool {
	calls := c.TotalSuccesses + c.TotalFailures
	return calls >= uint32(p.min) && float64(c.TotalFailures) >= p.ratio*float64(calls)
}

// FailureRateOfLast opens the breaker when at least ratio of the last n
// calls failed. It waits for n calls before it can trip.
func FailureRateOfLast(ratio float64, n int) TripPolicy {
	return lastN{ratio: ratio, n: n}
}

type lastN struct {
	ratio float64
	n     int
}

func (p lastN) validate() error {
	switch {
	case !(p.ratio > 0 && p.ratio <= 1):
		return configError("FailureRateOfLast ratio", "must be in (0, 1]", p.ratio)
	case p.n < 1 || p.n > 1<<20:
		return configError("FailureRateOfLast n", "must be between 1 and 1048576", p.n)
	}
	return nil
}
func (lastN) configure(*gobreaker.Settings) {}
func (lastN) slowThreshold() time.Duration  { return 0 }
func (p lastN) newState() tripState {
	return &lastNState{need: int(ceilRatio(p.ratio, p.n)), ring: make([]bool, p.n)}
}

// ceilRatio is the smallest count of n that makes at least ratio.
func ceilRatio(ratio float64, n int) int {
	k := int(ratio * float64(n))
	if float64(k) < ratio*float64(n) {
		k++
	}
	return max(k, 1)
}

// lastNState is a ring of the last n outcomes.
type lastNState struct {
	need int // failures among the last n that trip

	mu       sync.Mutex
	ring     []bool
	pos      int
	filled   int
	failures int
}

func (s *lastNState) observe(failure, _ bool) {
	s.mu.Lock()
	if s.filled == len(s.ring) {
		if s.ring[s.pos] {
			s.failures--
		}
	} else {
		s.filled++
	}
	s.ring[s.pos] = failure
	if failure {
		s.failures++
	}
	if s.pos++; s.pos == len(s.ring) {
		s.pos = 0
	}
	s.mu.Unlock()
}

func (s *lastNState) readyToTrip(gobreaker.Counts) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.filled == len(s.ring) && s.failures >= s.need
}

func (s *lastNState) reset() {
	s.mu.Lock()
	clear(s.ring)
	s.pos, s.filled, s.failures = 0, 0, 0
	s.mu.Unlock()
}

// SlowCallRate opens the breaker when at least ratio of the calls in the
// last window took threshold or longer, once the window holds at least
// minCalls calls. A slow call also counts as a failure in [Counts] and for
// any policy combined with this one in [AnyOf].
func SlowCallRate(threshold time.Duration, ratio float64, minCalls int, window time.Duration) TripPolicy {
	return slowRate{threshold: threshold, ratio: ratio, min: minCalls, window: window}
}

type slowRate struct {
	threshold time.Duration
	ratio     float64
	min       int
	window    time.Duration
}

const slowBuckets = 10

func (p slowRate) validate() error {
	switch {
	case p.threshold <= 0:
		return configError("SlowCallRate threshold", "must be positive", p.threshold)
	case !(p.ratio > 0 && p.ratio <= 1):
		return configError("SlowCallRate ratio", "must be in (0, 1]", p.ratio)
	case p.min < 1:
		return configError("SlowCallRate minCalls", "must be at least 1", p.min)
	case p.window < 10*time.Millisecond:
		return configError("SlowCallRate window", "must be at least 10ms", p.window)
	}
	return nil
}
func (slowRate) configure(*gobreaker.Settings)  {}
func (p slowRate) slowThreshold() time.Duration { return p.threshold }
func (p slowRate) newState() tripState {
	return &slowState{p: p, width: int64(p.window / slowBuckets), epoch: time.Now()}
}

// slowState counts calls and slow calls in a window of slowBuckets buckets.
type slowState struct {
	p     slowRate
	width int64 // ns per bucket
	epoch time.Time

	mu      sync.Mutex
	buckets [slowBuckets]struct {
		index       int64 // which bucket of time it holds
		total, slow uint32
	}
}

func (s *slowState) observe(_, slow bool) {
	i := int64(time.Since(s.epoch)) / s.width
	s.mu.Lock()
	b := &s.buckets[i%slowBuckets]
	if b.index != i {
		b.index, b.total, b.slow = i, 0, 0
	}
	b.total++
	if slow {
		b.slow++
	}
	s.mu.Unlock()
}

func (s *slowState) readyToTrip(gobreaker.Counts) bool {
	i := int64(time.Since(s.epoch)) / s.width
	var total, slow uint32
	s.mu.Lock()
	for _, b := range s.buckets {
		if b.index > i-slowBuckets {
			total += b.total
			slow += b.slow
		}
	}
	s.mu.Unlock()
	return total >= uint32(s.p.min) && float64(slow) >= s.p.ratio*float64(total)
}

func (s *slowState) reset() {
	s.mu.Lock()
	clear(s.buckets[:])
	s.mu.Unlock()
}

// AnyOf opens the breaker when any of the policies would: a failure rate
// or a slow-call rate, say. At most one of them may be a FailureRate (it
// sets gobreaker's window) and at most one a SlowCallRate.
func AnyOf(policies ...TripPolicy) TripPolicy { return anyOf(policies) }

type anyOf []TripPolicy

func (a anyOf) validate() error {
	if len(a) == 0 {
		return configError("AnyOf", "needs at least one policy", nil)
	}
	var rates, slows int
	for i, p := range a {
		if p == nil {
			return configError(fmt.Sprintf("AnyOf policy %d", i), "must not be nil", nil)
		}
		if err := p.validate(); err != nil {
			return err
		}
		switch p.(type) {
		case failureRate:
			rates++
		case slowRate:
			slows++
		case anyOf:
			return configError("AnyOf", "must not contain AnyOf", nil)
		}
	}
	if rates > 1 || slows > 1 {
		return configError("AnyOf", "takes at most one FailureRate and one SlowCallRate", nil)
	}
	return nil
}

func (a anyOf) configure(s *gobreaker.Settings) {
	for _, p := range a {
		p.configure(s)
	}
}

func (a anyOf) slowThreshold() time.Duration {
	for _, p := range a {
		if d := p.slowThreshold(); d > 0 {
			return d
		}
	}
	return 0
}

func (a anyOf) newState() tripState {
	s := make(anyOfState, len(a))
	for i, p := range a {
		s[i] = p.newState()
	}
	return s
}

type anyOfState []tripState

func (s anyOfState) observe(failure, slow bool) {
	for _, t := range s {
		t.observe(failure, slow)
	}
}

func (s anyOfState) readyToTrip(c gobreaker.Counts) bool {
	for _, t := range s {
		if t.readyToTrip(c) {
			return true
		}
	}
	return false
}

func (s anyOfState) reset() {
	for _, t := range s {
		t.reset()
	}
}
