// Package faulttest holds fault tests that put every Redis-backed
// component of bulwark through the failures of production: Redis killed
// with SIGKILL and started again under load, a buffer consumer killed in
// the middle of its work, and a Redis that stalls. Each test asserts what
// the component's documentation promises for that failure, and measures
// how long each component takes to return to Redis.
//
// The package has no code of its own, only tests. They start private
// redis-server processes (see internal/redistest) and are skipped when
// redis-server is not on PATH, unless CI is set.
package faulttest
