package breaker_test

import (
	"context"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/bulwarkgo/bulwark/breaker"
)

// instantQuote is a provider call that answers at once, so the benchmarks
// measure the failover itself.
func instantQuote(context.Context, string) (int, error) { return 42, nil }

func benchFailover(b *testing.B, opts ...breaker.FailoverOption) *breaker.Failover[int] {
	return breaker.NewFailover("bench", []breaker.Provider[int]{{Name: "primary"}, {Name: "backup"}}, opts...)
}

// benchSDK is a meter provider with the OTel SDK installed, read by a
// manual reader, to measure instrumentation that records.
func benchSDK(b *testing.B) breaker.FailoverOption {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return breaker.WithProviderOptions(breaker.WithMeterProvider(mp))
}

// runFailoverBench runs f serially and from GOMAXPROCS goroutines, checking
// that want served.
func runFailoverBench(b *testing.B, f *breaker.Failover[int], want string) {
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			res, err := f.Execute(ctx, instantQuote)
			if err != nil || res.Provider != want {
				b.Fatal(res.Provider, err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				res, err := f.Execute(ctx, instantQuote)
				if err != nil || res.Provider != want {
					b.Error(res.Provider, err)
					return
				}
			}
		})
	})
}

// BenchmarkFailoverHealthyPrimary is the common case: the primary's
// breaker is closed and the primary serves. With metrics to no SDK (the
// global default) and to the OTel SDK it allocates nothing.
func BenchmarkFailoverHealthyPrimary(b *testing.B) {
	b.Run("metrics=global", func(b *testing.B) { runFailoverBench(b, benchFailover(b), "primary") })
	b.Run("metrics=sdk", func(b *testing.B) { runFailoverBench(b, benchFailover(b, benchSDK(b)), "primary") })
	// Each attempt gets a context with a deadline: context.WithTimeout's
	// allocations.
	b.Run("attempt-timeout", func(b *testing.B) {
		runFailoverBench(b, benchFailover(b, breaker.WithAttemptTimeout(time.Second)), "primary")
	})
	// Each attempt runs in a goroutine of its own.
	b.Run("hedged", func(b *testing.B) {
		runFailoverBench(b, benchFailover(b, breaker.WithHedge(time.Second)), "primary")
	})
}

// BenchmarkFailoverPrimaryOpen is an outage: the primary's breaker is open,
// so each call is refused by it and served by the backup.
func BenchmarkFailoverPrimaryOpen(b *testing.B) {
	f := benchFailover(b)
	f.Breaker("primary").ForceOpen()
	runFailoverBench(b, f, "backup")
}
