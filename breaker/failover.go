package breaker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

var (
	// ErrAllFailed is matched by the error of a [Failover] call that no
	// provider served: each failed or was skipped by its open breaker. The
	// error also matches the decisive provider error (see [Failover]).
	ErrAllFailed = errors.New("breaker: all providers failed")

	// ErrFinal is matched by errors marked with [Final]: answers a provider
	// gave correctly, such as a declined card, that a [Failover] returns at
	// once instead of asking the next provider.
	ErrFinal = errors.New("breaker: final answer")
)

// Final marks err as a final answer: the provider worked and said no (card
// declined, address invalid). A [Failover] returns it to the caller at once,
// never asks another provider, and counts it as a success of the
// provider's breaker. The result matches both [ErrFinal] and err with
// errors.Is, and its message is err's. Final(nil) is nil.
func Final(err error) error {
	if err == nil {
		return nil
	}
	return &finalError{err}
}

type finalError struct{ err error }

func (e *finalError) Error() string        { return e.err.Error() }
func (e *finalError) Unwrap() error        { return e.err }
func (e *finalError) Is(target error) bool { return target == ErrFinal }

// Failover sends each call to the first of an ordered list of providers
// that can serve it: a payment to WeChat Pay and, while WeChat Pay is down,
// to Alipay; a geocoding request to one map vendor or another.
//
// Each provider is behind its own [Breaker]. A call goes to the first
// provider whose breaker admits it. When the provider fails, the call moves
// on to the next; when a breaker rejects the call (its provider has been
// failing), the provider is skipped without being called. Every call starts
// again at the primary, so the primary gets traffic back as soon as its
// breaker lets a probe through after its open timeout, and all of it once
// the probe succeeds. [Result] names the provider that served and lists
// the attempts made.
//
// Providers are named rather than given as functions so that each call can
// carry its own request: [Failover.Execute] takes a function that is
// called with the name of the provider to ask.
//
// Not every error is a reason to fail over. A timeout, a 5xx or a refused
// connection is a provider failure: the next provider is asked. A declined
// card or an invalid address is a final answer: the provider worked and
// said no, and asking another would only ask again (and a declined payment
// must never be re-sent to the backup). Mark final answers with [Final], or
// recognise them with [WithFinal]; they are returned to the caller at once
// and count as successes of the provider's breaker, whose [Classifier]
// never sees them.
//
// Errors. A final answer is returned as the provider gave it. When no
// provider served, the error matches [ErrAllFailed] and the decisive error:
// that of the last provider called or, when every breaker rejected the
// call, the last rejection, which matches [ErrOpen]. When the caller's
// context is done, Execute stops at once, asks no further provider and
// returns ctx.Err(). An attempt the caller cancelled is not a failure of
// its provider; one in which the caller's deadline expired is, as for
// [Breaker], since the provider did not answer in the caller's time.
//
// A failure is not proof that nothing happened: a payment that timed out
// or got a 5xx may still have gone through at the primary. Fail a
// non-idempotent call over only with an idempotency key the providers
// honour (the order number), or return such errors as final and settle the
// payment's state out of band.
//
// [WithAttemptTimeout] bounds each attempt within the caller's context, so
// that a hanging primary leaves time for the backup. [WithHedge] asks the
// next provider too when one is slow, for idempotent calls.
//
// Every attempt is counted in the counter bulwark.breaker.failover.attempts
// (unit {attempt}) with the attributes bulwark.breaker.failover.name,
// bulwark.breaker.failover.provider and bulwark.breaker.failover.outcome
// (see [AttemptOutcome]). The providers' breakers, named
// failover+"/"+provider, report their own metrics as any [Breaker] does.
//
// Without hedging, Execute makes its attempts in the caller's goroutine
// and, when the primary serves, allocates nothing beyond what the call
// does. With hedging, each attempt runs in a goroutine of its own and
// Execute returns only when all of them have. A Failover is safe for
// concurrent use; create one with [NewFailover].
type Failover[T any] struct {
	name      string
	providers []failoverProvider[T]
	final     func(error) bool
	timeout   time.Duration // 0: none
	hedge     time.Duration // 0: off
	attempts  metric.Int64Counter
}

type failoverProvider[T any] struct {
	name    string
	breaker *Breaker[T]
	metric  [numAttemptOutcomes][]metric.AddOption
}

