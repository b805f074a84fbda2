// Package limiter keeps a service from taking more requests than it can
// serve: rate limits per key in one process or across a fleet, and an
// adaptive concurrency limit that sheds load before latency collapses.
//
// # Where to start
//
//   - [Local]: token buckets per key (client IP, user, merchant) in this
//     process. Lock-free and allocation-free on the hot path, bounded in
//     memory, no goroutine unless you ask for one.
//   - [Redis]: the same limit shared by every instance of a service,
//     decided by an atomic Lua script (GCRA) on Redis' clock, which
//     concurrent decisions share, and an [OutagePolicy] for when Redis is
//     unreachable.
//   - [Adaptive]: a limit on requests in flight that follows measured
//     latency, for the order path that must not fall over.
//   - [Middleware]: net/http middleware answering 429 with Retry-After and
//     RateLimit-* headers, keyed by client IP, header or your own function.
//
// [Local] and [Redis] implement [Limiter] with the same arithmetic (GCRA in
// whole units of time, see [Local]), so a limit decides the same in one
// process as across a fleet, and code written against the interface can
// move from one to the other. Local is not built on golang.org/x/time/rate:
// an exact [Decision] from a rate.Limiter costs two calls under its mutex,
// and Local decides in one compare-and-swap, in less time than a bare
// rate.Limiter.Allow.
//
// # Decisions and errors
//
// A refusal is a [Decision] with Allowed false, not an error: it carries
// Remaining, RetryAfter and ResetAfter. [Decision.Err] turns it into an
// error matching [ErrLimited] when that reads better. Errors are returned
// only when no decision could be made: the caller's context is done
// (the context's own error), n is negative ([ErrInvalidN]) or larger than
// the burst ([ErrBurstExceeded]). Constructors return errors matching
// [ErrInvalidConfig] that name the bad field.
//
// # When Redis is down
//
// [Redis] treats a failed call (after the client's own retries) as an
// outage: for the retry interval (half a second by default) it decides by its
// outage policy without touching Redis, then lets one call try Redis again.
// The default policy is FallbackLocal(1), an in-process limiter at the whole
// limit; [FailOpen], [FailClosed] and FallbackLocal(share) are the choices.
// Decisions made by the policy have a nil error and are counted with
// bulwark.limiter.fallback=true.
//
// # Telemetry
//
// Every limiter reports through the OpenTelemetry API to the global meter
// provider unless [WithMeterProvider] names another; with no SDK installed
// this costs a few nanoseconds and no allocation. The instrumentation scope
// is this package's import path. Instruments:
//
//	bulwark.limiter.decisions        counter {decision}  attributes bulwark.limiter.name, bulwark.limiter.kind
//	                                                     (local, redis, adaptive), bulwark.limiter.result
//	                                                     (allowed, limited, error), bulwark.limiter.fallback
//	bulwark.limiter.redis.duration   histogram s         one sample per script call; bulwark.limiter.redis.outcome (ok, error)
//	bulwark.limiter.adaptive.limit   gauge {request}     the current concurrency limit
//	bulwark.limiter.adaptive.inflight gauge {request}    requests holding a permit
package limiter
