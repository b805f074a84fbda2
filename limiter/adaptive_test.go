package limiter_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/bulwarkgo/bulwark/limiter"
)

func adNew(t *testing.T, opts ...limiter.AdaptiveOption) *limiter.Adaptive {
	t.Helper()
	a, err := limiter.NewAdaptive(opts...)
	if err != nil {
		t.Fatalf("NewAdaptive: %v", err)
	}
	return a
}

// adFixedLimit pins the limit to n whatever the latency.
func adFixedLimit(n int) []limiter.AdaptiveOption {
	return []limiter.AdaptiveOption{
		limiter.WithInitialLimit(n), limiter.WithMinLimit(n), limiter.WithMaxLimit(n),
	}
}

// adRound is one burst of load: it acquires permits until the limiter sheds
// (saturating it) or max are held, lets latency pass, and finishes them all
// with finish. It returns how many were admitted. Use it inside a synctest
// bubble, where the sleep is instant and the latency exact.
func adRound(t *testing.T, a *limiter.Adaptive, max int, latency time.Duration, finish func(*limiter.Permit)) int {
	t.Helper()
	ps := make([]limiter.Permit, 0, max)
	for len(ps) < max {
		p, err := a.Acquire(t.Context())
		if errors.Is(err, limiter.ErrLimited) {
			break
		}
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		ps = append(ps, p)
	}
	time.Sleep(latency)
	for i := range ps {
		finish(&ps[i])
	}
	return len(ps)
}

func adRelease(p *limiter.Permit) { p.Release() }
func adDropped(p *limiter.Permit) { p.Dropped() }

func TestAdaptiveShedsAboveLimit(t *testing.T) {
	a := adNew(t, adFixedLimit(3)...)
	ctx := t.Context()
	var ps []limiter.Permit
	for i := range 3 {
		p, err := a.Acquire(ctx)
		if err != nil {
			t.Fatalf("Acquire %d: %v", i, err)
		}
		ps = append(ps, p)
	}
	if got := a.Inflight(); got != 3 {
		t.Fatalf("Inflight = %d, want 3", got)
	}
	p, err := a.Acquire(ctx)
	if !errors.Is(err, limiter.ErrLimited) {
		t.Fatalf("Acquire above the limit: err = %v, want ErrLimited", err)
	}
	if p != (limiter.Permit{}) {
		t.Errorf("shed Acquire returned a non-zero Permit")
	}
	p.Release() // the zero Permit is a no-op
	if got := a.Inflight(); got != 3 {
		t.Fatalf("Inflight after shed = %d, want 3", got)
	}
}

func TestAdaptiveReleaseRestoresCapacity(t *testing.T) {
	a := adNew(t, adFixedLimit(2)...)
	ctx := t.Context()
	finishers := []func(*limiter.Permit){
		(*limiter.Permit).Release,
		(*limiter.Permit).Done,
		(*limiter.Permit).Dropped,
		(*limiter.Permit).Ignore,
		func(p *limiter.Permit) { p.Finish(errors.New("declined")) },
	}
	for i, finish := range finishers {
		p1, err1 := a.Acquire(ctx)
		p2, err2 := a.Acquire(ctx)
		if err1 != nil || err2 != nil {
			t.Fatalf("finisher %d: Acquire: %v, %v", i, err1, err2)
		}
		if _, err := a.Acquire(ctx); !errors.Is(err, limiter.ErrLimited) {
			t.Fatalf("finisher %d: third Acquire err = %v, want ErrLimited", i, err)
		}
		finish(&p1)
		p3, err := a.Acquire(ctx)
		if err != nil {
			t.Fatalf("finisher %d: Acquire after finishing one: %v", i, err)
		}
		finish(&p2)
		finish(&p3)
		if got := a.Inflight(); got != 0 {
			t.Fatalf("finisher %d: Inflight = %d, want 0", i, got)
		}
	}
}

func TestAdaptiveCancelledContext(t *testing.T) {
	a := adNew(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	p, err := a.Acquire(ctx)
	if !errors.Is(err, context.Canceled) || errors.Is(err, limiter.ErrLimited) {
		t.Fatalf("Acquire(cancelled) err = %v, want context.Canceled", err)
	}
	p.Finish(nil)
	if got := a.Inflight(); got != 0 {
		t.Fatalf("Inflight = %d, want 0", got)
	}

	dctx, dcancel := context.WithDeadline(t.Context(), time.Unix(0, 0))
	defer dcancel()
	if _, err := a.Acquire(dctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire(past deadline) err = %v, want context.DeadlineExceeded", err)
	}
}

func TestAdaptiveGrowsWhenSaturatedAndStable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := adNew(t, limiter.WithInitialLimit(10))
		prev := a.Limit()
		for range 100 { // ten 100ms windows of 10ms requests
			adRound(t, a, 1000, 10*time.Millisecond, adRelease)
			if got := a.Limit(); got < prev {
				t.Fatalf("limit fell from %d to %d with stable latency", prev, got)
			}
			prev = a.Limit()
		}
		if got := a.Limit(); got <= 15 {
			t.Fatalf("limit = %d after ten saturated windows of stable latency, want > 15", got)
		}
	})
}

func TestAdaptiveDoesNotGrowWhenIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := adNew(t, limiter.WithInitialLimit(10))
		for range 200 {
			adRound(t, a, 2, 10*time.Millisecond, adRelease) // 2 of 10 in flight
		}
		if got := a.Limit(); got != 10 {
			t.Fatalf("limit = %d after light load, want 10 (unchanged)", got)
		}
	})
}

func TestAdaptiveShrinksWhenLatencyRises(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := adNew(t, limiter.WithInitialLimit(20), limiter.WithMinLimit(2))
		for range 50 {
			adRound(t, a, 1000, 10*time.Millisecond, adRelease)
		}
		before := a.Limit()
		low := before
		for range 20 {
			adRound(t, a, 1000, 100*time.Millisecond, adRelease)
			low = min(low, a.Limit())
		}
		if low > before*2/3 {
			t.Fatalf("limit went from %d down to only %d after latency rose tenfold, want at most %d",
				before, low, before*2/3)
		}
		if low < 2 {
			t.Fatalf("limit %d below the minimum 2", low)
		}

		// Back to normal latency: the limit climbs again.
		for range 100 {
			adRound(t, a, 1000, 10*time.Millisecond, adRelease)
		}
		if got := a.Limit(); got <= low {
			t.Fatalf("limit = %d after latency recovered, want above the low of %d", got, low)
		}
	})
}

func TestAdaptiveShrinksOnDropped(t *testing.T) {
	for _, tc := range []struct {
		name   string
		finish func(*limiter.Permit)
	}{
		{"Dropped", adDropped},
		{"Finish(DeadlineExceeded)", func(p *limiter.Permit) { p.Finish(context.DeadlineExceeded) }},
		{"Finish(ErrLimited)", func(p *limiter.Permit) { p.Finish(fmt.Errorf("downstream: %w", limiter.ErrLimited)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				a := adNew(t, limiter.WithInitialLimit(20))
				time.Sleep(100 * time.Millisecond) // let the first window's time pass
				adRound(t, a, 10, time.Millisecond, tc.finish)
				if got := a.Limit(); got != 18 {
					t.Fatalf("limit = %d after a window of drops, want 18 (20 × 0.9)", got)
				}
				for range 200 {
					adRound(t, a, 10, 100*time.Millisecond, tc.finish)
				}
				if got := a.Limit(); got != 1 {
					t.Fatalf("limit = %d after many windows of drops, want the minimum 1", got)
				}
			})
		})
	}
}

func TestAdaptiveIgnoredOutcomesDoNotMoveTheLimit(t *testing.T) {
	for _, tc := range []struct {
		name   string
		finish func(*limiter.Permit)
	}{
		{"Ignore", (*limiter.Permit).Ignore},
		{"Finish(Canceled)", func(p *limiter.Permit) { p.Finish(context.Canceled) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				a := adNew(t, limiter.WithInitialLimit(20))
				for range 50 {
					adRound(t, a, 1000, 10*time.Millisecond, tc.finish)
				}
				if got := a.Limit(); got != 20 {
					t.Fatalf("limit = %d after ignored outcomes, want 20", got)
				}
			})
		})
	}
}

func TestAdaptiveFinishBusinessErrorIsSuccess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := adNew(t, limiter.WithInitialLimit(10))
		declined := errors.New("card declined")
		for range 100 {
			adRound(t, a, 1000, 10*time.Millisecond, func(p *limiter.Permit) { p.Finish(declined) })
		}
		if got := a.Limit(); got <= 10 {
			t.Fatalf("limit = %d after fast business errors, want growth above 10", got)
		}
	})
}

