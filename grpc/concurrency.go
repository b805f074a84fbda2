package bulwarkgrpc

import (
	"context"
	"errors"
	"fmt"

	"github.com/bulwarkgo/bulwark/limiter"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultShedMessage is the status message of a call a [ConcurrencyLimit]
// sheds, unless [WithMessage] says otherwise.
const DefaultShedMessage = "The service is busy. Please try again later."

// ConcurrencyLimitOption configures a [ConcurrencyLimit]. [WithFilter] and
// [WithMessage] are its options.
type ConcurrencyLimitOption interface{ applyConcurrency(*concurrencyConfig) }

type concurrencyConfig struct {
	serverConfig
}

// ConcurrencyLimit bounds the calls a server handles at once with a
// [limiter.Adaptive], whose limit follows the latency it measures: the
// server sheds load before queueing makes every call slow.
//
// A call over the limit is shed at once with codes.ResourceExhausted, the
// message of [WithMessage] and an errdetails.ErrorInfo with reason
// [ReasonOverloaded]; the refusal is built once, so shedding costs no
// allocation. It carries no retry delay: another instance behind the same
// target, which the client's load balancer may pick for a retry, may have
// room now, and the client's own retry policy and backoff decide.
//
// A shed call is an answer to Bulwark's client side, not a failure: it
// does not open a [CircuitBreaker] (the server protects itself, and the
// breaker would cut off the calls it still has room for), and a
// [Failover] returns it rather than send it to its next target. Targets
// of a Failover are other deployments (a backup region), not other
// instances of this one, and sending them the excess would move the
// overload there. To spread load over instances, use the client's load
// balancing and retry policy (with ResourceExhausted among its
// retryableStatusCodes).
//
// Each admitted call's outcome finishes its permit (see
// [limiter.Permit.Finish]): success, and any error that is the handler's
// answer (NotFound, InvalidArgument, a declined payment) releases it with
// the call's latency as a sample; an error with codes.DeadlineExceeded, or
// one matching [context.DeadlineExceeded] or [limiter.ErrLimited], counts
// as dropped, a sign of overload, and lowers the limit; a call whose caller
// cancelled it, or that ends in codes.Canceled, is ignored. A handler that
// panics gives its permit back without a sample.
//
// A stream holds its permit for its whole life, and its duration is a
// latency sample: keep long-lived streams (watches, subscriptions) out with
// [WithFilter], or give them a ConcurrencyLimit of their own.
//
// A ConcurrencyLimit is safe for concurrent use; an admitted call costs no
// allocation.
type ConcurrencyLimit struct {
	adaptive *limiter.Adaptive
	cfg      concurrencyConfig
	shed     error
}

// NewConcurrencyLimit returns a ConcurrencyLimit that admits calls through
// a. Errors match [ErrInvalidConfig] and name the bad argument or option.
func NewConcurrencyLimit(a *limiter.Adaptive, opts ...ConcurrencyLimitOption) (*ConcurrencyLimit, error) {
	c := concurrencyConfig{serverConfig{message: DefaultShedMessage}}
	for i, o := range opts {
		if o == nil {
			return nil, configError(fmt.Sprintf("opts[%d]", i), "must not be nil", nil)
		}
		o.applyConcurrency(&c)
	}
	switch {
	case c.err != nil:
		return nil, c.err
	case a == nil:
		return nil, configError("NewConcurrencyLimit a", "must not be nil", nil)
	}
	return &ConcurrencyLimit{
		adaptive: a,
		cfg:      c,
		shed:     refusal(codes.ResourceExhausted, c.message, ReasonOverloaded, nil, 0),
	}, nil
}

// errPanicked stands for the outcome of a handler that panicked.
var errPanicked = errors.New("bulwarkgrpc: handler panicked")

// Unary returns the interceptor for unary calls.
func (cl *ConcurrencyLimit) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (_ any, err error) {
		if cl.cfg.skip(info.FullMethod) {
			return handler(ctx, req)
		}
		p, err := cl.adaptive.Acquire(ctx)
		if err != nil {
			return nil, cl.refuse(err)
		}
		err = errPanicked
		defer func() { finish(ctx, &p, err) }()
		return handler(ctx, req)
	}
}

// Stream returns the interceptor for streams.
func (cl *ConcurrencyLimit) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		if cl.cfg.skip(info.FullMethod) {
			return handler(srv, ss)
		}
		ctx := ss.Context()
		p, err := cl.adaptive.Acquire(ctx)
		if err != nil {
			return cl.refuse(err)
		}
		err = errPanicked
		defer func() { finish(ctx, &p, err) }()
		return handler(srv, ss)
	}
}

func (cl *ConcurrencyLimit) refuse(err error) error {
	if errors.Is(err, limiter.ErrLimited) {
		return cl.shed
	}
	return contextStatus(err) // Acquire fails otherwise only for a done context
}

// finish finishes p by the outcome of the call in ctx that ended with err.
func finish(ctx context.Context, p *limiter.Permit, err error) {
	switch {
	case err == nil:
		p.Release()
	case err == errPanicked:
		p.Ignore()
	case errors.Is(ctx.Err(), context.Canceled):
		p.Ignore() // the caller stopped; the handler's error says nothing of load
	default:
		switch status.Code(err) {
		case codes.DeadlineExceeded:
			p.Dropped()
		case codes.Canceled:
			p.Ignore()
		default:
			p.Finish(err) // plain context errors and ErrLimited, or a success
		}
	}
}
