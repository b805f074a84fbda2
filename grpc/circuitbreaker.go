package bulwarkgrpc

import (
	"context"
	"errors"
	"fmt"

	"github.com/bulwarkgo/bulwark/breaker"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// OpenError is the error of a call that a breaker refused: it was not
// sent. Its status is codes.Unavailable with a message that names the
// breaker, so code that looks only at status codes sees a dependency that
// is unavailable, and it matches [breaker.ErrOpen] (and, from a half-open
// breaker whose probes are all out, [breaker.ErrTooManyRequests]) with
// errors.Is.
type OpenError struct {
	// Breaker is the name of the breaker that refused the call.
	Breaker string
	// Err is the breaker's own error.
	Err error
}

// Error returns the error as gRPC writes a status error:
// "rpc error: code = Unavailable desc = breaker grpc/shop.v1.Shop/Pay: open".
func (e *OpenError) Error() string {
	return "rpc error: code = Unavailable desc = " + e.message()
}

func (e *OpenError) message() string {
	if e.Err == nil {
		return "breaker " + e.Breaker + ": open"
	}
	return e.Err.Error() // the breaker's error names it
}

// GRPCStatus returns the status of the error, for [status.FromError] and
// [status.Code]: codes.Unavailable.
func (e *OpenError) GRPCStatus() *status.Status {
	return status.New(codes.Unavailable, e.message())
}

// Unwrap returns the breaker's error.
func (e *OpenError) Unwrap() error { return e.Err }

// Is reports whether target is [breaker.ErrOpen], which every refusal
// matches, whatever Err is.
func (e *OpenError) Is(target error) bool { return target == breaker.ErrOpen }

// callError turns the error of a breaker that did not make a call into
// what the caller gets: an OpenError for a refusal, the status of a
// context that ended.
func callError(b *breaker.Breaker[struct{}], err error) error {
	switch {
	case errors.Is(err, breaker.ErrOpen):
		return &OpenError{Breaker: b.Name(), Err: err}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return contextStatus(err)
	}
	return err
}

// BreakerByMethod keys a [CircuitBreaker]'s breakers by method, as
// "package.Service/Method" (the full method name without its leading
// slash): one failing method is cut off while the service's others are
// still called. It is the default.
//
// The key leaves the connection out: a CircuitBreaker whose interceptors
// are given to connections to several targets has one breaker per method
// for all of them, and one target's failures cut the method off on every
// connection. Give each connection a CircuitBreaker of its own, or key by
// [BreakerByTarget], or by a function of both (method and cc.Target()).
func BreakerByMethod(method string, _ *grpc.ClientConn) string {
	if len(method) > 0 && method[0] == '/' {
		return method[1:]
	}
	return method
}

// BreakerByTarget keys a [CircuitBreaker]'s breakers by the target of the
// connection, as given to grpc.NewClient: a server that is down is cut off
// as a whole, whichever method fails.
func BreakerByTarget(_ string, cc *grpc.ClientConn) string { return cc.Target() }

// CircuitBreakerOption configures a [CircuitBreaker]. [WithFailureCodes]
// is one too.
type CircuitBreakerOption interface{ applyCircuitBreaker(*circuitBreakerConfig) }

type circuitBreakerConfig struct {
	clientConfig
	group *breaker.Group[struct{}]
	one   *breaker.Breaker[struct{}]
	key   func(method string, cc *grpc.ClientConn) string
}

type circuitBreakerOption func(*circuitBreakerConfig)

func (f circuitBreakerOption) applyCircuitBreaker(c *circuitBreakerConfig) { f(c) }

// WithGroup sets the group whose breakers a [CircuitBreaker] uses, one per
// key (see [WithBreakerKey]); through it the caller sets the breakers'
// options (breaker.WithBreakerOptions: trip policy, open timeout, meter
// provider), bounds the number of keys, and reads or controls each key's
// breaker. The default is breaker.NewGroup[struct{}]("grpc") with every
// default: a method's breaker, named "grpc/package.Service/Method", opens
// after 5 failures in a row and probes after 30 seconds.
func WithGroup(g *breaker.Group[struct{}]) CircuitBreakerOption {
	return circuitBreakerOption(func(c *circuitBreakerConfig) {
		if g == nil {
			c.fail(configError("WithGroup", "must not be nil", nil))
		}
		c.group = g
	})
}

// WithBreaker puts every call through the one breaker b, for a connection
// to one dependency that fails as a whole. It excludes [WithGroup] and
// [WithBreakerKey]. The default is a breaker per method (see WithGroup).
func WithBreaker(b *breaker.Breaker[struct{}]) CircuitBreakerOption {
	return circuitBreakerOption(func(c *circuitBreakerConfig) {
		if b == nil {
			c.fail(configError("WithBreaker", "must not be nil", nil))
		}
		c.one = b
	})
}

// WithBreakerKey sets which breaker of the group a call goes through:
// [BreakerByMethod] (the default), [BreakerByTarget], or a function of
// your own, such as the service name. Keep the number of keys bounded by
// the dependencies and their methods.
func WithBreakerKey(key func(method string, cc *grpc.ClientConn) string) CircuitBreakerOption {
	return circuitBreakerOption(func(c *circuitBreakerConfig) {
		if key == nil {
			c.fail(configError("WithBreakerKey", "must not be nil", nil))
		}
		c.key = key
	})
}

// CircuitBreaker is a client interceptor that sends each call through a
// circuit breaker ([breaker.Breaker]): one per method by default, one per
// target, or one for the whole connection.
//
// A call that ends with one of the failure codes (by default Unavailable,
// DeadlineExceeded and Internal; see [WithFailureCodes]) counts against
// its breaker; any other answer (OK, InvalidArgument, NotFound,
// AlreadyExists, PermissionDenied, FailedPrecondition, ResourceExhausted
// and the rest) counts for it: the server answered. So do, whatever their
// code, the refusals of this package's server interceptors (a feature off
// for this caller, a quota, a waiting room) and the errors gRPC raises in
// the client before the call leaves (metadata it refuses, a request it
// cannot marshal), which the server never saw; see the package
// documentation, "What the client counts against a server". A call its
// caller cancelled is not counted. The caller always gets the call's own
// result.
//
// While a breaker is open, calls are refused at once without reaching the
// server, with an [*OpenError]: codes.Unavailable, a message naming the
// breaker, and errors.Is(err, breaker.ErrOpen).
//
// A stream is admitted when it opens and counted as soon as the server has
// shown how it is, not when the stream ends: at its first response (the
// first message RecvMsg returns, or the header when the caller calls
// Header), a success; by its final status if it ends before that, as
// RecvMsg returns it (io.EOF is a success); by its context if that ends
// first. Its latency, for a SlowCallRate trip policy, is the time from
// opening to that first response, which includes any time the client
// takes to send what the server waits for. A half-open breaker's probe
// is thus given back once the server answers, however long the stream
// lives, and what happens to the stream after that is not counted. A
// stream that gets no response and is neither read to its end nor
// cancelled is never counted; gRPC leaks it anyway.
//
// A CircuitBreaker is safe for concurrent use. Through a closed breaker a
// unary call costs no allocation beyond gRPC's own.
type CircuitBreaker struct {
	group   *breaker.Group[struct{}]
	one     *breaker.Breaker[struct{}]
	key     func(method string, cc *grpc.ClientConn) string
	failure failureCodes
}

// NewCircuitBreaker returns a CircuitBreaker; without options, it has a
// breaker per method with the defaults of [WithGroup]. Errors match
// [ErrInvalidConfig] and name the bad option.
func NewCircuitBreaker(opts ...CircuitBreakerOption) (*CircuitBreaker, error) {
	c := circuitBreakerConfig{clientConfig: newClientConfig()}
	for i, o := range opts {
		if o == nil {
			return nil, configError(fmt.Sprintf("opts[%d]", i), "must not be nil", nil)
		}
		o.applyCircuitBreaker(&c)
	}
	switch {
	case c.err != nil:
		return nil, c.err
	case c.one != nil && c.group != nil:
		return nil, configError("WithBreaker", "cannot be combined with WithGroup", nil)
	case c.one != nil && c.key != nil:
		return nil, configError("WithBreaker", "cannot be combined with WithBreakerKey", nil)
	}
	if c.one == nil && c.group == nil {
		c.group = breaker.NewGroup[struct{}]("grpc")
	}
	if c.key == nil {
		c.key = BreakerByMethod
	}
	return &CircuitBreaker{group: c.group, one: c.one, key: c.key, failure: c.failure}, nil
}

// Group returns the group of breakers the CircuitBreaker uses, to read or
// control the breaker of a key: cb.Group().State("shop.v1.Shop/Pay").
// It is nil when [WithBreaker] gave one breaker.
func (c *CircuitBreaker) Group() *breaker.Group[struct{}] { return c.group }

func (c *CircuitBreaker) breakerFor(method string, cc *grpc.ClientConn) *breaker.Breaker[struct{}] {
	if c.one != nil {
		return c.one
	}
	return c.group.Get(c.key(method, cc))
}

// Unary returns the interceptor for unary calls.
func (c *CircuitBreaker) Unary() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		b := c.breakerFor(method, cc)
		var (
			called  bool
			callErr error
		)
		_, err := b.Execute(ctx, func(ctx context.Context) (struct{}, error) {
			called = true
			callErr = invoker(ctx, method, req, reply, cc, opts...)
			return struct{}{}, c.failure.report(ctx, req, opts, callErr)
		})
		if called {
			return callErr
		}
		return callError(b, err)
	}
}

// Stream returns the interceptor for streams.
func (c *CircuitBreaker) Stream() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		b := c.breakerFor(method, cc)
		done, err := b.Allow(ctx)
		if err != nil {
			return nil, callError(b, err)
		}
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			done(c.failure.report(ctx, nil, opts, err))
			return nil, err
		}
		return newBreakerStream(ctx, cs, opts, done, &c.failure), nil
	}
}
