package limiter_test

import (
	"context"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/limiter"
)

// BenchmarkRedisAllow measures decisions on a real Redis: one caller at a
// time (a round trip each), and 64 callers at once, where decisions share
// script calls. Keys rotate over 1000 so buckets stay warm; the limit is
// high enough that every decision is allowed.
func BenchmarkRedisAllow(b *testing.B) {
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = "user:" + strconv.Itoa(i)
	}
	newLimiter := func(b *testing.B, opts ...limiter.RedisOption) *limiter.Redis {
		opts = append([]limiter.RedisOption{limiter.WithPrefix(redistest.Prefix(b)), limiter.WithOutagePolicy(limiter.FailClosed)}, opts...)
		r, err := limiter.NewRedis(redistest.Client(b), limiter.PerSecond(1_000_000, 1_000_000), opts...)
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		r := newLimiter(b)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if d, err := r.Allow(ctx, keys[i%len(keys)]); err != nil || !d.Allowed {
				b.Fatal(d, err)
			}
			i++
		}
	})
	for _, batch := range []int{64, 1} {
		b.Run("goroutines=64/max-batch="+strconv.Itoa(batch), func(b *testing.B) {
			r := newLimiter(b, limiter.WithMaxBatch(batch))
			b.SetParallelism((64 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			b.ReportAllocs()
			var next atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(97))
				for pb.Next() {
					if d, err := r.Allow(ctx, keys[i%len(keys)]); err != nil || !d.Allowed {
						b.Error(d, err)
						return
					}
					i++
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
		})
	}
}
