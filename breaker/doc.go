// Package breaker keeps a failing dependency (a payment gateway, a map API,
// a database) from taking the service down with it: circuit breakers that
// stop calling it while it fails, and failover from a primary provider to
// backups.
//
// # Where to start
//
//   - [Breaker]: one dependency. New[T](name, opts...), then Execute(ctx, fn).
//     Built on github.com/sony/gobreaker/v2, adding contexts, slow calls,
//     ready-made [TripPolicy] values, an outcome [Classifier], jittered open
//     timeouts, manual control (ForceOpen, Disable, Reset), listeners called
//     outside any lock, and OpenTelemetry metrics.
//   - [Group]: one breaker per key (host, endpoint, merchant), bounded.
//   - [Failover]: an ordered list of providers, each behind its own breaker;
//     a call moves on when one fails, and never re-sends a final answer
//     (a declined card) to the next.
//   - [RoundTripper]: a breaker per host for outbound HTTP.
//   - [Fleet]: breakers of the same name on every instance of a service
//     trip together through Redis, one instance probes for all, and each
//     goes on alone when Redis is down. Give it to a breaker with
//     [WithFleet].
//
// # Errors
//
// A rejected call returns an error matching [ErrOpen] (a half-open breaker
// whose probe slots are taken also matches [ErrTooManyRequests]) and the
// function is not called. A done context is returned as it is, before the
// call. Otherwise the caller gets the function's own result and error.
//
// # What counts
//
// The [Classifier] turns each call's error into Success, Failure or
// Ignored (by default nil is a success, any error a failure). A call that
// ends with an error after its caller cancelled is ignored: the caller, not
// the dependency, stopped it. A call whose caller's deadline expired inside
// it is a failure: the dependency did not answer in time. With a
// [SlowCallRate] policy, calls at least as slow as its threshold count as
// failures too. A panic counts as a failure and is raised again.
//
// # Telemetry
//
// Metrics go to the global meter provider unless [WithMeterProvider] names
// another; the scope is this package's import path. Instruments, each with
// the attribute bulwark.breaker.name:
//
//	bulwark.breaker.calls        counter {call}        bulwark.breaker.outcome: success, failure, ignored, rejected
//	bulwark.breaker.transitions  counter {transition}  bulwark.breaker.from, bulwark.breaker.to
//	bulwark.breaker.state        gauge {state}         0 closed, 1 half-open, 2 open
//
// A [Group]'s members report under the group's name, without a state gauge
// each. A [Failover] also counts its attempts:
//
//	bulwark.breaker.failover.attempts  counter {attempt}  bulwark.breaker.failover.name, .provider,
//	                                                      .outcome: success, failure, final, skipped, cancelled
package breaker