func TestAdaptiveStaysWithinBounds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lo, hi = 5, 40
		a := adNew(t, limiter.WithInitialLimit(20), limiter.WithMinLimit(lo), limiter.WithMaxLimit(hi),
			limiter.WithSmoothing(1))
		rng := rand.New(rand.NewPCG(1, 2))
		latencies := []time.Duration{time.Millisecond, 10 * time.Millisecond, 500 * time.Millisecond, 3 * time.Second}
		sawLo, sawHi := false, false
		for range 3000 {
			finish := adRelease
			if rng.IntN(20) == 0 {
				finish = adDropped
			}
			adRound(t, a, 1000, latencies[rng.IntN(len(latencies))], finish)
			l := a.Limit()
			if l < lo || l > hi {
				t.Fatalf("limit %d outside [%d, %d]", l, lo, hi)
			}
			sawLo = sawLo || l == lo
			sawHi = sawHi || l == hi
		}
		// Stable phases reach both ends.
		for range 300 {
			adRound(t, a, 1000, 5*time.Millisecond, adRelease)
		}
		sawHi = sawHi || a.Limit() == hi
		for range 100 {
			adRound(t, a, 1000, 5*time.Millisecond, adDropped)
		}
		sawLo = sawLo || a.Limit() == lo
		if !sawLo || !sawHi {
			t.Fatalf("limit never reached the bounds: saw min %v, saw max %v", sawLo, sawHi)
		}
	})
}

func TestAdaptivePermitDoubleRelease(t *testing.T) {
	a := adNew(t, adFixedLimit(2)...)
	ctx := t.Context()
	p1, _ := a.Acquire(ctx)
	p2, _ := a.Acquire(ctx)

	p1.Release()
	if p1 != (limiter.Permit{}) {
		t.Fatal("a released Permit is not reset to the zero Permit")
	}
	p1.Release()
	p1.Dropped()
	p1.Finish(nil)
	if got := a.Inflight(); got != 1 {
		t.Fatalf("Inflight after releasing one Permit four times = %d, want 1", got)
	}

	// A copy of a released Permit is misuse; it still must not push the
	// count below zero, which would admit more than the limit.
	cp := p2
	p2.Release()
	cp.Release()
	if got := a.Inflight(); got != 0 {
		t.Fatalf("Inflight after releasing a copy = %d, want 0", got)
	}
	for range 2 {
		if _, err := a.Acquire(ctx); err != nil {
			t.Fatalf("Acquire: %v", err)
		}
	}
	if _, err := a.Acquire(ctx); !errors.Is(err, limiter.ErrLimited) {
		t.Fatalf("third Acquire with limit 2 err = %v, want ErrLimited", err)
	}

	var zero limiter.Permit
	zero.Release()
	zero.Done()
	zero.Dropped()
	zero.Ignore()
	zero.Finish(errors.New("x"))
	if got := a.Inflight(); got != 2 {
		t.Fatalf("Inflight after finishing the zero Permit = %d, want 2", got)
	}
}

func TestAdaptiveOptionValidation(t *testing.T) {
	for _, tc := range []struct {
		field string
		opts  []limiter.AdaptiveOption
	}{
		{"opts", []limiter.AdaptiveOption{nil}},
		{"MinLimit", []limiter.AdaptiveOption{limiter.WithMinLimit(0)}},
		{"MinLimit", []limiter.AdaptiveOption{limiter.WithMinLimit(-3)}},
		{"MaxLimit", []limiter.AdaptiveOption{limiter.WithMinLimit(10), limiter.WithMaxLimit(5), limiter.WithInitialLimit(7)}},
		{"InitialLimit", []limiter.AdaptiveOption{limiter.WithInitialLimit(0)}},
		{"InitialLimit", []limiter.AdaptiveOption{limiter.WithInitialLimit(2000)}},
		{"InitialLimit", []limiter.AdaptiveOption{limiter.WithMinLimit(30)}}, // default initial 20 < min
		{"LatencyTolerance", []limiter.AdaptiveOption{limiter.WithLatencyTolerance(0.9)}},
		{"LatencyTolerance", []limiter.AdaptiveOption{limiter.WithLatencyTolerance(math.NaN())}},
		{"LatencyTolerance", []limiter.AdaptiveOption{limiter.WithLatencyTolerance(math.Inf(1))}},
		{"Smoothing", []limiter.AdaptiveOption{limiter.WithSmoothing(math.NaN())}},
		{"Smoothing", []limiter.AdaptiveOption{limiter.WithSmoothing(0)}},
		{"Smoothing", []limiter.AdaptiveOption{limiter.WithSmoothing(1.5)}},
		{"SampleWindow", []limiter.AdaptiveOption{limiter.WithSampleWindow(0)}},
	} {
		a, err := limiter.NewAdaptive(tc.opts...)
		if !errors.Is(err, limiter.ErrInvalidConfig) {
			t.Errorf("%s: err = %v, want ErrInvalidConfig", tc.field, err)
			continue
		}
		if a != nil {
			t.Errorf("%s: non-nil limiter with an error", tc.field)
		}
		if !strings.Contains(err.Error(), tc.field) {
			t.Errorf("err %q does not name the field %s", err, tc.field)
		}
	}

	a, err := limiter.NewAdaptive(limiter.WithMinLimit(1), limiter.WithMaxLimit(1), limiter.WithInitialLimit(1),
		limiter.WithLatencyTolerance(1), limiter.WithSmoothing(1), limiter.WithSampleWindow(time.Nanosecond),
		limiter.WithName("edge"))
	if err != nil {
		t.Fatalf("valid edge options: %v", err)
	}
	if a.Limit() != 1 {
		t.Fatalf("Limit = %d, want 1", a.Limit())
	}
	d := adNew(t)
	if d.Limit() != 20 {
		t.Fatalf("default Limit = %d, want 20", d.Limit())
	}
}

