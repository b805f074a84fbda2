package bulwarkgrpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/bulwarkgo/bulwark/limiter"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
)

// A KeyFunc names the bucket a call is counted against: the method, the
// client's address, a user id from the metadata. fullMethod is
// "/package.Service/Method". An error means the call has no key; it goes
// to the [RateLimit]'s error policy. A KeyFunc that finds nothing to key by
// returns an error matching [limiter.ErrNoKey].
//
// Keep the number of keys bounded by who calls, not by what they send:
// a Local limiter remembers each key for a while.
type KeyFunc func(ctx context.Context, fullMethod string) (string, error)

// KeyByMethod keys calls by their full method name: one bucket per
// method, shared by every caller. It never fails and costs no allocation.
func KeyByMethod(_ context.Context, fullMethod string) (string, error) {
	return fullMethod, nil
}

var errNoPeerIP = fmt.Errorf("%w: the peer has no IP address", limiter.ErrNoKey)

// KeyByPeer keys calls by the IP address of the peer that sent them, in
// canonical text ("192.0.2.1", "2001:db8::1"; an IPv4-mapped address is
// unmapped), without the port. A peer that is not an IP address (a Unix
// socket, an in-memory connection) gets an error matching
// [limiter.ErrNoKey].
//
// Behind a proxy or a load balancer that ends connections, every call
// comes from the proxy: key by a metadata value the proxy sets instead
// ([KeyByMetadata]).
func KeyByPeer(ctx context.Context, _ string) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "", errNoPeerIP
	}
	var ip netip.Addr
	if tcp, ok := p.Addr.(*net.TCPAddr); ok {
		ip, _ = netip.AddrFromSlice(tcp.IP)
	} else if ap, err := netip.ParseAddrPort(p.Addr.String()); err == nil {
		ip = ap.Addr()
	}
	if !ip.IsValid() {
		return "", errNoPeerIP
	}
	return ip.Unmap().WithZone("").String(), nil
}

// KeyByMetadata keys calls by the first value of the named incoming
// metadata key, such as a user id or an API key set by an authenticating
// gateway. A call without it, or with an empty value, gets an error
// matching [limiter.ErrNoKey]; combine with [KeyOr] to fall back to
// another key. The name is matched without regard to case.
//
// Clients choose their own metadata: key by a value only when something in
// front of the service checks it, or a client can send a fresh value per
// call and never be limited.
//
// It panics if name is empty, as [limiter.KeyByHeader] does.
func KeyByMetadata(name string) KeyFunc {
	if name == "" {
		panic(configError("KeyByMetadata name", "must not be empty", `""`))
	}
	name = strings.ToLower(name)
	missing := fmt.Errorf("%w: metadata %s is missing", limiter.ErrNoKey, name)
	return func(ctx context.Context, _ string) (string, error) {
		if v := incoming(ctx, name); v != "" {
			return v, nil
		}
		return "", missing
	}
}

// KeyOr returns a KeyFunc that uses first and, when first's error matches
// [limiter.ErrNoKey], fallback. Other errors from first are returned as
// they are.
func KeyOr(first, fallback KeyFunc) KeyFunc {
	return func(ctx context.Context, fullMethod string) (string, error) {
		k, err := first(ctx, fullMethod)
		if errors.Is(err, limiter.ErrNoKey) {
			return fallback(ctx, fullMethod)
		}
		return k, err
	}
}

// RateLimitOption configures a [RateLimit]. [WithFilter] and [WithMessage]
// are RateLimitOptions too.
type RateLimitOption interface{ applyRateLimit(*rateLimitConfig) }

type rateLimitConfig struct {
	serverConfig
	errorMessage string
	policy       limiter.ErrorPolicy
	onError      func(ctx context.Context, fullMethod string, err error)
	onErrorSet   bool
}

type rateLimitOption func(*rateLimitConfig)

func (f rateLimitOption) applyRateLimit(c *rateLimitConfig) { f(c) }

// WithErrorPolicy sets what happens to a call for which no decision could
// be made: the key function or the limiter returned an error.
// [limiter.ServeOnError], the default, serves it unlimited;
// [limiter.RejectOnError] refuses it with codes.Unavailable and an
// errdetails.ErrorInfo with reason [ReasonLimiterUnavailable], without a
// retry delay (nobody knows when the limiter will decide again). The
// refusal may concern one caller only (a KeyByMetadata key the call does
// not carry), so Bulwark's client side counts it as an answer, not a
// failure of the server, despite its code. Either way a call whose own
// context is done is refused with codes.Canceled or
// codes.DeadlineExceeded.
func WithErrorPolicy(p limiter.ErrorPolicy) RateLimitOption {
	return rateLimitOption(func(c *rateLimitConfig) {
		if p != limiter.ServeOnError && p != limiter.RejectOnError {
			c.fail(configError("WithErrorPolicy", "must be ServeOnError or RejectOnError", p))
		}
		c.policy = p
	})
}

