package breaker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/metric"
)

// State is the state of a breaker.
type State int32

const (
	// StateClosed lets calls through and counts their outcomes.
	StateClosed State = iota
	// StateHalfOpen lets a few probe calls through to learn whether the
	// dependency is back.
	StateHalfOpen
	// StateOpen rejects calls without making them.
	StateOpen
)

func (s State) String() string {
	switch s {
	case StateClosed:
		return "closed"
	case StateHalfOpen:
		return "half-open"
	case StateOpen:
		return "open"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

func fromGobreaker(s gobreaker.State) State {
	switch s {
	case gobreaker.StateHalfOpen:
		return StateHalfOpen
	case gobreaker.StateOpen:
		return StateOpen
	}
	return StateClosed
}

var (
	// ErrOpen is matched by every rejection: an open breaker, one forced
	// open, and a half-open one whose probe slots are taken.
	ErrOpen = errors.New("breaker: open")

	// ErrTooManyRequests is matched by the rejection of a half-open breaker
	// whose probe slots are all taken. Such errors also match ErrOpen.
	ErrTooManyRequests = errors.New("breaker: half-open, probes in flight")

	// ErrInvalidConfig is matched by the error of an invalid option; the
	// message names the option.
	ErrInvalidConfig = errors.New("breaker: invalid configuration")
)

// rejection is the error of a rejected call. Its values are made once, so a
// rejection allocates nothing.
type rejection struct {
	name     string
	halfOpen bool
	forced   bool
}

func (r *rejection) Error() string {
	switch {
	case r.forced:
		return "breaker " + r.name + ": forced open"
	case r.halfOpen:
		return "breaker " + r.name + ": half-open, probes in flight"
	}
	return "breaker " + r.name + ": open"
}

func (r *rejection) Is(target error) bool {
	return target == ErrOpen || (r.halfOpen && target == ErrTooManyRequests)
}

// Outcome is what a call tells a breaker about its dependency.
type Outcome int8

const (
	// Success counts for the dependency.
	Success Outcome = iota
	// Failure counts against it.
	Failure
	// Ignored is not counted: the call says nothing about the dependency.
	Ignored
)

func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Failure:
		return "failure"
	case Ignored:
		return "ignored"
	}
	return fmt.Sprintf("Outcome(%d)", int8(o))
}

// Classifier decides the outcome of a call from its error. The default
// counts nil as Success and any other error as Failure. Whatever the
// classifier says, a call that ends with an error while its caller's
// context is cancelled is Ignored.
type Classifier func(err error) Outcome

func defaultClassifier(err error) Outcome {
	if err == nil {
		return Success
	}
	return Failure
}

// Counts are the outcomes a breaker has counted in its current state and
// window. Slow calls (see [SlowCallRate]) count as failures.
type Counts struct {
	Requests             uint32
	TotalSuccesses       uint32
	TotalFailures        uint32
	ConsecutiveSuccesses uint32
	ConsecutiveFailures  uint32
}

// StateChange tells a listener that a breaker moved from one state to
// another.
type StateChange struct {
	Name     string
	From, To State
	At       time.Time

	local bool // made by this instance's own calls, not heard from its Fleet
}

// Modes set by hand.
const (
	modeAuto int32 = iota
	modeForcedOpen
	modeDisabled
)

// Breaker is a circuit breaker: it watches the outcomes of calls to one
// dependency and, when its [TripPolicy] says the dependency is failing,
// opens, rejecting calls at once (with an error matching [ErrOpen]) instead
// of letting them pile up. After the open timeout it lets a few probe calls
// through (half-open); if they succeed it closes, if one fails it opens
// again.
//
// It is built on gobreaker's CircuitBreaker and adds what a service needs
// around it: contexts (a done context is refused before the call, and a
// caller's cancellation is not a dependency failure), slow calls counted as
// failures, ready-made trip policies, an outcome classifier, jittered open
// timeouts, manual control, listeners called outside any lock, and
// OpenTelemetry metrics.
//
// Deadlines: a call whose caller's deadline expires inside it counts as a
// failure, since the dependency did not answer in the time the caller had;
// a call whose caller cancelled is ignored.
//
// A closed breaker's Execute allocates nothing. Breaker is safe for
// concurrent use; create one with [New].
type Breaker[T any] struct {
	name     string
	cfg      config
	cb       atomic.Pointer[gobreaker.CircuitBreaker[T]]
	mode     atomic.Int32
	trip     tripState
	classify Classifier
	slow     time.Duration // calls at least this slow are failures; 0: off

	rejectOpen, rejectHalfOpen, rejectForced error

	events  eventQueue
	metrics *instruments
	// probes counts the half-open calls admitted by Allow and not yet done,
	// in the current state.
	probes atomic.Int32
	// seq counts changes of state, so Allow can tell that its call
	// belongs to an earlier state.
	seq atomic.Uint64

	// openUntil is when the open breaker lets probes through, in ns since
	// epoch; 0 unless open. Until then calls are rejected without entering
	// gobreaker, whose mutex every rejection would otherwise take.
	openUntil atomic.Int64
	epoch     time.Time
	timeout   atomic.Int64 // the current gobreaker's open timeout, ns

	shared *fleetLink // nil unless WithFleet
}

