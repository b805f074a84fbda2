package benchmarks

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/failsafe-go/failsafe-go/ratelimiter"
	"golang.org/x/time/rate"

	"github.com/bulwarkgo/bulwark/limiter"
)

// allowFunc is one library's decision for one key, reduced to what every
// library can answer: allowed or not.
type allowFunc func(key string) (bool, error)

// localLib builds a fresh limiter of one library for one benchmark run.
// Building it inside the run, not once per benchmark, matters: the testing
// package calls a benchmark function several times with growing b.N, and a
// limiter carried over would start each run with a different bucket.
type localLib struct {
	name  string
	build func(b *testing.B, l limiter.Limit) allowFunc
}

// localLibs is the side-by-side set for one hot key. The failsafe-go
// builders take the rate as "maxExecutions per period"; bursty refills all
// permits at the start of each period, smooth spaces them Period/Rate
// apart and has no burst at all.
var localLibs = []localLib{
	{"bulwark-local", func(b *testing.B, l limiter.Limit) allowFunc {
		lim, err := limiter.NewLocal(l)
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		return func(key string) (bool, error) {
			d, err := lim.Allow(ctx, key)
			return d.Allowed, err
		}
	}},
	{"x-time-rate", func(b *testing.B, l limiter.Limit) allowFunc {
		lim := rate.NewLimiter(rate.Every(l.Interval()), l.Burst)
		return func(string) (bool, error) { return lim.Allow(), nil }
	}},
	{"failsafe-bursty", func(b *testing.B, l limiter.Limit) allowFunc {
		lim := ratelimiter.NewBursty[any](uint(l.Burst), l.Period*time.Duration(l.Burst)/time.Duration(l.Rate))
		return func(string) (bool, error) { return lim.TryAcquirePermit(), nil }
	}},
	{"failsafe-smooth", func(b *testing.B, l limiter.Limit) allowFunc {
		lim := ratelimiter.NewSmoothWithMaxRate[any](smoothInterval(l))
		return func(string) (bool, error) { return lim.TryAcquirePermit(), nil }
	}},
}

// smoothInterval is the spacing a smooth limiter (no burst) needs to stand
// for l: for the ample limit, 1 ns, so that no two calls are ever close
// enough to be refused and the allow path is what is measured; otherwise
// the limit's own interval.
func smoothInterval(l limiter.Limit) time.Duration {
	if l.Burst == ample {
		return time.Nanosecond
	}
	return l.Interval()
}

// BenchmarkLocalAllow measures an in-process decision that is allowed, on
// one hot key: the cost a limiter adds to every request that gets through.
// The rate (10⁶/s) and burst (2³⁰) are so high that no run drains the
// bucket; a run that sees a refusal fails.
func BenchmarkLocalAllow(b *testing.B) {
	l := limiter.PerSecond(1_000_000, ample)
	for _, lib := range localLibs {
		b.Run("lib="+lib.name, func(b *testing.B) {
			benchLocal(b, lib, l, true)
		})
	}
}

// BenchmarkLocalLimited measures a refusal: the bucket holds one token a
// day, taken before the timer starts, so every measured call is refused.
// This is the path a limiter runs during the overload it exists for, when
// most calls are turned away; a refusal also computes the retry-after that
// the allow path can skip.
func BenchmarkLocalLimited(b *testing.B) {
	l := limiter.Limit{Rate: 1, Period: 24 * time.Hour, Burst: 1}
	for _, lib := range localLibs {
		b.Run("lib="+lib.name, func(b *testing.B) {
			benchLocal(b, lib, l, false)
		})
	}
}

func benchLocal(b *testing.B, lib localLib, l limiter.Limit, wantAllowed bool) {
	const key = "k"
	b.Run("mode=serial", func(b *testing.B) {
		allow := lib.build(b, l)
		drain(b, allow, key, wantAllowed)
		var t tally
		b.ReportAllocs()
		b.ResetTimer()
		var got counts
		for range b.N {
			ok, err := allow(key)
			got.note(ok == wantAllowed, err)
		}
		b.StopTimer()
		t.add(got)
		t.check(b, verdict(wantAllowed))
	})
	b.Run("mode=parallel", func(b *testing.B) {
		allow := lib.build(b, l)
		drain(b, allow, key, wantAllowed)
		var t tally
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			var got counts
			for pb.Next() {
				ok, err := allow(key)
				got.note(ok == wantAllowed, err)
			}
			t.add(got)
		})
		b.StopTimer()
		t.check(b, verdict(wantAllowed))
	})
}

// drain empties the bucket of key before a refusal benchmark, so the timed
// loop starts refused.
func drain(b *testing.B, allow allowFunc, key string, wantAllowed bool) {
	b.Helper()
	if wantAllowed {
		return
	}
	if ok, err := allow(key); err != nil || !ok {
		b.Fatalf("first call on a fresh limiter: allowed %v, error %v", ok, err)
	}
}

func verdict(allowed bool) string {
	if allowed {
		return "allowed"
	}
	return "refused"
}

// BenchmarkLocalAllowKeys measures allowed decisions spread over 10 000
// keys (a user id, a client IP), where a limiter must also find the key's
// bucket. The peer is what users write by hand: a sync.Map of
// x/time/rate limiters, created on first use. Unlike Local it never forgets
// a key, so it does less work per call and its memory grows with every key
// ever seen; the benchmark shows what that bound costs. Every key is
// touched once before the timer starts, so the steady state is measured,
// not the creation of buckets.
func BenchmarkLocalAllowKeys(b *testing.B) {
	const nkeys = 10_000
	keys := makeKeys(nkeys)
	l := limiter.PerSecond(1_000_000, ample)

	libs := []localLib{
		localLibs[0],
		{"syncmap-x-time-rate", func(b *testing.B, l limiter.Limit) allowFunc {
			var m sync.Map
			every := rate.Every(l.Interval())
			return func(key string) (bool, error) {
				v, ok := m.Load(key)
				if !ok {
					v, _ = m.LoadOrStore(key, rate.NewLimiter(every, l.Burst))
				}
				return v.(*rate.Limiter).Allow(), nil
			}
		}},
	}
	for _, lib := range libs {
		b.Run("keys=10000/lib="+lib.name, func(b *testing.B) {
			b.Run("mode=serial", func(b *testing.B) {
				allow := lib.build(b, l)
				warmKeys(b, allow, keys)
				var t tally
				c := cursor{n: nkeys}
				b.ReportAllocs()
				b.ResetTimer()
				var got counts
				for range b.N {
					got.note(allow(keys[c.next()]))
				}
				b.StopTimer()
				t.add(got)
				t.check(b, "allowed")
			})
			b.Run("mode=parallel", func(b *testing.B) {
				allow := lib.build(b, l)
				warmKeys(b, allow, keys)
				var t tally
				s := spread{n: nkeys}
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					c := s.cursor()
					var got counts
					for pb.Next() {
						got.note(allow(keys[c.next()]))
					}
					t.add(got)
				})
				b.StopTimer()
				t.check(b, "allowed")
			})
		})
	}
}

func warmKeys(b *testing.B, allow allowFunc, keys []string) {
	b.Helper()
	for _, k := range keys {
		if _, err := allow(k); err != nil {
			b.Fatal(err)
		}
	}
}
