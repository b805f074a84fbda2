// Package sharded holds what the library's bounded per-key maps
// (limiter.Local, breaker.Group) share: how many shards to make, how to
// split a key bound over them, and the optional janitor goroutine.
package sharded

import (
	"runtime"
	"sync"
	"time"
)

// MinKeys is the fewest keys a shard is made for, so that sampling a shard
// for an entry to evict finds a reasonable one.
const MinKeys = 8

// Count returns a power of two: enough shards that parallel callers rarely
// meet on one lock, but no more than leave each shard MinKeys of maxKeys.
func Count(maxKeys int) int {
	want := max(64, 4*runtime.GOMAXPROCS(0))
	n := 1
	for n < want && 2*n*MinKeys <= maxKeys {
		n *= 2
	}
	return n
}

// Capacity is shard i's share of maxKeys over n shards; the shares add up
// to maxKeys exactly.
func Capacity(maxKeys, n, i int) int {
	c := maxKeys / n
	if i < maxKeys%n {
		c++
	}
	return c
}

// StartJanitor calls sweep every interval in a goroutine of its own until
// the returned stop function is called; stop returns once the goroutine
// has exited and may be called more than once. It panics if every is not
// positive, as time.NewTicker does, with a message naming who.
func StartJanitor(who string, every time.Duration, sweep func()) (stop func()) {
	if every <= 0 {
		panic(who + ": non-positive interval for StartJanitor")
	}
	quit := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				sweep()
			case <-quit:
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(quit) })
		<-exited
	}
}
