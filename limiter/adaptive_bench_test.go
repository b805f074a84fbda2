package limiter_test

import (
	"context"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/bulwarkgo/bulwark/limiter"
)

// BenchmarkAdaptive measures one Acquire and Release, the cost an adaptive
// limiter adds to every request, without telemetry (the global no-op meter)
// and with the OpenTelemetry SDK recording.
func BenchmarkAdaptive(b *testing.B) {
	for _, telemetry := range []string{"off", "on"} {
		opts := func(b *testing.B, extra ...limiter.AdaptiveOption) []limiter.AdaptiveOption {
			if telemetry == "on" {
				mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
				b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
				extra = append(extra, limiter.WithMeterProvider(mp))
			}
			return extra
		}
		b.Run("telemetry="+telemetry, func(b *testing.B) {
			b.Run("serial", func(b *testing.B) {
				a := adNewB(b, opts(b)...)
				ctx := context.Background()
				b.ReportAllocs()
				for b.Loop() {
					p, err := a.Acquire(ctx)
					if err != nil {
						b.Fatal(err)
					}
					p.Release()
				}
			})
			b.Run("parallel", func(b *testing.B) {
				a := adNewB(b, opts(b, limiter.WithInitialLimit(1000))...)
				ctx := context.Background()
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						p, err := a.Acquire(ctx)
						if err != nil {
							b.Error(err)
							return
						}
						p.Finish(nil)
					}
				})
			})
			b.Run("shed", func(b *testing.B) {
				a := adNewB(b, opts(b, limiter.WithInitialLimit(1), limiter.WithMaxLimit(1))...)
				ctx := context.Background()
				held, _ := a.Acquire(ctx)
				defer held.Release()
				b.ReportAllocs()
				for b.Loop() {
					if _, err := a.Acquire(ctx); err == nil {
						b.Fatal("admitted above the limit")
					}
				}
			})
		})
	}
}

func adNewB(b *testing.B, opts ...limiter.AdaptiveOption) *limiter.Adaptive {
	b.Helper()
	a, err := limiter.NewAdaptive(opts...)
	if err != nil {
		b.Fatal(err)
	}
	return a
}
