// Package degrade turns the non-essential parts of a service off under
// overload or when a dependency breaks, to keep what is essential
// (browsing, ordering, paying) standing: by hand from an operator console,
// or by itself when a signal says so, and back on when the cause is gone.
//
// # Where to start
//
// Declare the service's features with a [Level] (core, important,
// optional) and a user-facing message per locale, and make a [Switchboard]
// with [New]. Ask it [Switchboard.Enabled] or [Switchboard.Check] where a
// feature is used; guard a handler with [Guard]. Put the request's
// [Attributes] (platform, device model, app version, region, user id,
// locale) in the context with [WithAttributes] or [WithRequestAttributes],
// so that a feature can be turned off for one device model or app version
// only, or rolled out to a stable percentage of users. Code that asks
// about the same feature on every request can hold its [Switch]
// ([Switchboard.Switch]), which skips the lookup by name.
//
// Operators see and flip switches through [NewAdminHandler]: a JSON API
// and a small web console served by the same handler, behind bearer
// tokens with viewer and operator roles (or your own authentication),
// refusing cross-origin changes, with every change in the audit trail.
//
// # Deciding
//
// Enabled is the hot path: one atomic load of an immutable snapshot and a
// lookup in its small hash table, no lock, no allocation. A feature's state comes from,
// strongest first: an operator's setting for it ([Switchboard.Set], until
// [Switchboard.Unpin]); an operator's shed of its level
// ([Switchboard.Shed], 大促模式: every feature at or below the level);
// a [Trigger] holding it off; its default. A state is on, off, or on for a
// percentage of users (the same user stays on as the percentage grows:
// users are placed by a hash of the feature's name and their id), with
// optional targeting rules tried first: off for device model X with app
// version < 2.3.0. Versions compare part by part (2.10.0 > 2.9.1), with
// pre-releases before their release.
//
// A name that is not a feature is on, so a typo never turns a feature off;
// it is reported once, not per call.
//
// # Sharing and triggers
//
// Operators' settings live in a [Store]: in this process by default, or in
// Redis ([NewRedisStore]) so that a change made on one instance reaches
// every instance. Each switchboard also re-reads its store every refresh
// interval, with jitter ([WithRefresh]), since change notifications can be
// lost; while the store cannot be read it keeps deciding from the last
// state it knew ([Switchboard.StoreHealthy]). Every change is kept in an
// audit trail: who, when, what, before, after and why.
//
// Triggers act on the instance that runs them: when a [Signal] (an
// [ErrorRate], a [Latency] percentile, a breaker that is open through
// [NotReady], any [SignalFunc])
// stays above a threshold for a while, they turn features off or shed a
// level; when it stays below a lower threshold for a while, they turn them
// back on. One goroutine evaluates them; Close stops it.
//
// # Metrics
//
// bulwark.degrade.feature.state is a gauge per feature (1 on, 0 off, the
// share of users for a percentage); bulwark.degrade.trigger.firings counts
// triggers firing and recovering; bulwark.degrade.unknown counts unknown
// names; bulwark.degrade.store.errors counts failed reads of the store;
// bulwark.degrade.events.dropped counts change events dropped because
// listeners fell behind; bulwark.degrade.checks counts checks by feature and result when
// [WithCheckMetrics] asks for it.
package degrade
