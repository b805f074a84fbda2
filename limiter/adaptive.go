package limiter

import (
	"context"
	"errors"
	"math"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Defaults of the [Adaptive] options.
const (
	defaultAdaptiveInitialLimit     = 20
	defaultAdaptiveMinLimit         = 1
	defaultAdaptiveMaxLimit         = 1000
	defaultAdaptiveLatencyTolerance = 2.0
	defaultAdaptiveSmoothing        = 0.2
	defaultAdaptiveSampleWindow     = 100 * time.Millisecond
)

// Fixed parameters of the estimator. They shape how the algorithm behaves
// rather than what a service needs, so they are not options.
const (
	// minWindowSamples is how many outcomes a window needs before it
	// closes: fewer give an average too noisy to act on.
	minWindowSamples = 10
	// longWindows is the span, in windows, of the long-term latency
	// average (an exponential moving average).
	longWindows = 100
	// longDrift: when the long-term average exceeds the short-term one by
	// this factor (latency has come back down after a long overload), the
	// long-term average is cut by longDecay per window instead of waiting
	// for the moving average to forget.
	longDrift = 2.0
	longDecay = 0.95
	// dropBackoff is the factor the limit is multiplied by after a window
	// with dropped outcomes.
	dropBackoff = 0.9
	// minGradient bounds the gradient, so that one outlier window lowers
	// the limit by at most smoothing/2.
	minGradient = 0.5
)

// Adaptive is a concurrency limiter: it admits at most Limit() requests at
// once and sheds the rest immediately, and it moves that limit to follow the
// latency it measures, so a service sheds load before queueing makes latency
// collapse. It is safe for concurrent use; the zero value is not usable, use
// [NewAdaptive].
//
// The limit follows a gradient algorithm. Outcomes are gathered in windows
// of at least the sample window (default 100ms) and 10 outcomes; a window's
// average latency is the short-term latency, and a moving average over about
// 100 windows the long-term one. Each window sets
//
//	gradient = clamp(tolerance × long / short, 0.5, 1)
//	limit    = limit×(1−smoothing) + (limit×gradient + sqrt(limit))×smoothing
//
// clamped to [min, max]: while latency stays within tolerance (default 2.0)
// of the long-term latency the limit grows by smoothing×sqrt(limit) per
// window, and beyond it the limit shrinks by at most smoothing/2 per window
// (smoothing is 0.2 by default, so 10%). The limit grows only while the
// limiter is in use (at least half the limit in flight, or a request shed),
// never while the service idles. A window with a dropped outcome (see
// [Permit.Dropped]) multiplies the limit by 0.9 instead. While the long-term
// latency is more than twice the short-term one, as after a long overload,
// it is cut by 5% per window so the limiter becomes sensitive again soon.
// Defaults: start at 20, min 1, max 1000.
//
// Acquire and the Permit methods take no lock and allocate nothing; only the
// release that closes a window takes a mutex, and only if no other goroutine
// holds it. Besides bulwark.limiter.decisions (shed requests count as
// "limited") it reports the gauges bulwark.limiter.adaptive.limit and
// bulwark.limiter.adaptive.inflight.
type Adaptive struct {
	// Admission state, read and written by every Acquire and release.
	inflight atomic.Int64
	limit    atomic.Int64
	// busy records that this window saw the limiter at least half used.
	busy atomic.Bool

	_ [64]byte // keep the window counters off the admission cache line

	// The current window. Samples add to sum before count, and the window
	// is taken count first, so a sample racing with the close may put its
	// latency in one window and its count in the next: a bias of one
	// sample in a window of at least ten, not worth a lock.
	sum       atomic.Int64 // latency of successful outcomes, ns
	count     atomic.Int64 // outcomes, successful and dropped
	drops     atomic.Int64
	windowEnd atomic.Int64 // ns since epoch

	epoch  time.Time
	window int64 // ns

	mu  sync.Mutex // held to close a window; guards est
	est gradientEstimator

	decisions decisionCounter
}

// adaptiveConfig is filled by AdaptiveOptions.
type adaptiveConfig struct {
	commonConfig
	initialLimit int
	minLimit     int
	maxLimit     int
	tolerance    float64
	smoothing    float64
	sampleWindow time.Duration
}

// WithInitialLimit sets the concurrency limit an [Adaptive] limiter starts
// with. It must lie within [WithMinLimit, WithMaxLimit]. The default is 20.
func WithInitialLimit(n int) AdaptiveOption {
	return adaptiveOptionFunc(func(c *adaptiveConfig) { c.initialLimit = n })
}

// WithMinLimit sets the lowest concurrency limit an [Adaptive] limiter goes
// down to, however bad latency gets. It must be at least 1. The default is 1.
func WithMinLimit(n int) AdaptiveOption {
	return adaptiveOptionFunc(func(c *adaptiveConfig) { c.minLimit = n })
}

// WithMaxLimit sets the highest concurrency limit an [Adaptive] limiter goes
// up to. It must be at least the minimum. The default is 1000.
func WithMaxLimit(n int) AdaptiveOption {
	return adaptiveOptionFunc(func(c *adaptiveConfig) { c.maxLimit = n })
}

// WithLatencyTolerance sets how many times the long-term latency the
// short-term latency may reach before an [Adaptive] limiter lowers its limit.
// It must be at least 1; a larger value tolerates more queueing. The default
// is 2.0.
func WithLatencyTolerance(f float64) AdaptiveOption {
	return adaptiveOptionFunc(func(c *adaptiveConfig) { c.tolerance = f })
}

// WithSmoothing sets the weight, in (0, 1], that each window's new estimate
// has in an [Adaptive] limiter's limit: 1 jumps straight to it, smaller
// values move more slowly and ride out noisy windows. The default is 0.2.
func WithSmoothing(f float64) AdaptiveOption {
	return adaptiveOptionFunc(func(c *adaptiveConfig) { c.smoothing = f })
}

// WithSampleWindow sets the shortest window over which an [Adaptive] limiter
// averages latency before it moves its limit; a window also needs at least
// 10 outcomes. It must be positive. The default is 100ms.
func WithSampleWindow(d time.Duration) AdaptiveOption {
	return adaptiveOptionFunc(func(c *adaptiveConfig) { c.sampleWindow = d })
}

func (c *adaptiveConfig) validate() error {
	switch {
	case c.minLimit < 1:
		return configError("MinLimit", "must be at least 1", c.minLimit)
	case c.maxLimit < c.minLimit:
		return configError("MaxLimit", "must be at least MinLimit "+strconv.Itoa(c.minLimit), c.maxLimit)
	case c.initialLimit < c.minLimit || c.initialLimit > c.maxLimit:
		return configError("InitialLimit",
			"must lie in [MinLimit, MaxLimit] = ["+strconv.Itoa(c.minLimit)+", "+strconv.Itoa(c.maxLimit)+"]",
			c.initialLimit)
	case !(c.tolerance >= 1) || math.IsInf(c.tolerance, 0):
		return configError("LatencyTolerance", "must be a finite number at least 1", c.tolerance)
	case !(c.smoothing > 0 && c.smoothing <= 1):
		return configError("Smoothing", "must lie in (0, 1]", c.smoothing)
	case c.sampleWindow <= 0:
		return configError("SampleWindow", "must be positive", c.sampleWindow)
	}
	return nil
}

// NewAdaptive returns an adaptive concurrency limiter. Bad options give an
// error matching [ErrInvalidConfig] that names the field.
func NewAdaptive(opts ...AdaptiveOption) (*Adaptive, error) {
	c := adaptiveConfig{
		initialLimit: defaultAdaptiveInitialLimit,
		minLimit:     defaultAdaptiveMinLimit,
		maxLimit:     defaultAdaptiveMaxLimit,
		tolerance:    defaultAdaptiveLatencyTolerance,
		smoothing:    defaultAdaptiveSmoothing,
		sampleWindow: defaultAdaptiveSampleWindow,
	}
	for i, o := range opts {
		if o == nil {
			return nil, configError("opts", "must not contain nil, at index", i)
		}
		o.applyAdaptive(&c)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}

	a := &Adaptive{
		epoch:  time.Now(),
		window: int64(c.sampleWindow),
		est: gradientEstimator{
			limit:     float64(c.initialLimit),
			min:       float64(c.minLimit),
			max:       float64(c.maxLimit),
			tolerance: c.tolerance,
			smoothing: c.smoothing,
		},
	}
	a.limit.Store(int64(c.initialLimit))
	a.windowEnd.Store(a.window)

	m := c.meter()
	base := c.baseAttrs("adaptive")
	a.decisions = newDecisionCounter(m, base)
	observeGauges(a, m, base)
	return a, nil
}

// observeGauges reports a's limit and in-flight count when metrics are
// collected, so the hot path pays nothing for them. The callback holds a
// only weakly, and is unregistered once a is garbage, so a meter provider
// does not keep limiters alive: Adaptive needs no Close.
func observeGauges(a *Adaptive, m metric.Meter, base []attribute.KeyValue) {
	limit, err := m.Int64ObservableGauge("bulwark.limiter.adaptive.limit",
		metric.WithDescription("Current concurrency limit of an adaptive limiter."),
		metric.WithUnit("{request}"))
	if err != nil {
		otel.Handle(err)
	}
	inflight, err := m.Int64ObservableGauge("bulwark.limiter.adaptive.inflight",
		metric.WithDescription("Requests admitted by an adaptive limiter and not yet finished."),
		metric.WithUnit("{request}"))
	if err != nil {
		otel.Handle(err)
	}
	attrs := metric.WithAttributeSet(attribute.NewSet(base...))
	wa := weak.Make(a)
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if a := wa.Value(); a != nil {
			o.ObserveInt64(limit, a.limit.Load(), attrs)
			o.ObserveInt64(inflight, a.inflight.Load(), attrs)
		}
		return nil
	}, limit, inflight)
	if err != nil {
		otel.Handle(err)
		return
	}
	runtime.AddCleanup(a, func(r metric.Registration) { _ = r.Unregister() }, reg)
}

