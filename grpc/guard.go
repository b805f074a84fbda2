package bulwarkgrpc

import (
	"context"
	"errors"
	"strings"

	"github.com/bulwarkgo/bulwark/degrade"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Guard refuses calls to the methods of a feature that is off, as
// [degrade.Guard] does for HTTP: the recommendations service while
// recommendations are shed, one method for an old app version on one phone
// model.
//
// A call to a guarded method whose feature is off for the call's
// attributes (see [UnaryServerAttributes], which must run before the
// Guard) gets codes.Unavailable. The status message is the feature's
// user-facing message in the caller's locale, for the client to show as it
// is, and the details hold an errdetails.ErrorInfo with reason
// [ReasonDegraded] and the metadata "feature" (its name) and "level"
// ("optional", "important" or "core"). The trailer grpc-retry-pushback-ms
// is -1, which tells gRPC's retry support not to retry the call: a feature
// that is off stays off for a while, and Unavailable is a code retry
// policies commonly name.
//
// The code is Unavailable because that is what the caller's app expects
// for "not now, try later", and what it shows its user the message for;
// FailedPrecondition or PermissionDenied would tell it the request or the
// user is wrong. But Unavailable is also the first of the codes a client
// breaker counts against a server, and a feature may be off for some
// callers only (one device model): Bulwark's own [CircuitBreaker] and
// [Failover] know the refusal by its ErrorInfo and count it as the
// server's answer, never as a failure, so it neither opens the breaker
// every caller shares nor goes to a backup. A client of another kind
// must be taught the same (its classifier looks for [ErrorDomain] and
// [ReasonDegraded]), or it will count these refusals against the server.
//
// Calls to other methods, and to guarded methods whose feature is on,
// pass through; deciding costs no lock and no allocation. A Guard is safe
// for concurrent use.
type Guard struct {
	methods  map[string]degrade.Switch
	services map[string]degrade.Switch
}

// NewGuard returns a Guard of the features of sb, each guarding the
// methods that map to it. A key of features is a full method name,
// "/shop.v1.Recommendations/ForYou", or a service name between slashes,
// "/shop.v1.Recommendations/", for every method of the service; a method's
// own entry wins over its service's. Each value must be a feature of sb.
// Errors match [ErrInvalidConfig] and name the bad argument or entry.
func NewGuard(sb *degrade.Switchboard, features map[string]string) (*Guard, error) {
	if sb == nil {
		return nil, configError("NewGuard sb", "must not be nil", nil)
	}
	if len(features) == 0 {
		return nil, configError("NewGuard features", "must not be empty", nil)
	}
	g := &Guard{methods: make(map[string]degrade.Switch), services: make(map[string]degrade.Switch)}
	for method, feature := range features {
		field := "NewGuard features[" + quote(method) + "]"
		if _, err := sb.Status(feature); err != nil {
			return nil, configError(field, "must be a feature of the switchboard", quote(feature))
		}
		i := strings.LastIndexByte(method, '/')
		switch {
		case len(method) < 3 || method[0] != '/' || i <= 1:
			return nil, configError(field, `must be "/package.Service/Method" or "/package.Service/"`, nil)
		case i == len(method)-1:
			g.services[method] = sb.Switch(feature)
		default:
			g.methods[method] = sb.Switch(feature)
		}
	}
	return g, nil
}

func quote(s string) string { return `"` + s + `"` }

// Unary returns the interceptor for unary calls.
func (g *Guard) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := g.check(ctx, info.FullMethod); err != nil {
			setPushback(ctx, nil, noRetry)
			return nil, err
		}
		return handler(ctx, req)
	}
}

// Stream returns the interceptor for streams.
func (g *Guard) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := g.check(ss.Context(), info.FullMethod); err != nil {
			setPushback(ss.Context(), ss, noRetry)
			return err
		}
		return handler(srv, ss)
	}
}

// check returns the refusal of a call to method, or nil.
func (g *Guard) check(ctx context.Context, method string) error {
	sw, ok := g.methods[method]
	if !ok {
		i := strings.LastIndexByte(method, '/')
		if i < 0 {
			return nil
		}
		if sw, ok = g.services[method[:i+1]]; !ok {
			return nil
		}
	}
	err := sw.Check(ctx)
	if err == nil {
		return nil
	}
	var de *degrade.DegradedError
	if !errors.As(err, &de) {
		return nil // Check returns nothing else; never refuse on a surprise
	}
	return refusal(codes.Unavailable, de.Message, ReasonDegraded,
		map[string]string{"feature": de.Feature, "level": de.Level.String()}, 0)
}