// New returns a closed breaker for the dependency called name. It panics if
// an option is invalid, with an error matching [ErrInvalidConfig] that names
// the option, as regexp.MustCompile does for a bad pattern; configuration
// read at run time can be checked first with [ValidateOptions].
func New[T any](name string, opts ...Option) *Breaker[T] {
	c, err := newConfig(opts)
	if err != nil {
		panic(err)
	}
	b := &Breaker[T]{
		name:           name,
		cfg:            c,
		epoch:          time.Now(),
		classify:       c.classifier,
		rejectOpen:     &rejection{name: name},
		rejectHalfOpen: &rejection{name: name, halfOpen: true},
		rejectForced:   &rejection{name: name, forced: true},
	}
	b.trip = c.policy.newState()
	b.slow = c.policy.slowThreshold()
	if c.shared != nil {
		b.metrics = c.shared
	} else {
		wb := weak.Make(b)
		var reg metric.Registration
		b.metrics, reg = newInstruments(&c, name, func() (State, bool) {
			if b := wb.Value(); b != nil {
				return b.peekState(), true
			}
			return 0, false
		})
		if reg != nil {
			runtime.AddCleanup(b, func(r metric.Registration) { _ = r.Unregister() }, reg)
		}
	}
	b.events.listeners = append([]func(StateChange){b.metrics.transition}, c.listeners...)
	b.cb.Store(b.newGobreaker())
	if c.fleet != nil {
		b.joinFleet(c.fleet)
	}
	return b
}

// ValidateOptions reports the first invalid option, with an error matching
// [ErrInvalidConfig] that names it.
func ValidateOptions(opts ...Option) error {
	_, err := newConfig(opts)
	return err
}

func (b *Breaker[T]) newGobreaker() *gobreaker.CircuitBreaker[T] {
	timeout := b.cfg.openTimeout
	if b.cfg.jitter > 0 {
		// Each breaker draws its own timeout once, so the instances of a
		// fleet that opened together do not probe together.
		timeout += time.Duration(rand.Float64() * b.cfg.jitter * float64(timeout))
	}
	b.timeout.Store(int64(timeout))
	// The changes of a gobreaker that Reset has replaced are ignored,
	// however replacements overlap: only the one in use reports.
	var self *gobreaker.CircuitBreaker[T]
	s := gobreaker.Settings{
		Name:        b.name,
		MaxRequests: uint32(b.cfg.probes),
		Timeout:     timeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return b.trip.readyToTrip(c) },
		// Runs under gobreaker's lock: it only queues the change.
		OnStateChange: func(_ string, from, to gobreaker.State) {
			if b.cb.Load() != self {
				return // a call finishing on a gobreaker that Reset replaced
			}
			b.seq.Add(1)
			b.probes.Store(0)
			switch to {
			case gobreaker.StateOpen:
				b.holdOpen(b.timeout.Load())
			case gobreaker.StateClosed:
				b.openUntil.Store(0)
			}
			b.trip.reset()
			b.events.push(StateChange{Name: b.name, From: fromGobreaker(from), To: fromGobreaker(to), At: time.Now(), local: true})
		},
		IsSuccessful: func(err error) bool { return err == nil },
		IsExcluded:   func(err error) bool { return err == errIgnored },
	}
	b.cfg.policy.configure(&s)
	self = gobreaker.NewCircuitBreaker[T](s)
	return self
}

// Markers that carry a call's outcome into gobreaker, whose IsSuccessful and
// IsExcluded see only the error.
var (
	errFailed  = errors.New("breaker: failed")
	errIgnored = errors.New("breaker: ignored")
)

var outcomeMarker = [...]error{Success: nil, Failure: errFailed, Ignored: errIgnored}

// Name returns the breaker's name.
func (b *Breaker[T]) Name() string { return b.name }

// State returns the breaker's state. A breaker forced open is open; a
// disabled one is closed.
func (b *Breaker[T]) State() State {
	s := b.peekState()
	b.events.deliver()
	return s
}

// Ready reports whether the breaker would let a call through now: it is
// closed or half-open. It suits anything that should hold back while a
// dependency is down, such as the gate of a queue.Buffer, which pauses
// delivery while the breaker in front of the payment provider is open.
func (b *Breaker[T]) Ready() bool { return b.State() != StateOpen }