// NewFailover returns a Failover over providers, the first being the
// primary. It panics if the configuration is invalid (no providers, a
// provider without a name or with the name of another, a bad option), with
// an error matching [ErrInvalidConfig] that names the field, as [New] does.
func NewFailover[T any](name string, providers []Provider[T], opts ...FailoverOption) *Failover[T] {
	c, err := failoverConfigOf(opts)
	if err == nil {
		err = validateProviders(providers)
	}
	if err != nil {
		panic(err)
	}
	f := &Failover[T]{
		name:      name,
		providers: make([]failoverProvider[T], len(providers)),
		final:     c.final,
		timeout:   c.timeout,
		hedge:     c.hedge,
	}
	mp := c.meterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if f.attempts, err = mp.Meter(scope).Int64Counter("bulwark.breaker.failover.attempts",
		metric.WithDescription("Attempts of failover calls, by failover, provider and outcome."),
		metric.WithUnit("{attempt}")); err != nil {
		otel.Handle(err)
	}
	nameAttr := attribute.String("bulwark.breaker.failover.name", name)
	for i, p := range providers {
		fp := &f.providers[i]
		fp.name = p.Name
		fp.breaker = p.Breaker
		if fp.breaker == nil {
			fp.breaker = New[T](name+"/"+p.Name, c.breakerOpts...)
		}
		provAttr := attribute.String("bulwark.breaker.failover.provider", p.Name)
		for o := range numAttemptOutcomes {
			set := attribute.NewSet(nameAttr, provAttr,
				attribute.String("bulwark.breaker.failover.outcome", attemptOutcomeNames[o]))
			fp.metric[o] = []metric.AddOption{metric.WithAttributeSet(set)}
		}
	}
	return f
}

func validateProviders[T any](providers []Provider[T]) error {
	if len(providers) == 0 {
		return configError("providers", "must not be empty", nil)
	}
	for i, p := range providers {
		field := fmt.Sprintf("providers[%d].Name", i)
		if p.Name == "" {
			return configError(field, "must not be empty", nil)
		}
		for j := range i {
			if providers[j].Name == p.Name {
				return configError(field, fmt.Sprintf("duplicates providers[%d].Name", j), p.Name)
			}
		}
	}
	return nil
}

// Name returns the failover's name.
func (f *Failover[T]) Name() string { return f.name }

// Providers returns the names of the providers, primary first.
func (f *Failover[T]) Providers() []string {
	names := make([]string, len(f.providers))
	for i := range f.providers {
		names[i] = f.providers[i].name
	}
	return names
}

// Breaker returns the breaker guarding the named provider, or nil if there
// is no such provider: to watch its state, or to force it open for
// maintenance of the provider.
func (f *Failover[T]) Breaker(provider string) *Breaker[T] {
	for i := range f.providers {
		if f.providers[i].name == provider {
			return f.providers[i].breaker
		}
	}
	return nil
}

// Provider is one of the providers of a [Failover], given in order of
// preference: the first is the primary.
type Provider[T any] struct {
	// Name identifies the provider to the call function of
	// [Failover.Execute], in a [Result] and in metrics. It must be
	// non-empty and unique within the Failover.
	Name string

	// Breaker guards the provider. Nil (the usual case) makes a new
	// breaker named failover+"/"+Name from the options given with
	// [WithProviderOptions]. Give one to set options for this provider
	// alone or to share a breaker with other callers of the provider.
	Breaker *Breaker[T]
}

// FailoverOption configures a [Failover].
type FailoverOption interface{ applyFailover(*failoverConfig) }

type failoverConfig struct {
	final         func(error) bool
	timeout       time.Duration
	hedge         time.Duration
	breakerOpts   []Option
	meterProvider metric.MeterProvider

	// Whether each option was given, so a zero value can be rejected.
	finalSet, timeoutSet, hedgeSet bool
}

type failoverOptionFunc func(*failoverConfig)

func (f failoverOptionFunc) applyFailover(c *failoverConfig) { f(c) }

// WithFinal adds a test for final answers besides [Final]: errors for
// which isFinal reports true are returned to the caller at once and count
// as successes of the provider's breaker (see [Final]). Use it when the
// provider's client has its own error values for such answers. By default
// only errors marked with [Final] are final; every other error is a
// provider failure.
func WithFinal(isFinal func(error) bool) FailoverOption {
	return failoverOptionFunc(func(c *failoverConfig) { c.final, c.finalSet = isFinal, true })
}

// WithAttemptTimeout bounds each attempt: a provider that has not answered
// within d is abandoned (its context is done with
// context.DeadlineExceeded), counted as a failure and the next provider is
// asked, while the caller's context still bounds the whole call. d must be
// positive. By default an attempt is bounded only by the caller's context,
// so a hanging primary takes all of the caller's time.
func WithAttemptTimeout(d time.Duration) FailoverOption {
	return failoverOptionFunc(func(c *failoverConfig) { c.timeout, c.timeoutSet = d, true })
}