// Limit returns the current concurrency limit.
func (a *Adaptive) Limit() int { return int(a.limit.Load()) }

// Inflight returns the number of permits acquired and not yet released.
func (a *Adaptive) Inflight() int { return int(a.inflight.Load()) }

// errShed is the error of a shed request. It is one value so that shedding,
// which happens most when the service is busiest, allocates nothing.
var errShed error = shedError{}

type shedError struct{}

func (shedError) Error() string { return "limiter: adaptive concurrency limit reached" }

// Is makes errors.Is(err, ErrLimited) true.
func (shedError) Is(target error) bool { return target == ErrLimited }

// Acquire admits one request if fewer than Limit() are in flight, and
// returns a [Permit] that must be finished when the request ends. It never
// waits: above the limit it returns at once an error matching [ErrLimited]
// (the request is shed), and with a done ctx it returns ctx.Err(). On error
// the Permit is the zero Permit, whose methods do nothing, so a caller may
// finish it unconditionally.
func (a *Adaptive) Acquire(ctx context.Context) (Permit, error) {
	if err := ctx.Err(); err != nil {
		a.decisions.record(ctx, Decision{}, err, false)
		return Permit{}, err
	}
	for {
		n := a.inflight.Load()
		lim := a.limit.Load()
		if n >= lim {
			a.markBusy()
			a.decisions.record(ctx, Decision{}, nil, false)
			return Permit{}, errShed
		}
		if a.inflight.CompareAndSwap(n, n+1) {
			if 2*(n+1) >= lim {
				a.markBusy()
			}
			break
		}
	}
	a.decisions.record(ctx, Decision{Allowed: true}, nil, false)
	return Permit{a: a, start: a.now()}, nil
}