// peekState is State without delivering queued changes, for the metrics
// callback, which should not run listeners.
func (b *Breaker[T]) peekState() State {
	switch b.mode.Load() {
	case modeForcedOpen:
		return StateOpen
	case modeDisabled:
		return StateClosed
	}
	if b.rejectsFast() {
		return StateOpen
	}
	if b.shared != nil && b.shared.remote.Load() {
		return StateHalfOpen
	}
	return fromGobreaker(b.cb.Load().State())
}

// Counts returns the outcomes counted in the current state and window.
func (b *Breaker[T]) Counts() Counts {
	c := b.cb.Load().Counts()
	b.events.deliver()
	return Counts{
		Requests:             c.Requests,
		TotalSuccesses:       c.TotalSuccesses,
		TotalFailures:        c.TotalFailures,
		ConsecutiveSuccesses: c.ConsecutiveSuccesses,
		ConsecutiveFailures:  c.ConsecutiveFailures,
	}
}

// Execute calls fn if the breaker admits it and counts the outcome. A done
// ctx is returned as it is, without calling fn or counting anything. A
// rejected call returns an error matching [ErrOpen] without calling fn. A
// panic in fn counts as a failure and is raised again.
func (b *Breaker[T]) Execute(ctx context.Context, fn func(context.Context) (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	switch b.mode.Load() {
	case modeForcedOpen:
		b.metrics.call(ctx, outcomeRejected)
		return zero, b.rejectForced
	case modeDisabled:
		v, err := fn(ctx)
		b.metrics.call(ctx, int(b.classifyCall(ctx, err)))
		return v, err
	}

	if b.rejectsFast() {
		b.metrics.call(ctx, outcomeRejected)
		return zero, b.rejectOpen
	}
	if b.shared != nil && b.shared.remote.Load() {
		return b.probeFleet(ctx, fn)
	}
	v, err, _ := b.run(ctx, fn)
	return v, err
}

// run calls fn through gobreaker and returns its result and outcome, or a
// rejection with outcomeRejected.
func (b *Breaker[T]) run(ctx context.Context, fn func(context.Context) (T, error)) (T, error, int) {
	var (
		called  bool
		callErr error
		out     Outcome
		start   time.Time
	)
	if b.slow > 0 {
		start = time.Now()
	}
	// Deferred so that a change made by a panicking call is delivered too.
	defer b.events.deliver()
	cb := b.cb.Load()
	v, err := cb.Execute(func() (T, error) {
		called = true
		panicked := true
		defer func() {
			if panicked {
				// gobreaker counts the panic as a failure; so must the
				// policy's own window, before gobreaker asks it to trip.
				b.observe(cb, Failure, false)
			}
		}()
		v, err := fn(ctx)
		panicked = false
		callErr = err
		var slow bool
		out, slow = b.outcome(ctx, err, start)
		b.observe(cb, out, slow)
		return v, outcomeMarker[out]
	})
	if !called {
		b.metrics.call(ctx, outcomeRejected)
		if err == gobreaker.ErrTooManyRequests {
			return v, b.rejectHalfOpen, outcomeRejected
		}
		return v, b.rejectOpen, outcomeRejected
	}
	b.metrics.call(ctx, int(out))
	// err is the outcome's marker; the caller gets fn's own error.
	return v, callErr, int(out)
}

// holdOpen keeps the breaker open for at least d from now.
func (b *Breaker[T]) holdOpen(d int64) {
	until := b.now() + d
	for {
		cur := b.openUntil.Load()
		if cur >= until || b.openUntil.CompareAndSwap(cur, until) {
			return
		}
	}
}

// now is the time since epoch in ns; on a monotonic reading, time.Since
// reads only the monotonic clock.
func (b *Breaker[T]) now() int64 { return int64(time.Since(b.epoch)) }

// rejectsFast reports whether the breaker is open and its timeout has not
// run out, without entering gobreaker.
func (b *Breaker[T]) rejectsFast() bool {
	u := b.openUntil.Load()
	return u != 0 && b.now() < u
}

// classifyCall applies the classifier and the rule that a caller's
// cancellation says nothing about the dependency.
func (b *Breaker[T]) classifyCall(ctx context.Context, err error) Outcome {
	if err != nil && errors.Is(ctx.Err(), context.Canceled) {
		return Ignored
	}
	return b.classify(err)
}

// outcome classifies one call; slow reports whether it was a slow call
// (start is zero unless slow calls are measured). A slow call is a failure.
func (b *Breaker[T]) outcome(ctx context.Context, err error, start time.Time) (out Outcome, slow bool) {
	out = b.classifyCall(ctx, err)
	if out == Ignored {
		return out, false
	}
	if slow = b.slow > 0 && time.Since(start) >= b.slow; slow {
		out = Failure
	}
	return out, slow
}

// observe feeds an outcome to the trip policy's own window, unless it
// belongs to a gobreaker that Reset has replaced.
func (b *Breaker[T]) observe(cb *gobreaker.CircuitBreaker[T], out Outcome, slow bool) {
	if out != Ignored && b.cb.Load() == cb {
		b.trip.observe(out == Failure, slow)
	}
}

// Allow is the two-step form of Execute, for callers that cannot wrap the
// call in a function: if the breaker admits a call, Allow returns done,
// which must be called once with the call's error when it ends. A done ctx
// or a rejection is returned as the error, as from Execute.
//
// The outcome is given to gobreaker when done is called; an outcome that
// arrives after the breaker changed state is dropped, as gobreaker drops
// the outcomes of an earlier generation. While half-open, Allow admits as
// many calls as there are probe slots, on a count of its own: gobreaker's
// slots are not reachable from outside a call, so an Allow probe whose
// outcome arrives while an Execute probe holds gobreaker's slot is dropped.
// Unlike Execute, Allow allocates the done function.
func (b *Breaker[T]) Allow(ctx context.Context) (done func(err error), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch b.mode.Load() {
	case modeForcedOpen:
		b.metrics.call(ctx, outcomeRejected)
		return nil, b.rejectForced
	case modeDisabled:
		return func(err error) { b.metrics.call(ctx, int(b.classifyCall(ctx, err))) }, nil
	}
	if b.rejectsFast() {
		b.metrics.call(ctx, outcomeRejected)
		return nil, b.rejectOpen
	}
	if b.shared != nil && b.shared.remote.Load() {
		return b.allowFleetProbe(ctx)
	}
	cb := b.cb.Load()
	state := cb.State() // may move open to half-open, a change of state
	seq := b.seq.Load()
	halfOpen := false
	switch state {
	case gobreaker.StateOpen:
		b.events.deliver()
		b.metrics.call(ctx, outcomeRejected)
		return nil, b.rejectOpen
	case gobreaker.StateHalfOpen:
		if b.probes.Add(1) > int32(b.cfg.probes) {
			b.probes.Add(-1)
			b.events.deliver()
			b.metrics.call(ctx, outcomeRejected)
			return nil, b.rejectHalfOpen
		}
		halfOpen = true
	}
	b.events.deliver()
	var start time.Time
	if b.slow > 0 {
		start = time.Now()
	}
	var once sync.Once
	return func(err error) {
		once.Do(func() {
			defer b.events.deliver()
			out, slow := b.outcome(ctx, err, start)
			b.metrics.call(ctx, int(out))
			if b.seq.Load() != seq || b.cb.Load() != cb {
				// The breaker changed state since Allow (and reset its
				// probe count): the outcome belongs to an earlier state.
				return
			}
			if halfOpen {
				for p := b.probes.Load(); p > 0 && !b.probes.CompareAndSwap(p, p-1); p = b.probes.Load() {
				}
			}
			b.observe(cb, out, slow)
			_, _ = cb.Execute(func() (T, error) {
				var zero T
				return zero, outcomeMarker[out]
			})
		})
	}, nil
}

// ForceOpen opens the breaker by hand (maintenance of the dependency): every
// call is rejected until [Breaker.Reset].
func (b *Breaker[T]) ForceOpen() { b.setMode(modeForcedOpen) }

// Disable keeps the breaker closed whatever happens, until [Breaker.Reset];
// calls are still measured in its metrics, though not counted toward
// tripping.
func (b *Breaker[T]) Disable() { b.setMode(modeDisabled) }

// Reset closes the breaker with zero counts and ends ForceOpen or Disable.
func (b *Breaker[T]) Reset() {
	from := b.State()
	b.mode.Store(modeAuto)
	b.cb.Store(b.newGobreaker())
	b.seq.Add(1)
	b.probes.Store(0)
	b.openUntil.Store(0)
	if b.shared != nil {
		b.shared.newEpoch()
		b.shared.remote.Store(false)
	}
	b.trip.reset()
	if from != StateClosed {
		b.events.push(StateChange{Name: b.name, From: from, To: StateClosed, At: time.Now()})
	}
	b.events.deliver()
}

func (b *Breaker[T]) setMode(m int32) {
	from := b.State()
	b.mode.Store(m)
	if to := b.State(); to != from {
		b.events.push(StateChange{Name: b.name, From: from, To: to, At: time.Now()})
	}
	b.events.deliver()
}
