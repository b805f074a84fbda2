package degrade_test

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/bulwarkgo/bulwark/degrade"
)

// benchFeatures is a switchboard of a realistic size: the four features
// the benchmarks check and 28 others, so the lookup by name is a hashed
// map lookup, not the linear scan Go does for maps of up to 8 entries.
func benchFeatures() []degrade.Feature {
	fs := []degrade.Feature{
		{Name: "plain-on", Level: degrade.Important},
		{Name: "off", Level: degrade.Optional, Off: true, Messages: map[string]string{
			"zh": "推荐暂时不可用", "en": "Recommendations are unavailable for now.",
		}},
		{Name: "percent", Level: degrade.Optional},
		{Name: "rule", Level: degrade.Important},
	}
	for i := range 28 {
		fs = append(fs, degrade.Feature{Name: "filler-" + strconv.Itoa(i), Level: degrade.Optional})
	}
	return fs
}

// benchRequest is what middleware puts in a request's context: a user on
// an old app on the device model the rule targets.
var benchRequest = degrade.Attributes{
	Platform: "android", Model: "HUAWEI-P30", AppVersion: "2.2.1",
	UserID: "u-1234567", Locale: "zh-CN",
}

// newBenchBoard returns a switchboard with the four scenarios set up:
// plain-on and off by default, percent at 50% (benchRequest's user is
// in), rule off for HUAWEI-P30 below 2.3.0 (benchRequest matches).
func newBenchBoard(b *testing.B, opts ...degrade.Option) *degrade.Switchboard {
	b.Helper()
	sb, err := degrade.New(benchFeatures(), opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sb.Close() })
	ctx := context.Background()
	ch := degrade.Change{By: "bench", Reason: "benchmark"}
	if err := sb.Set(ctx, "percent", degrade.State{Mode: degrade.Percent, Percent: 50}, ch); err != nil {
		b.Fatal(err)
	}
	if err := sb.Set(ctx, "rule", degrade.State{Mode: degrade.On, Rules: []degrade.Rule{{
		When: []degrade.Condition{
			{Attr: "model", Op: "in", Values: []string{"HUAWEI-P30", "HUAWEI-P40"}},
			{Attr: "app_version", Op: "lt", Values: []string{"2.3.0"}},
		},
		Enabled: false,
	}}}, ch); err != nil {
		b.Fatal(err)
	}
	return sb
}

var benchScenarios = []struct {
	feature string
	want    bool
}{
	{"plain-on", true},
	{"off", false},
	{"percent", true},
	{"rule", false},
}

// BenchmarkEnabled measures the hot path: one feature decided for a
// request whose attributes are in the context.
func BenchmarkEnabled(b *testing.B) {
	sb := newBenchBoard(b)
	ctx := degrade.WithAttributes(context.Background(), benchRequest)
	for _, sc := range benchScenarios {
		if got := sb.Enabled(ctx, sc.feature); got != sc.want {
			b.Fatalf("Enabled(%s) = %v, want %v: the scenario is not what it says", sc.feature, got, sc.want)
		}
		b.Run("feature="+sc.feature, func(b *testing.B) {
			benchDecide(b, func() bool { return sb.Enabled(ctx, sc.feature) == sc.want })
		})
	}
}

// BenchmarkSwitch measures the same decisions through a Switch found
// once, which skips looking the feature up by name.
func BenchmarkSwitch(b *testing.B) {
	sb := newBenchBoard(b)
	ctx := degrade.WithAttributes(context.Background(), benchRequest)
	for _, sc := range benchScenarios {
		sw := sb.Switch(sc.feature)
		if got := sw.Enabled(ctx); got != sc.want {
			b.Fatalf("Switch(%s).Enabled = %v, want %v", sc.feature, got, sc.want)
		}
		b.Run("feature="+sc.feature, func(b *testing.B) {
			benchDecide(b, func() bool { return sw.Enabled(ctx) == sc.want })
		})
	}
}