// markBusy sets the busy flag, reading first so that a saturated limiter
// does not write the shared cache line on every call.
func (a *Adaptive) markBusy() {
	if !a.busy.Load() {
		a.busy.Store(true)
	}
}

// now is the monotonic time since the limiter was made, in ns.
func (a *Adaptive) now() int64 { return int64(time.Since(a.epoch)) }

type outcome uint8

const (
	outcomeSuccess outcome = iota
	outcomeDropped
	outcomeIgnored
)

func (a *Adaptive) release(start int64, o outcome) {
	if a.inflight.Add(-1) < 0 {
		// Only a copy of an already released Permit gets here; undo
		// rather than let the count go negative and admit too many.
		a.inflight.Add(1)
		return
	}
	if o == outcomeIgnored {
		return
	}
	now := a.now()
	if o == outcomeDropped {
		a.drops.Add(1)
	} else {
		a.sum.Add(now - start)
	}
	if a.count.Add(1) >= minWindowSamples && now >= a.windowEnd.Load() {
		a.closeWindow(now)
	}
}

// closeWindow folds the current window into the limit. A goroutine that
// finds another one closing the window leaves it to that one.
func (a *Adaptive) closeWindow(now int64) {
	if !a.mu.TryLock() {
		return
	}
	defer a.mu.Unlock()
	if now < a.windowEnd.Load() {
		return // closed by another goroutine since the caller looked
	}
	count := a.count.Swap(0)
	sum := a.sum.Swap(0)
	drops := a.drops.Swap(0)
	busy := a.busy.Swap(false)
	a.windowEnd.Store(now + a.window)

	a.limit.Store(a.est.update(sum, count-drops, drops, busy))
}