// TestAdaptiveConcurrentFixedLimit checks the admission invariant under
// contention: no more than the limit are ever held.
func TestAdaptiveConcurrentFixedLimit(t *testing.T) {
	const limit, workers, iters = 8, 32, 300
	a := adNew(t, adFixedLimit(limit)...)
	var held, maxHeld, admitted, shed atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range iters {
				p, err := a.Acquire(t.Context())
				if err != nil {
					if !errors.Is(err, limiter.ErrLimited) {
						t.Errorf("Acquire: %v", err)
						return
					}
					shed.Add(1)
					continue
				}
				admitted.Add(1)
				n := held.Add(1)
				for {
					m := maxHeld.Load()
					if n <= m || maxHeld.CompareAndSwap(m, n) {
						break
					}
				}
				if (w+i)%7 == 0 {
					time.Sleep(time.Microsecond)
				}
				held.Add(-1)
				if (w+i)%5 == 0 {
					p.Dropped()
				} else {
					p.Release()
				}
			}
		})
	}
	wg.Wait()
	if m := maxHeld.Load(); m > limit {
		t.Fatalf("%d permits held at once, limit %d", m, limit)
	}
	if got := a.Inflight(); got != 0 {
		t.Fatalf("final Inflight = %d, want 0", got)
	}
	if admitted.Load()+shed.Load() != workers*iters {
		t.Fatalf("admitted %d + shed %d != %d", admitted.Load(), shed.Load(), workers*iters)
	}
	t.Logf("admitted %d, shed %d, max held %d", admitted.Load(), shed.Load(), maxHeld.Load())
}

// TestAdaptiveConcurrentAdapting runs many goroutines while the limit moves.
func TestAdaptiveConcurrentAdapting(t *testing.T) {
	const lo, hi, workers, iters = 2, 16, 32, 300
	a := adNew(t, limiter.WithInitialLimit(8), limiter.WithMinLimit(lo), limiter.WithMaxLimit(hi),
		limiter.WithSampleWindow(time.Microsecond))
	var held, maxHeld atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range iters {
				p, err := a.Acquire(t.Context())
				if l := a.Limit(); l < lo || l > hi {
					t.Errorf("Limit %d outside [%d, %d]", l, lo, hi)
				}
				if err != nil {
					continue
				}
				n := held.Add(1)
				for {
					m := maxHeld.Load()
					if n <= m || maxHeld.CompareAndSwap(m, n) {
						break
					}
				}
				if (w+i)%3 == 0 {
					time.Sleep(time.Duration(i%4) * 100 * time.Microsecond)
				}
				held.Add(-1)
				switch (w + i) % 11 {
				case 0:
					p.Dropped()
				case 1:
					p.Ignore()
				default:
					p.Finish(nil)
				}
			}
		})
	}
	wg.Wait()
	if m := maxHeld.Load(); m > hi {
		t.Fatalf("%d permits held at once, max limit %d", m, hi)
	}
	if got := a.Inflight(); got != 0 {
		t.Fatalf("final Inflight = %d, want 0", got)
	}
}

func TestAdaptiveMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer func() { _ = mp.Shutdown(context.Background()) }()
		a := adNew(t, limiter.WithInitialLimit(10), limiter.WithMeterProvider(mp), limiter.WithName("checkout"))

		ctx := t.Context()
		var ps []limiter.Permit
		for range 12 {
			if p, err := a.Acquire(ctx); err == nil {
				ps = append(ps, p)
			}
		}
		rm := adCollect(t, reader)
		if got := adSumPoint(t, rm, "bulwark.limiter.decisions", "result", "allowed"); got != 10 {
			t.Errorf("allowed decisions = %d, want 10", got)
		}
		if got := adSumPoint(t, rm, "bulwark.limiter.decisions", "result", "limited"); got != 2 {
			t.Errorf("limited decisions = %d, want 2", got)
		}
		if got := adGaugeValue(t, rm, "bulwark.limiter.adaptive.inflight"); got != 10 {
			t.Errorf("inflight = %d, want 10", got)
		}
		if got := adGaugeValue(t, rm, "bulwark.limiter.adaptive.limit"); got != 10 {
			t.Errorf("limit gauge = %d, want 10", got)
		}

		time.Sleep(100 * time.Millisecond)
		for i := range ps {
			ps[i].Dropped()
		}
		rm = adCollect(t, reader)
		if got := adGaugeValue(t, rm, "bulwark.limiter.adaptive.inflight"); got != 0 {
			t.Errorf("inflight after release = %d, want 0", got)
		}
		if got, want := adGaugeValue(t, rm, "bulwark.limiter.adaptive.limit"), int64(a.Limit()); got != want || want != 9 {
			t.Errorf("limit gauge = %d, Limit() = %d, want both 9", got, want)
		}
	})
}

// TestAdaptiveMetricsDoNotKeepLimiterAlive checks that the gauge callback
// lets a limiter nobody uses be collected.
func TestAdaptiveMetricsDoNotKeepLimiterAlive(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	func() {
		a := adNew(t, limiter.WithMeterProvider(mp), limiter.WithName("checkout"))
		if got := adGaugeValue(t, adCollect(t, reader), "bulwark.limiter.adaptive.limit"); got != int64(a.Limit()) {
			t.Fatalf("limit gauge = %d, want %d", got, a.Limit())
		}
	}()
	for range 100 {
		runtime.GC()
		if !adHasMetric(adCollect(t, reader), "bulwark.limiter.adaptive.limit") {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("an unreachable limiter still reports its gauges after 100 collections")
}

func adHasMetric(rm metricdata.ResourceMetrics, name string) bool {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return true
			}
		}
	}
	return false
}

func adCollect(t *testing.T, r *sdkmetric.ManualReader) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("Collect: %v", err)
	}
	return rm
}

func adFindMetric(t *testing.T, rm metricdata.ResourceMetrics, name string) metricdata.Metrics {
	t.Helper()
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				if sm.Scope.Name != "github.com/bulwarkgo/bulwark/limiter" {
					t.Errorf("%s in scope %q", name, sm.Scope.Name)
				}
				return m
			}
		}
	}
	t.Fatalf("metric %s not recorded", name)
	return metricdata.Metrics{}
}

// adSumPoint returns the value of the Int64 sum data point of metric name
// whose attribute key has value.
func adSumPoint(t *testing.T, rm metricdata.ResourceMetrics, name, key, value string) int64 {
	t.Helper()
	m := adFindMetric(t, rm, name)
	sum, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		t.Fatalf("%s is %T, want Sum[int64]", name, m.Data)
	}
	if m.Unit == "" {
		t.Errorf("%s has no unit", name)
	}
	for _, dp := range sum.DataPoints {
		if v, ok := dp.Attributes.Value("bulwark.limiter.kind"); !ok || v.AsString() != "adaptive" {
			t.Errorf("%s kind = %v", name, v)
		}
		if v, ok := dp.Attributes.Value("bulwark.limiter.name"); !ok || v.AsString() != "checkout" {
			t.Errorf("%s name = %v", name, v)
		}
		if v, ok := dp.Attributes.Value(attribute.Key("bulwark.limiter." + key)); ok && v.AsString() == value {
			return dp.Value
		}
	}
	return 0
}

func adGaugeValue(t *testing.T, rm metricdata.ResourceMetrics, name string) int64 {
	t.Helper()
	m := adFindMetric(t, rm, name)
	g, ok := m.Data.(metricdata.Gauge[int64])
	if !ok || len(g.DataPoints) != 1 {
		t.Fatalf("%s is %#v, want one Gauge[int64] point", name, m.Data)
	}
	if v, ok := g.DataPoints[0].Attributes.Value("bulwark.limiter.name"); !ok || v.AsString() != "checkout" {
		t.Errorf("%s name = %v", name, v)
	}
	if m.Unit != "{request}" {
		t.Errorf("%s unit = %q, want {request}", name, m.Unit)
	}
	return g.DataPoints[0].Value
}
