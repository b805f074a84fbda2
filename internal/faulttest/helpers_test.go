package faulttest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

var bg = context.Background()

// newClient returns a client of the Redis at addr for one component,
// closed when t ends; each component has its own, as each instance of a
// service would.
//
// While Redis is down a command fails after one dial and one retry, rather
// than after go-redis' default of five dials for each of four tries (about
// two seconds), so what a caller sees during an outage is decided by the
// component's own policy, not by the client's patience.
//
// Its pools are large enough that an outage of a few seconds under load
// never fills go-redis' count of failed dials: once a pool has failed as
// many dials as its size (by default 10 per CPU for commands, 10 for
// pipelines), go-redis answers with the last dial error and dials again
// only once a second, so with default pools a client may come back up to
// a second after Redis does. That delay is the client's, not the
// components'; these tests measure the components'.
func newClient(t testing.TB, addr string, more ...func(*redis.Options)) *redis.Client {
	t.Helper()
	o := &redis.Options{Addr: addr, MaxRetries: 1, DialerRetries: 1, DialTimeout: 250 * time.Millisecond,
		PoolSize: 10_000, PipelinePoolSize: 10_000}
	for _, f := range more {
		f(o)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitFor polls cond every millisecond until it holds and returns how long
// that took, or fails t after limit.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

// event is one call made under load: when it started and returned, and
// what it returned.
type event[T any] struct {
	start, end time.Time
	v          T
}

// events records the calls of a load, from any goroutine.
type events[T any] struct {
	mu  sync.Mutex
	all []event[T]
}

func (e *events[T]) add(start time.Time, v T) {
	end := time.Now()
	e.mu.Lock()
	e.all = append(e.all, event[T]{start, end, v})
	e.mu.Unlock()
}

// within returns the calls that started at from or later and returned by
// to: calls made entirely inside that span.
func (e *events[T]) within(from, to time.Time) []event[T] {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []event[T]
	for _, ev := range e.all {
		if !ev.start.Before(from) && !ev.end.After(to) {
			out = append(out, ev)
		}
	}
	return out
}

func (e *events[T]) snapshot() []event[T] {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]event[T](nil), e.all...)
}

// load runs f in n goroutines, each calling it in a loop with pause
// between calls, until the returned stop is called; stop waits for them.
func load(n int, pause time.Duration, f func()) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				f()
				if pause > 0 {
					select {
					case <-done:
						return
					case <-time.After(pause):
					}
				}
			}
		})
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
		})
	}
}