// gradientEstimator is the limit arithmetic, apart from the concurrency
// around it so that it can be read (and tested) as plain code.
type gradientEstimator struct {
	limit     float64 // unrounded, so small steps accumulate
	long      float64 // long-term latency, ns; 0 until the first window
	min, max  float64
	tolerance float64
	smoothing float64
}

// update folds one window in and returns the new whole limit. sum is the
// total latency of the window's successful outcomes, n their number, drops
// the number of dropped outcomes; busy reports whether the limiter was at
// least half used.
func (e *gradientEstimator) update(sum, n, drops int64, busy bool) int64 {
	switch {
	case drops > 0:
		e.limit = clamp(e.limit*dropBackoff, e.min, e.max)
	case n > 0:
		short := float64(sum) / float64(n)
		if e.long == 0 {
			e.long = short
		} else {
			e.long += (short - e.long) * (2.0 / (longWindows + 1))
		}
		gradient := 1.0
		if short > 0 {
			if e.long/short > longDrift {
				e.long *= longDecay
			}
			gradient = clamp(e.tolerance*e.long/short, minGradient, 1)
		}
		next := e.limit*gradient + math.Sqrt(e.limit)
		next = e.limit*(1-e.smoothing) + next*e.smoothing
		if !busy && next > e.limit {
			next = e.limit
		}
		e.limit = clamp(next, e.min, e.max)
	}
	return int64(e.limit)
}

func clamp(x, lo, hi float64) float64 { return math.Max(lo, math.Min(hi, x)) }

// Permit is one admitted request of an [Adaptive] limiter. Finish it exactly
// once, with [Permit.Finish], [Permit.Release] (or its alias [Permit.Done]),
// [Permit.Dropped] or [Permit.Ignore], to give its slot back and tell the
// limiter how the request went.
//
// A Permit is a small value rather than a release function so that Acquire
// allocates nothing: a closure capturing the limiter and the start time would
// be allocated on every call. Its methods have pointer receivers and reset
// the Permit to the zero Permit, on which every method does nothing, so
// finishing the same Permit twice (a deferred Finish after an early Release,
// say) gives back one slot, not two. Copies do not share that state: finish
// the Permit you got, not a copy. A Permit must not be finished from two
// goroutines at once.
type Permit struct {
	a     *Adaptive
	start int64 // ns since a.epoch
}

// Release finishes a request that succeeded: its latency is a sample for the
// limit.
func (p *Permit) Release() { p.finish(outcomeSuccess) }

// Done is [Permit.Release].
func (p *Permit) Done() { p.finish(outcomeSuccess) }

// Dropped finishes a request that met an overload signal (it timed out, or
// the downstream answered "overloaded"): the limit goes down.
func (p *Permit) Dropped() { p.finish(outcomeDropped) }

// Ignore finishes a request without taking it as a sample, for outcomes that
// say nothing about the service's load, such as a caller that gave up.
func (p *Permit) Ignore() { p.finish(outcomeIgnored) }

// Finish finishes a request by its error:
//
//   - nil: success ([Permit.Release]);
//   - matching [context.DeadlineExceeded] or [ErrLimited] (a downstream
//     limiter shed it): dropped ([Permit.Dropped]);
//   - matching [context.Canceled]: ignored ([Permit.Ignore]), since the
//     caller chose to stop;
//   - any other error: success. A fast business error ("card declined")
//     is no sign of overload and its latency is as good a sample as any.
//
// An error matching both context errors counts as dropped.
func (p *Permit) Finish(err error) {
	switch {
	case err == nil:
		p.finish(outcomeSuccess)
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrLimited):
		p.finish(outcomeDropped)
	case errors.Is(err, context.Canceled):
		p.finish(outcomeIgnored)
	default:
		p.finish(outcomeSuccess)
	}
}

func (p *Permit) finish(o outcome) {
	a, start := p.a, p.start
	if a == nil {
		return
	}
	*p = Permit{}
	a.release(start, o)
}