// WithErrorMessage sets the status message of a call refused under
// [limiter.RejectOnError]. The default is [limiter.DefaultErrorMessage].
func WithErrorMessage(msg string) RateLimitOption {
	return rateLimitOption(func(c *rateLimitConfig) { c.errorMessage = msg })
}

// WithOnError sets a function called with every error from the key
// function or the limiter, before the error policy applies; use it to log
// or count them, since under ServeOnError they are otherwise silent. It is
// not called for a call whose context is done. f must be safe for
// concurrent use. The default is none.
func WithOnError(f func(ctx context.Context, fullMethod string, err error)) RateLimitOption {
	return rateLimitOption(func(c *rateLimitConfig) {
		if f == nil {
			c.fail(configError("WithOnError", "must not be nil", nil))
		}
		c.onError, c.onErrorSet = f, true
	})
}

// RateLimit limits the calls a server takes with any [limiter.Limiter],
// one bucket per key ([KeyFunc]): per method, per client address, per user.
// A stream takes one token when it opens, not one per message.
//
// A refused call gets codes.ResourceExhausted, with the message of
// [WithMessage] and, in the status details, an errdetails.RetryInfo whose
// delay is the decision's RetryAfter, an errdetails.QuotaFailure whose
// violation names the key and the limit, and an errdetails.ErrorInfo with
// reason [ReasonRateLimited]. The trailer grpc-retry-pushback-ms carries
// the same delay, so a client whose retry policy covers ResourceExhausted
// waits that long before it tries again.
//
// A limiter that cannot reach its backend decides by its own policy:
// [limiter.Redis] follows its OutagePolicy (by default an in-process limit,
// FallbackLocal(1)) and returns no error. When a limiter or the key
// function does return an error, [WithErrorPolicy] says what happens;
// by default the call is served.
//
// A RateLimit is safe for concurrent use. With a [limiter.Local] and a key
// that allocates nothing (the method, a metadata value gRPC has already
// copied), an allowed call costs no allocation.
type RateLimit struct {
	limiter     limiter.Limiter
	key         KeyFunc
	cfg         rateLimitConfig
	unavailable error
}

// NewRateLimit returns a RateLimit that limits calls with l, keyed by key.
// Errors match [ErrInvalidConfig] and name the bad argument or option.
func NewRateLimit(l limiter.Limiter, key KeyFunc, opts ...RateLimitOption) (*RateLimit, error) {
	c := rateLimitConfig{
		serverConfig: serverConfig{message: limiter.DefaultMessage},
		errorMessage: limiter.DefaultErrorMessage,
	}
	for i, o := range opts {
		if o == nil {
			return nil, configError(fmt.Sprintf("opts[%d]", i), "must not be nil", nil)
		}
		o.applyRateLimit(&c)
	}
	switch {
	case c.err != nil:
		return nil, c.err
	case l == nil:
		return nil, configError("NewRateLimit l", "must not be nil", nil)
	case key == nil:
		return nil, configError("NewRateLimit key", "must not be nil", nil)
	}
	return &RateLimit{
		limiter:     l,
		key:         key,
		cfg:         c,
		unavailable: refusal(codes.Unavailable, c.errorMessage, ReasonLimiterUnavailable, nil, 0),
	}, nil
}

// Unary returns the interceptor for unary calls.
func (rl *RateLimit) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !rl.cfg.skip(info.FullMethod) {
			if pushback, err := rl.check(ctx, info.FullMethod); err != nil {
				setPushback(ctx, nil, pushback)
				return nil, err
			}
		}
		return handler(ctx, req)
	}
}

// Stream returns the interceptor for streams.
func (rl *RateLimit) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !rl.cfg.skip(info.FullMethod) {
			if pushback, err := rl.check(ss.Context(), info.FullMethod); err != nil {
				setPushback(ss.Context(), ss, pushback)
				return err
			}
		}
		return handler(srv, ss)
	}
}

// check decides a call; a refusal is a status error and its pushback.
func (rl *RateLimit) check(ctx context.Context, method string) (pushback string, err error) {
	key, err := rl.key(ctx, method)
	var d limiter.Decision
	if err == nil {
		d, err = rl.limiter.Allow(ctx, key)
	}
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return "", contextStatus(cerr)
		}
		if rl.cfg.onError != nil {
			rl.cfg.onError(ctx, method, err)
		}
		if rl.cfg.policy == limiter.RejectOnError {
			return "", rl.unavailable
		}
		return "", nil
	}
	if d.Allowed {
		return "", nil
	}
	desc := "rate limit exceeded"
	if d.Limit != (limiter.Limit{}) {
		desc = "rate limit " + d.Limit.String() + " exceeded"
	}
	return pushbackFor(d.RetryAfter), refusal(codes.ResourceExhausted, rl.cfg.message, ReasonRateLimited, nil, d.RetryAfter,
		&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: key, Description: desc}}})
}
