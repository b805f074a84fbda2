package bulwarkgrpc

import (
	"fmt"

	"google.golang.org/grpc/codes"
)

// serverConfig holds the options every server interceptor but the Guard
// shares.
type serverConfig struct {
	filter     func(fullMethod string) bool
	message    string
	messageSet bool
	err        error // the first invalid option
}

func (c *serverConfig) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

// skip reports whether the filter leaves method alone.
func (c *serverConfig) skip(method string) bool {
	return c.filter != nil && !c.filter(method)
}

// Option configures any of [NewRateLimit], [NewConcurrencyLimit] and
// [NewWaitingRoom].
type Option interface {
	RateLimitOption
	ConcurrencyLimitOption
	WaitingRoomOption
}

type serverOption func(*serverConfig)

func (f serverOption) applyRateLimit(c *rateLimitConfig)     { f(&c.serverConfig) }
func (f serverOption) applyConcurrency(c *concurrencyConfig) { f(&c.serverConfig) }
func (f serverOption) applyWaitingRoom(c *waitingRoomConfig) { f(&c.serverConfig) }

// WithFilter makes the interceptor act only on the calls to methods for
// which f reports true; the others pass through untouched. f gets the full
// method name, "/package.Service/Method". Use it to keep health checks and
// reflection out of a limit, or to put a waiting room in front of one
// method. The default is every method. f must be safe for concurrent use
// and should be cheap: it runs on every call.
func WithFilter(f func(fullMethod string) bool) Option {
	return serverOption(func(c *serverConfig) {
		if f == nil {
			c.fail(configError("WithFilter", "must not be nil", nil))
		}
		c.filter = f
	})
}

// WithMessage sets the status message of a refused call, the text a
// client may show its user; write it in the users' language. The defaults
// are [limiter.DefaultMessage] for a [RateLimit], [DefaultShedMessage] for
// a [ConcurrencyLimit], and for a [WaitingRoom] one sentence per refusal
// (see [WithRoomMessage], which wins over WithMessage).
func WithMessage(msg string) Option {
	return serverOption(func(c *serverConfig) { c.message, c.messageSet = msg, true })
}

// clientConfig holds the options the client side shares.
type clientConfig struct {
	failure failureCodes
	err     error
}

func newClientConfig() clientConfig {
	return clientConfig{failure: defaultFailureCodes}
}

func (c *clientConfig) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

// ClientOption configures both [NewCircuitBreaker] and [NewFailover].
type ClientOption interface {
	CircuitBreakerOption
	FailoverOption
}

type clientOption func(*clientConfig)

func (f clientOption) applyCircuitBreaker(c *circuitBreakerConfig) { f(&c.clientConfig) }
func (f clientOption) applyFailover(c *failoverConfig)             { f(&c.clientConfig) }

// WithFailureCodes sets the status codes that count as failures of the
// dependency: for a [CircuitBreaker], calls that count toward opening the
// breaker; for a [Failover], answers after which the next target is asked.
// Every other code, OK included, is an answer the dependency gave: a
// success for its breaker and, for a Failover, the final answer. It must
// name at least one code. The default is Unavailable (the server could not
// be reached, or is shutting down or overloaded), DeadlineExceeded (it did
// not answer in the caller's time) and Internal (it broke).
//
// Whatever the codes, the refusals of this package's server interceptors,
// all but those with [ReasonQueueUnavailable], and the errors gRPC raises
// in the client before a call leaves are answers, not failures: see the
// package documentation, "What the client counts against a server".
//
// Left out on purpose: ResourceExhausted, because a server that refuses a
// caller over its quota or holds it back in a waiting room is up and
// deciding, and one caller's quota must not open a breaker that every
// caller shares; Unknown, because gRPC gives it to any plain Go error a
// handler returns, often an answer ("no such order") written without a
// status code; and Canceled, since a call its caller cancelled says nothing
// about the server (a breaker ignores it anyway). Add them if your servers
// use them otherwise.
func WithFailureCodes(cs ...codes.Code) ClientOption {
	return clientOption(func(c *clientConfig) {
		if len(cs) == 0 {
			c.fail(configError("WithFailureCodes", "must name at least one code", nil))
			return
		}
		var f failureCodes
		for i, code := range cs {
			if code == codes.OK || int(code) >= len(f) {
				c.fail(configError(fmt.Sprintf("WithFailureCodes[%d]", i), "must be a code from Canceled to Unauthenticated", code))
				return
			}
			f[code] = true
		}
		c.failure = f
	})
}
