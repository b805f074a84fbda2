package breaker

import (
	"fmt"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// Option configures a breaker. The defaults are listed with each option.
type Option interface{ apply(*config) }

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	policy        TripPolicy
	openTimeout   time.Duration
	jitter        float64
	probes        int
	classifier    Classifier
	listeners     []func(StateChange)
	meterProvider metric.MeterProvider

	// For breakers made by a Group: the group's instruments, used instead
	// of the breaker's own (and so without a state gauge).
	shared       *instruments
	noStateGauge bool

	fleet *Fleet

	err error // the first invalid option
}

func newConfig(opts []Option) (config, error) {
	c := config{
		policy:      ConsecutiveFailures(5),
		openTimeout: 30 * time.Second,
		probes:      1,
		classifier:  defaultClassifier,
	}
	for i, o := range opts {
		if o == nil {
			return c, configError(fmt.Sprintf("opts[%d]", i), "must not be nil", nil)
		}
		o.apply(&c)
	}
	if c.err != nil {
		return c, c.err
	}
	switch {
	case c.policy == nil:
		return c, configError("WithTripPolicy", "must not be nil", nil)
	case c.openTimeout <= 0:
		return c, configError("WithOpenTimeout", "must be positive", c.openTimeout)
	case !(c.jitter >= 0 && c.jitter <= 1):
		return c, configError("WithJitter", "must be in [0, 1]", c.jitter)
	case c.probes < 1 || c.probes > 1<<20:
		return c, configError("WithHalfOpenProbes", "must be between 1 and 1048576", c.probes)
	case c.classifier == nil:
		return c, configError("WithClassifier", "must not be nil", nil)
	}
	return c, c.policy.validate()
}

func configError(field, problem string, value any) error {
	if value == nil {
		return fmt.Errorf("%w: %s %s", ErrInvalidConfig, field, problem)
	}
	return fmt.Errorf("%w: %s %s, got %v", ErrInvalidConfig, field, problem, value)
}

// WithTripPolicy sets when a closed breaker opens. The default is
// ConsecutiveFailures(5).
func WithTripPolicy(p TripPolicy) Option {
	return optionFunc(func(c *config) { c.policy = p })
}

// WithOpenTimeout sets how long the breaker stays open before it lets
// probes through. The default is 30 seconds.
func WithOpenTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) { c.openTimeout = d })
}

// WithJitter lengthens the open timeout of each breaker by a random share of
// up to fraction (0 to 1) of it, drawn once per breaker (and again on
// Reset), so instances of a fleet that opened together do not all probe the
// dependency at the same moment. The default is 0.
func WithJitter(fraction float64) Option {
	return optionFunc(func(c *config) { c.jitter = fraction })
}

// WithHalfOpenProbes sets how many calls a half-open breaker lets through
// at once; it closes when that many have succeeded in a row. The default
// is 1.
func WithHalfOpenProbes(n int) Option {
	return optionFunc(func(c *config) { c.probes = n })
}

// WithClassifier sets how a call's error is counted. The default counts nil
// as a success and any error as a failure. Return Ignored for errors that
// say nothing about the dependency's health (a validation error of the
// caller's own), Success for answers it gave correctly (a declined card).
func WithClassifier(cl Classifier) Option {
	return optionFunc(func(c *config) { c.classifier = cl })
}

// WithListener adds a function called for each change of state. Listeners
// run in the goroutine of a call that follows the change, never under a
// lock, one change at a time and in order; a listener may call the
// breaker's methods.
func WithListener(f func(StateChange)) Option {
	return optionFunc(func(c *config) {
		if f == nil {
			c.fail(configError("WithListener", "must not be nil", nil))
			return
		}
		c.listeners = append(c.listeners, f)
	})
}

// WithMeterProvider sets where the breaker's metrics go. The default is the
// global provider from go.opentelemetry.io/otel at construction.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(c *config) { c.meterProvider = mp })
}

func (c *config) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}