// WithHedge turns on hedging: when the provider asked last has not
// answered within delay, the next provider is asked too, without waiting;
// the first success wins and the other attempts are cancelled. Each further
// delay without an answer brings in one more provider. delay must be
// positive. The default is no hedging: one attempt at a time.
//
// Hedging sends the same request to more than one provider, so use it only
// for idempotent calls (a map lookup, a quote), never for one that changes
// something (a payment).
func WithHedge(delay time.Duration) FailoverOption {
	return failoverOptionFunc(func(c *failoverConfig) { c.hedge, c.hedgeSet = delay, true })
}

// WithProviderOptions sets the options of the breakers a [Failover] makes
// for its providers (those given without a Breaker of their own). Several
// uses add up, in order. The default is no options: [New]'s defaults. The
// Failover's own metrics go to the meter provider given here with
// [WithMeterProvider], or to the global one.
func WithProviderOptions(opts ...Option) FailoverOption {
	opts = append([]Option(nil), opts...)
	return failoverOptionFunc(func(c *failoverConfig) { c.breakerOpts = append(c.breakerOpts, opts...) })
}

// ValidateFailoverOptions reports whether opts are valid for [NewFailover],
// including the breaker options given with [WithProviderOptions]. Errors
// match [ErrInvalidConfig] and name the bad option.
func ValidateFailoverOptions(opts ...FailoverOption) error {
	_, err := failoverConfigOf(opts)
	return err
}

func failoverConfigOf(opts []FailoverOption) (failoverConfig, error) {
	var c failoverConfig
	for i, o := range opts {
		if o == nil {
			return c, configError(fmt.Sprintf("opts[%d]", i), "must not be nil", nil)
		}
		o.applyFailover(&c)
	}
	bc, err := newConfig(c.breakerOpts)
	switch {
	case err != nil:
		return c, fmt.Errorf("WithProviderOptions: %w", err)
	case c.finalSet && c.final == nil:
		return c, configError("WithFinal", "must not be nil", nil)
	case c.timeoutSet && c.timeout <= 0:
		return c, configError("WithAttemptTimeout", "must be positive", c.timeout)
	case c.hedgeSet && c.hedge <= 0:
		return c, configError("WithHedge", "must be positive", c.hedge)
	}
	c.meterProvider = bc.meterProvider
	return c, nil
}

// AttemptOutcome is how one attempt of a [Failover] call ended.
type AttemptOutcome int8

const (
	// AttemptSuccess: the provider returned a value.
	AttemptSuccess AttemptOutcome = iota
	// AttemptFailure: the provider failed (an error that is not a final
	// answer, or the attempt timed out), so the next provider was asked;
	// or the caller's deadline expired during the attempt.
	AttemptFailure
	// AttemptFinal: the provider gave a final answer (see [Final]),
	// returned to the caller.
	AttemptFinal
	// AttemptSkipped: the provider's breaker rejected the call, so the
	// provider was not called.
	AttemptSkipped
	// AttemptCancelled: the attempt was abandoned, because the caller's
	// context was cancelled or another provider answered first (see
	// [WithHedge]). It says nothing about the provider.
	AttemptCancelled

	numAttemptOutcomes = iota
)

var attemptOutcomeNames = [numAttemptOutcomes]string{"success", "failure", "final", "skipped", "cancelled"}

// String returns the outcome as it appears in metrics: "success",
// "failure", "final", "skipped" or "cancelled".
func (o AttemptOutcome) String() string {
	if o >= 0 && o < numAttemptOutcomes {
		return attemptOutcomeNames[o]
	}
	return fmt.Sprintf("AttemptOutcome(%d)", int8(o))
}

// Attempt is one provider's part in a [Failover] call.
type Attempt struct {
	Provider string
	Outcome  AttemptOutcome
	// Err is the provider's error, or the breaker's rejection when the
	// attempt was skipped; nil on success.
	Err error
	// Duration is the time spent in the provider's call; 0 when skipped.
	Duration time.Duration
}

// resultInline is how many attempts a Result holds without allocating.
const resultInline = 4

// Result is the outcome of a [Failover] call.
type Result[T any] struct {
	// Value is what the provider that answered returned: its value, or
	// whatever it returned with a final answer. It is the zero value when
	// no provider answered.
	Value T
	// Provider names the provider that answered, with a value or a final
	// answer; "" when none did.
	Provider string

	n      int
	inline [resultInline]Attempt
	all    []Attempt // every attempt, once there are more than fit inline
}

