// Package bulwarkgrpc puts Bulwark's limiters, waiting room, degradation
// switches and circuit breakers in front of gRPC servers and clients, as
// interceptors.
//
// The package is named bulwarkgrpc rather than grpc so that it can be
// imported beside google.golang.org/grpc, which every user of it imports
// too, without renaming either. It is a module of its own
// (github.com/bulwarkgo/bulwark/grpc), so the core module does not depend
// on gRPC.
//
// # Where to start
//
// On the server, each type has a Unary and a Stream method returning the
// interceptors; chain them with grpc.ChainUnaryInterceptor and
// grpc.ChainStreamInterceptor, in this order, which refuses the cheapest
// way first and leaves the concurrency limit next to the handler, whose
// latency it measures:
//
//   - [UnaryServerAttributes] and [StreamServerAttributes] read the
//     caller's platform, device model, app version, region, user id and
//     locale from the metadata into the context, for the switchboard.
//     Behind grpc-gateway, forward the headers [IncomingAttributes] names.
//   - [Guard]: methods mapped to features of a [degrade.Switchboard];
//     a call to a feature that is off gets codes.Unavailable with the
//     feature's message in the caller's locale.
//   - [RateLimit]: any [limiter.Limiter], keyed by method, peer or a
//     metadata value ([KeyFunc]); codes.ResourceExhausted with RetryInfo.
//   - [WaitingRoom]: a [queue.Room] in hold mode; callers wait in line and
//     are admitted in order, or are refused before their deadline when
//     their turn would come after it.
//   - [ConcurrencyLimit]: a [limiter.Adaptive], shedding calls past its
//     limit with codes.ResourceExhausted.
//
// On the client:
//
//   - [UnaryClientAttributes] and [StreamClientAttributes] send the
//     attributes in the context on as metadata, so they travel from
//     service to service; values that are not ASCII ("华为 Mate 60") go
//     under the keys' -bin forms, which gRPC carries as bytes.
//   - [CircuitBreaker]: a breaker per method, per target or for the whole
//     connection; refused calls never leave the process and fail with an
//     [*OpenError] (codes.Unavailable, matching [breaker.ErrOpen]).
//   - [Failover]: a grpc.ClientConnInterface over several connections,
//     primary first, each behind its own breaker.
//
// # Status codes
//
// A server refusal carries an errdetails.ErrorInfo whose Reason
// ([ReasonRateLimited], [ReasonDegraded], ...) says which interceptor
// refused and why, under the domain [ErrorDomain]:
//
//	RateLimit         ResourceExhausted  RetryInfo, QuotaFailure; limiter errors: served, or Unavailable
//	ConcurrencyLimit  ResourceExhausted  shed at once
//	Guard             Unavailable        the feature's message; ErrorInfo metadata feature and level
//	WaitingRoom       ResourceExhausted  line full, wait too long, waited too long, deadline too near; RetryInfo
//	                  Unavailable        room closed or its Redis down; RetryInfo
//
// ResourceExhausted is for a server that is up and holding a caller back.
// Unavailable is for what is unavailable for a while: a feature that is
// off, a limiter that cannot decide, a room that cannot hold anyone. A
// call whose caller's context ended gets codes.Canceled or
// codes.DeadlineExceeded from any interceptor.
//
// Refusals that advise a delay also set the trailer grpc-retry-pushback-ms,
// which gRPC's retry support honours; a Guard's sets it to -1, asking
// gRPC not to retry a feature that is off.
//
// # What the client counts against a server
//
// A [CircuitBreaker] and a [Failover] sort each call's error into a
// failure of the server, which counts toward opening its breaker and
// sends a Failover's call to the next target, or an answer, which counts
// for the server and is the Failover's final answer. A failure is an
// error with one of the failure codes ([WithFailureCodes]; by default
// Unavailable, DeadlineExceeded and Internal), except:
//
//   - a refusal of this package's server interceptors, whatever its code:
//     the server was up and decided about this caller (its quota, its
//     place in line, its attributes, or the server's own load), and one
//     caller's refusal must not open a breaker that every caller shares,
//     nor be re-sent to a backup that would decide the same. It is told
//     by its ErrorInfo in [ErrorDomain], with any reason but
//     [ReasonQueueUnavailable], which says the instance cannot hold
//     anyone in line: that one counts by its code.
//   - an error gRPC raised in the client before the call left: metadata
//     gRPC refuses, a request the call's codec cannot marshal, a codec or
//     compressor that is not registered, and on a stream any error
//     SendMsg returns but io.EOF. gRPC gives these codes.Internal, as a
//     server that broke gets; the package tells them apart by checking
//     the call's metadata, codec and request again once it has failed,
//     which is exact for what the call's context and options show it,
//     and blind to what an interceptor or connection option further down
//     adds.
//
// Clients that are not Bulwark's (a service mesh's outlier detection, a
// breaker in another language) see a Guard's Unavailable as a failure
// unless they look at the ErrorInfo too.
//
// A stream counts as soon as the server has shown how it is: at its first
// response, a message or the header (when the caller reads it), as a
// success, or by its final status if it ends first; its latency, for a
// breaker's SlowCallRate, is the time to that first response. A
// long-lived stream (a watch) thus neither holds a half-open breaker's
// probe for its whole life nor counts its life as latency. A server that
// sends nothing for a long while after a stream opens holds the probe
// until it does: have it send its header at once (grpc.SendHeader) and
// the client read it (ClientStream.Header).
//
// # Costs
//
// Letting a call through costs no allocation beyond gRPC's own in
// RateLimit (with a [limiter.Local] and an allocation-free key),
// ConcurrencyLimit, Guard, CircuitBreaker and a Failover whose primary
// serves; the attributes cost one small allocation per metadata key
// present, gRPC copying each value, and the context that carries them; a
// WaitingRoom costs what [queue.Room.Wait] does and, for a call with a
// deadline, a [queue.Room.Stats] (a round trip to Redis for a shared
// room) and a context. Telling a failure from an answer costs nothing
// more for a call that succeeds or whose code is not a failure code. The
// benchmarks in this
// module measure each against a bare call, and each interceptor alone.
package bulwarkgrpc