// BenchmarkCheck measures Check on a feature that is off: the path that
// returns the feature's error, with its message for the request's locale.
func BenchmarkCheck(b *testing.B) {
	sb := newBenchBoard(b)
	ctx := degrade.WithAttributes(context.Background(), benchRequest)
	if err := sb.Check(ctx, "off"); !errors.Is(err, degrade.ErrDegraded) {
		b.Fatalf("Check(off) = %v", err)
	}
	b.Run("feature=off", func(b *testing.B) {
		benchDecide(b, func() bool { return sb.Check(ctx, "off") != nil })
	})
}

// BenchmarkEnabledCheckMetrics measures what WithCheckMetrics adds to a
// plain feature's Enabled, with no SDK installed (the global no-op
// provider) and with the OTel SDK.
func BenchmarkEnabledCheckMetrics(b *testing.B) {
	ctx := degrade.WithAttributes(context.Background(), benchRequest)
	b.Run("metrics=noop", func(b *testing.B) {
		sb := newBenchBoard(b, degrade.WithCheckMetrics(true))
		benchDecide(b, func() bool { return sb.Enabled(ctx, "plain-on") })
	})
	b.Run("metrics=sdk", func(b *testing.B) {
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
		sb := newBenchBoard(b, degrade.WithCheckMetrics(true), degrade.WithMeterProvider(mp))
		benchDecide(b, func() bool { return sb.Enabled(ctx, "plain-on") })
	})
}

// benchDecide runs decide serially and in parallel; a run fails if any
// decision went the wrong way. Counting in locals keeps the check out of
// the shared state the parallel run measures.
func benchDecide(b *testing.B, decide func() bool) {
	b.Run("mode=serial", func(b *testing.B) {
		b.ReportAllocs()
		wrong := 0
		for b.Loop() {
			if !decide() {
				wrong++
			}
		}
		if wrong > 0 {
			b.Fatalf("%d of %d decisions went the wrong way", wrong, b.N)
		}
	})
	b.Run("mode=parallel", func(b *testing.B) {
		b.ReportAllocs()
		var wrong atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			n := int64(0)
			for pb.Next() {
				if !decide() {
					n++
				}
			}
			wrong.Add(n)
		})
		if n := wrong.Load(); n > 0 {
			b.Fatalf("%d of %d decisions went the wrong way", n, b.N)
		}
	})
}

// BenchmarkErrorRateRecord measures recording one outcome, a quarter of
// them failures.
func BenchmarkErrorRateRecord(b *testing.B) {
	fail := errors.New("503")
	errFor := func(i int) error {
		if i&3 == 0 {
			return fail
		}
		return nil
	}
	b.Run("mode=serial", func(b *testing.B) {
		r, _ := degrade.NewErrorRate(10*time.Second, 1)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			r.Record(errFor(i))
			i++
		}
	})
	b.Run("mode=parallel", func(b *testing.B) {
		r, _ := degrade.NewErrorRate(10*time.Second, 1)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				r.Record(errFor(i))
				i++
			}
		})
	})
}

// BenchmarkLatencyRecord measures recording one duration, spread over a
// few buckets around 10 ms as real latencies are.
func BenchmarkLatencyRecord(b *testing.B) {
	d := func(i int) time.Duration { return time.Duration(8+i&7) * time.Millisecond }
	b.Run("mode=serial", func(b *testing.B) {
		l, _ := degrade.NewLatency(10*time.Second, 0.99, 1)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			l.Record(d(i))
			i++
		}
	})
	b.Run("mode=parallel", func(b *testing.B) {
		l, _ := degrade.NewLatency(10*time.Second, 0.99, 1)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				l.Record(d(i))
				i++
			}
		})
	})
}

// BenchmarkSignalValue measures reading a signal, which a trigger does
// once per evaluation interval: summing the stripes and, for Latency,
// walking the histogram.
func BenchmarkSignalValue(b *testing.B) {
	r, _ := degrade.NewErrorRate(10*time.Second, 1)
	l, _ := degrade.NewLatency(10*time.Second, 0.99, 1)
	for i := range 10_000 {
		r.Observe(i%10 == 0)
		l.Record(time.Duration(i) * time.Microsecond)
	}
	b.Run("signal=error-rate", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = r.Value()
		}
	})
	b.Run("signal=latency", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = l.Value()
		}
	})
}
