package limiter_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/bulwarkgo/bulwark/limiter"
)

// Two limits for the benchmarks: with roomy, every call is allowed (the
// bucket never empties in a benchmark's run); with tight, nearly every call
// is refused. Keys of tight stay held: none goes idle in a run.
var (
	localBenchRoomy = limiter.Limit{Rate: 1_000_000, Period: 1e9, Burst: 1 << 40}
	localBenchTight = limiter.Limit{Rate: 10, Period: 1e9, Burst: 10}
)

func localBenchKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "user:" + strconv.Itoa(i)
	}
	return keys
}

func BenchmarkLocalAllow(b *testing.B) {
	for _, lim := range []struct {
		name  string
		limit limiter.Limit
	}{{"allowed", localBenchRoomy}, {"limited", localBenchTight}} {
		b.Run(lim.name, func(b *testing.B) {
			for _, nkeys := range []int{1, 10_000} {
				name := "one-key"
				if nkeys > 1 {
					name = strconv.Itoa(nkeys/1000) + "k-keys"
				}
				b.Run(name, func(b *testing.B) {
					localBench(b, lim.limit, localBenchKeys(nkeys))
				})
			}
		})
	}
}

// BenchmarkLocalAllowSDK is the one-key case with an OpenTelemetry SDK
// installed, to show what recording the metric costs.
func BenchmarkLocalAllowSDK(b *testing.B) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	localBench(b, localBenchRoomy, localBenchKeys(1), limiter.WithMeterProvider(mp))
}

func localBench(b *testing.B, limit limiter.Limit, keys []string, opts ...limiter.LocalOption) {
	l, err := limiter.NewLocal(limit, opts...)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, k := range keys {
		if _, err := l.Allow(ctx, k); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := l.Allow(ctx, keys[i]); err != nil {
				b.Fatal(err)
			}
			if i++; i == len(keys) {
				i = 0
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		var next atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			// Each goroutine walks the keys from its own starting point.
			i := int(next.Add(7919)) % len(keys)
			for pb.Next() {
				if _, err := l.Allow(ctx, keys[i]); err != nil {
					b.Error(err)
					return
				}
				if i++; i == len(keys) {
					i = 0
				}
			}
		})
	})
}