// Attempts lists the call's attempts in the order of the providers: those
// that failed or were skipped before the one that answered, the one that
// answered, and with hedging those that were cancelled. The slice shares
// memory with r.
func (r *Result[T]) Attempts() []Attempt {
	if r.all != nil {
		return r.all
	}
	return r.inline[:r.n:r.n]
}

func (r *Result[T]) add(a Attempt) {
	switch {
	case r.all != nil:
		r.all = append(r.all, a)
	case r.n < resultInline:
		r.inline[r.n] = a
		r.n++
	default:
		r.all = append(append(make([]Attempt, 0, 2*resultInline), r.inline[:]...), a)
	}
}

// Execute makes one call through the failover: call is called with the
// name of each provider to ask, in order, until one serves or gives a
// final answer (see [Failover]). call must return soon after its context
// is done: Execute waits for it.
//
// The error is nil when a provider served, the provider's error for a
// final answer, ctx.Err() when the caller's context ended the call, and
// otherwise one matching [ErrAllFailed]. The Result is filled in every
// case. A panic in call counts as a failure of the provider and is raised
// again in the caller's goroutine (with hedging, once the other attempts
// have returned).
func (f *Failover[T]) Execute(ctx context.Context, call func(ctx context.Context, provider string) (T, error)) (Result[T], error) {
	if err := ctx.Err(); err != nil {
		return Result[T]{}, err
	}
	if f.hedge > 0 {
		return f.executeHedged(ctx, call)
	}
	var (
		res              Result[T]
		failed, rejected error
	)
	for i := range f.providers {
		p := &f.providers[i]
		actx, cancel := ctx, context.CancelFunc(nil)
		if f.timeout > 0 {
			actx, cancel = context.WithTimeout(ctx, f.timeout)
		}
		v, a, made := f.attempt(ctx, actx, p, call)
		if cancel != nil {
			cancel()
		}
		if !made {
			return res, ctx.Err()
		}
		res.add(a)
		f.count(ctx, p, a.Outcome)
		switch a.Outcome {
		case AttemptSuccess, AttemptFinal:
			res.Value, res.Provider = v, p.name
			return res, a.Err
		case AttemptSkipped:
			rejected = a.Err
		default:
			failed = a.Err
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
	}
	return res, f.allFailed(&res, failed, rejected)
}

// attempt asks provider p through its breaker under actx, the attempt's
// context within the caller's ctx. made is false when the caller's context
// ended the call before the provider could be asked.
func (f *Failover[T]) attempt(ctx, actx context.Context, p *failoverProvider[T], call func(context.Context, string) (T, error)) (_ T, a Attempt, made bool) {
	a.Provider = p.name
	var (
		called    bool
		final     error
		cancelled bool
		start     time.Duration // since attemptEpoch
	)
	v, err := p.breaker.Execute(actx, func(ctx context.Context) (T, error) {
		called = true
		start = time.Since(attemptEpoch)
		v, err := call(ctx, p.name)
		if err != nil && f.isFinal(err) {
			// The provider answered correctly: a success for its breaker.
			final = err
			return v, nil
		}
		// The same test the breaker makes right after the call.
		cancelled = err != nil && errors.Is(ctx.Err(), context.Canceled)
		return v, err
	})
	if !called {
		a.Err = err
		switch {
		case errors.Is(err, ErrOpen):
			a.Outcome = AttemptSkipped
		case ctx.Err() != nil:
			return v, a, false
		case errors.Is(err, context.Canceled):
			a.Outcome = AttemptCancelled // a hedge that lost before it began
		default:
			a.Outcome = AttemptFailure // the attempt's time ran out before it began
		}
		return v, a, true
	}
	a.Duration = time.Since(attemptEpoch) - start
	switch {
	case final != nil:
		a.Outcome, a.Err = AttemptFinal, final
	case err == nil:
		a.Outcome = AttemptSuccess
	case cancelled:
		a.Outcome, a.Err = AttemptCancelled, err
	default:
		a.Outcome, a.Err = AttemptFailure, err
	}
	return v, a, true
}

// attemptEpoch anchors the timing of attempts: time.Since on a time with a
// monotonic reading reads only the monotonic clock, which costs a fraction
// of time.Now on some machines.
var attemptEpoch = time.Now()

func (f *Failover[T]) isFinal(err error) bool {
	return errors.Is(err, ErrFinal) || (f.final != nil && f.final(err))
}

func (f *Failover[T]) count(ctx context.Context, p *failoverProvider[T], o AttemptOutcome) {
	f.attempts.Add(ctx, 1, p.metric[o]...)
}

// hedgeAnswer is what an attempt's goroutine reports.
type hedgeAnswer[T any] struct {
	i        int // the provider's index
	v        T
	a        Attempt
	made     bool
	panicked bool
	panicVal any
}

// executeHedged is Execute with hedging: every attempt runs in its own
// goroutine, started in provider order when the previous one failed or was
// rejected, or when hedge has passed since the last start without an
// answer.
func (f *Failover[T]) executeHedged(ctx context.Context, call func(context.Context, string) (T, error)) (Result[T], error) {
	n := len(f.providers)
	var (
		answers          = make(chan hedgeAnswer[T], n)
		cancels          = make([]context.CancelFunc, n)
		attempts         = make([]Attempt, n)
		made             = make([]bool, n)
		next, inflight   int
		failed, rejected error
	)
	launch := func() {
		i := next
		next++
		inflight++
		p := &f.providers[i]
		var actx context.Context
		if f.timeout > 0 {
			actx, cancels[i] = context.WithTimeout(ctx, f.timeout)
		} else {
			actx, cancels[i] = context.WithCancel(ctx)
		}
		go func() {
			ans := hedgeAnswer[T]{i: i}
			func() {
				defer func() {
					if r := recover(); r != nil {
						ans.panicked, ans.panicVal = true, r
						ans.a = Attempt{Provider: p.name, Outcome: AttemptFailure, Err: fmt.Errorf("panic: %v", r)}
						ans.made = true
					}
				}()
				ans.v, ans.a, ans.made = f.attempt(ctx, actx, p, call)
			}()
			answers <- ans
		}()
	}
	receive := func(ans hedgeAnswer[T]) {
		inflight--
		if ans.made {
			attempts[ans.i], made[ans.i] = ans.a, true
			f.count(ctx, &f.providers[ans.i], ans.a.Outcome)
		}
	}
	// finish cancels the attempts still in flight, waits for them, and
	// fills in the result.
	finish := func(winner *hedgeAnswer[T]) Result[T] {
		for i := range next {
			cancels[i]()
		}
		for inflight > 0 {
			receive(<-answers)
		}
		var res Result[T]
		for i := range next {
			if made[i] {
				res.add(attempts[i])
			}
		}
		if winner != nil {
			res.Value, res.Provider = winner.v, f.providers[winner.i].name
		}
		return res
	}

	launch()
	timer := time.NewTimer(f.hedge)
	defer timer.Stop()
	for inflight > 0 {
		select {
		case ans := <-answers:
			receive(ans)
			if ans.panicked {
				finish(nil)
				panic(ans.panicVal)
			}
			if ans.made {
				switch ans.a.Outcome {
				case AttemptSuccess, AttemptFinal:
					return finish(&ans), ans.a.Err
				case AttemptSkipped:
					rejected = ans.a.Err
				case AttemptFailure:
					failed = ans.a.Err
				}
			}
			if err := ctx.Err(); err != nil {
				return finish(nil), err
			}
			if next < n {
				launch()
				timer.Reset(f.hedge)
			}
		case <-timer.C:
			if next < n {
				launch()
				timer.Reset(f.hedge)
			}
		case <-ctx.Done():
			return finish(nil), ctx.Err()
		}
	}
	res := finish(nil)
	return res, f.allFailed(&res, failed, rejected)
}

// allFailed is the error of a call no provider served. The decisive error
// is the last provider failure or, when no provider was called, the last
// rejection.
func (f *Failover[T]) allFailed(res *Result[T], failed, rejected error) error {
	last := failed
	if last == nil {
		last = rejected
	}
	var b strings.Builder
	b.WriteString("failover ")
	b.WriteString(f.name)
	b.WriteString(": all providers failed")
	for i, a := range res.Attempts() {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(a.Provider)
		b.WriteString(": ")
		if a.Err != nil {
			b.WriteString(a.Err.Error())
		} else {
			b.WriteString(a.Outcome.String())
		}
	}
	e := &allFailedError{msg: b.String(), errs: [2]error{ErrAllFailed, last}}
	if last == nil {
		e.n = 1
	} else {
		e.n = 2
	}
	return e
}

type allFailedError struct {
	msg  string
	errs [2]error // ErrAllFailed and the decisive error
	n    int
}

func (e *allFailedError) Error() string   { return e.msg }
func (e *allFailedError) Unwrap() []error { return e.errs[:e.n] }
