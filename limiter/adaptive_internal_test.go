package limiter

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
)

func TestAdaptiveFinishMapping(t *testing.T) {
	for _, tc := range []struct {
		name           string
		err            error
		samples, drops int64
	}{
		{"nil", nil, 1, 0},
		{"business error", errors.New("card declined"), 1, 0},
		{"Canceled", context.Canceled, 0, 0},
		{"wrapped Canceled", fmt.Errorf("call: %w", context.Canceled), 0, 0},
		{"DeadlineExceeded", context.DeadlineExceeded, 1, 1},
		{"wrapped DeadlineExceeded", fmt.Errorf("call: %w", context.DeadlineExceeded), 1, 1},
		{"ErrLimited", fmt.Errorf("downstream: %w", ErrLimited), 1, 1},
		{"LimitedError", &LimitedError{}, 1, 1},
		{"shed error", errShed, 1, 1},
		{"both context errors", errors.Join(context.Canceled, context.DeadlineExceeded), 1, 1},
	} {
		a, err := NewAdaptive()
		if err != nil {
			t.Fatal(err)
		}
		p, err := a.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		p.Finish(tc.err)
		if got := a.count.Load(); got != tc.samples {
			t.Errorf("%s: %d samples, want %d", tc.name, got, tc.samples)
		}
		if got := a.drops.Load(); got != tc.drops {
			t.Errorf("%s: %d drops, want %d", tc.name, got, tc.drops)
		}
		if got := a.Inflight(); got != 0 {
			t.Errorf("%s: Inflight = %d, want 0", tc.name, got)
		}
	}
}

func newEstimator(limit float64) gradientEstimator {
	return gradientEstimator{
		limit: limit, min: 1, max: 1000,
		tolerance: defaultAdaptiveLatencyTolerance, smoothing: defaultAdaptiveSmoothing,
	}
}

func TestAdaptiveEstimator(t *testing.T) {
	const ms = 1e6
	approx := func(t *testing.T, what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9*math.Max(1, math.Abs(want)) {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}

	t.Run("stable and busy grows by smoothing × sqrt(limit)", func(t *testing.T) {
		e := newEstimator(100)
		e.update(10*10*ms, 10, 0, true)
		approx(t, "limit", e.limit, 100+0.2*10)
		approx(t, "long", e.long, 10*ms)
	})
	t.Run("stable and idle holds", func(t *testing.T) {
		e := newEstimator(100)
		e.update(10*10*ms, 10, 0, false)
		approx(t, "limit", e.limit, 100)
	})
	t.Run("latency within tolerance grows", func(t *testing.T) {
		e := newEstimator(100)
		e.long = 10 * ms
		e.update(10*19*ms, 10, 0, true) // short 19ms < 2 × long
		approx(t, "limit", e.limit, 102)
	})
	t.Run("latency beyond tolerance shrinks, at most by half per step", func(t *testing.T) {
		e := newEstimator(100)
		e.long = 10 * ms
		e.update(10*1000*ms, 10, 0, false) // short 1s: gradient clamps at 0.5
		approx(t, "limit", e.limit, 100*0.8+(100*0.5+10)*0.2)
	})
	t.Run("gradient between the bounds", func(t *testing.T) {
		e := newEstimator(100)
		e.long = 10 * ms
		e.update(10*30*ms, 10, 0, true)
		long := 10*ms + 20*ms*2/101
		g := 2 * long / (30 * ms)
		approx(t, "limit", e.limit, 100*0.8+(100*g+10)*0.2)
	})
	t.Run("drops back off by 0.9", func(t *testing.T) {
		e := newEstimator(100)
		e.update(10*ms, 1, 3, true)
		approx(t, "limit", e.limit, 90)
		approx(t, "long", e.long, 0) // drop windows take no latency sample
	})
	t.Run("long average decays when far above short", func(t *testing.T) {
		e := newEstimator(100)
		e.long = 100 * ms
		e.update(10*10*ms, 10, 0, true)
		approx(t, "long", e.long, (100*ms+(10*ms-100*ms)*2/101)*0.95)
	})
	t.Run("zero latency counts as stable", func(t *testing.T) {
		e := newEstimator(100)
		e.update(0, 10, 0, true)
		approx(t, "limit", e.limit, 102)
	})
	t.Run("empty window changes nothing", func(t *testing.T) {
		e := newEstimator(100)
		if got := e.update(0, 0, 0, true); got != 100 {
			t.Errorf("update = %d, want 100", got)
		}
	})
	t.Run("clamped to bounds", func(t *testing.T) {
		e := newEstimator(999.9)
		if got := e.update(10*ms, 1, 0, true); got != 1000 {
			t.Errorf("update = %d, want max 1000", got)
		}
		e = newEstimator(1)
		for range 10 {
			e.update(0, 0, 1, true)
		}
		if got := int64(e.limit); got != 1 {
			t.Errorf("limit = %d after drops, want min 1", got)
		}
	})
}
