package breaker_test

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"

	"github.com/bulwarkgo/bulwark/breaker"
)

var errGroupDown = errors.New("dependency down")

func groupOK(context.Context) (int, error)   { return 1, nil }
func groupFail(context.Context) (int, error) { return 0, errGroupDown }

// groupTripAfter is a member template: open after n failures in a row, for an
// hour, so tests decide when a breaker opens and it stays open.
func groupTripAfter(n int) breaker.GroupOption {
	return breaker.WithBreakerOptions(
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(n)),
		breaker.WithOpenTimeout(time.Hour))
}

func TestGroupMembersFromTemplate(t *testing.T) {
	var (
		mu      sync.Mutex
		changes []breaker.StateChange
	)
	g := breaker.NewGroup[int]("hosts", groupTripAfter(2),
		breaker.WithBreakerOptions(breaker.WithListener(func(c breaker.StateChange) {
			mu.Lock()
			defer mu.Unlock()
			changes = append(changes, c)
		})))
	ctx := t.Context()

	for range 2 {
		if _, err := g.Execute(ctx, "a", groupFail); !errors.Is(err, errGroupDown) {
			t.Fatalf("Execute(a) = %v, want the call's own error", err)
		}
	}
	if got := g.State("a"); got != breaker.StateOpen {
		t.Errorf("State(a) = %v after 2 failures, want open", got)
	}
	called := false
	_, err := g.Execute(ctx, "a", func(context.Context) (int, error) { called = true; return 0, nil })
	if !errors.Is(err, breaker.ErrOpen) || called {
		t.Errorf("Execute(a) on an open breaker = %v (fn called: %v), want ErrOpen without a call", err, called)
	}

	// Another key has its own, closed, breaker.
	if v, err := g.Execute(ctx, "b", groupOK); v != 1 || err != nil {
		t.Errorf("Execute(b) = %v, %v; want 1, nil", v, err)
	}
	if got := g.State("b"); got != breaker.StateClosed {
		t.Errorf("State(b) = %v, want closed", got)
	}

	a := g.Get("a")
	if a.Name() != "hosts/a" {
		t.Errorf("member name = %q, want hosts/a", a.Name())
	}
	if g.Get("a") != a {
		t.Error("Get(a) returned a different breaker the second time")
	}
	if g.Len() != 2 {
		t.Errorf("Len = %d, want 2", g.Len())
	}
	if g.Name() != "hosts" {
		t.Errorf("Name = %q, want hosts", g.Name())
	}

	mu.Lock()
	defer mu.Unlock()
	if len(changes) != 1 || changes[0].Name != "hosts/a" ||
		changes[0].From != breaker.StateClosed || changes[0].To != breaker.StateOpen {
		t.Errorf("listener saw %+v, want one change of hosts/a from closed to open", changes)
	}
}

func TestGroupStateOfUnknownKeyDoesNotCreate(t *testing.T) {
	g := breaker.NewGroup[int]("g")
	if got := g.State("nobody"); got != breaker.StateClosed {
		t.Errorf("State(unknown) = %v, want closed", got)
	}
	if g.Len() != 0 {
		t.Errorf("Len = %d after State of an unknown key, want 0", g.Len())
	}
}

func TestGroupExecuteDoneContext(t *testing.T) {
	g := breaker.NewGroup[int]("g")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	called := false
	_, err := g.Execute(ctx, "k", func(context.Context) (int, error) { called = true; return 0, nil })
	if !errors.Is(err, context.Canceled) || called {
		t.Errorf("Execute with a done context = %v (fn called: %v), want context.Canceled without a call", err, called)
	}
	if g.Len() != 0 {
		t.Errorf("Len = %d, want 0: a done call creates no member", g.Len())
	}
}

func TestGroupListenerMayUseGroup(t *testing.T) {
	var g *breaker.Group[int]
	var seen atomic.Value
	g = breaker.NewGroup[int]("g", groupTripAfter(1),
		breaker.WithBreakerOptions(breaker.WithListener(func(c breaker.StateChange) {
			key := strings.TrimPrefix(c.Name, "g/")
			seen.Store(g.State(key).String() + " " + strconv.Itoa(g.Len()))
			g.Get("other") // may even create another member
		})))
	_, _ = g.Execute(t.Context(), "k", groupFail)
	if got := seen.Load(); got != "open 1" {
		t.Errorf("listener saw %v, want \"open 1\"", got)
	}
}

func TestGroupInvalidConfig(t *testing.T) {
	for _, tc := range []struct {
		field string
		opts  []breaker.GroupOption
	}{
		{"WithMaxKeys", []breaker.GroupOption{breaker.WithMaxKeys(0)}},
		{"WithIdleTimeout", []breaker.GroupOption{breaker.WithIdleTimeout(0)}},
		{"WithIdleTimeout", []breaker.GroupOption{breaker.WithIdleTimeout(-time.Second)}},
		{"opts", []breaker.GroupOption{nil}},
		{"WithOpenTimeout", []breaker.GroupOption{breaker.WithBreakerOptions(breaker.WithOpenTimeout(-1))}},
		{"ConsecutiveFailures", []breaker.GroupOption{groupTripAfter(0)}},
	} {
		err := breaker.ValidateGroupOptions(tc.opts...)
		if !errors.Is(err, breaker.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: ValidateGroupOptions = %v, want ErrInvalidConfig naming %s", tc.field, err, tc.field)
		}
		if got := groupPanic(func() { breaker.NewGroup[int]("g", tc.opts...) }); got != err.Error() {
			t.Errorf("%s: NewGroup panicked with %q, want %q", tc.field, got, err)
		}
	}
	if err := breaker.ValidateGroupOptions(breaker.WithMaxKeys(1), breaker.WithIdleTimeout(time.Second), groupTripAfter(1)); err != nil {
		t.Errorf("ValidateGroupOptions(valid) = %v", err)
	}
	if got := groupPanic(func() { breaker.NewGroup[int]("") }); !strings.Contains(got, "name") {
		t.Errorf("NewGroup(\"\") panicked with %q, want an error naming the name", got)
	}
}

// groupPanic runs f and returns the error it panicked with, as text.
func groupPanic(f func()) (msg string) {
	defer func() {
		r := recover()
		if err, ok := r.(error); ok && errors.Is(err, breaker.ErrInvalidConfig) {
			msg = err.Error()
		} else if r != nil {
			msg = "not an ErrInvalidConfig"
		}
	}()
	f()
	return "no panic"
}

func TestGroupMetricsCarryGroupName(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	g := breaker.NewGroup[int]("payments", groupTripAfter(1),
		breaker.WithBreakerOptions(breaker.WithMeterProvider(mp)))
	for _, key := range []string{"merchant-1", "merchant-2", "merchant-3"} {
		_, _ = g.Execute(t.Context(), key, groupOK)
	}
	_, _ = g.Execute(t.Context(), "merchant-4", groupFail)

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	var calls int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == "bulwark.breaker.state" {
				t.Errorf("members report a state gauge, one series per key")
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				if name, _ := dp.Attributes.Value("bulwark.breaker.name"); name.AsString() != "payments" {
					t.Errorf("%s: name attribute %q, want the group's", m.Name, name.AsString())
				}
				for _, kv := range dp.Attributes.ToSlice() {
					if strings.Contains(kv.Value.Emit(), "merchant") {
						t.Errorf("%s: attribute %s carries a key", m.Name, kv.Key)
					}
				}
				if m.Name == "bulwark.breaker.calls" {
					calls += dp.Value
					if o, _ := dp.Attributes.Value("bulwark.breaker.outcome"); o == attribute.StringValue("success") && dp.Value != 3 {
						t.Errorf("successes = %d, want 3 in one series", dp.Value)
					}
				}
			}
		}
	}
	if calls != 4 {
		t.Errorf("calls counted = %d, want 4", calls)
	}
}

func TestGroupExecuteDoesNotAllocate(t *testing.T) {
	g := breaker.NewGroup[int]("g")
	ctx := t.Context()
	_, _ = g.Execute(ctx, "k", groupOK)
	if n := testing.AllocsPerRun(100, func() { _, _ = g.Execute(ctx, "k", groupOK) }); n != 0 {
		t.Errorf("Execute on a known key: %v allocations, want 0", n)
	}
}

// TestGroupBoundedKeys feeds a million distinct keys through a group of at
// most 1000: Len stays at the bound and the heap does not grow with the
// keys.
func TestGroupBoundedKeys(t *testing.T) {
	const maxKeys = 1000
	n := 1_000_000
	if testing.Short() {
		n = 100_000 // still a hundred times the bound
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	start := heap()
	g := breaker.NewGroup[int]("g", breaker.WithMaxKeys(maxKeys))
	ctx := t.Context()
	var before uint64
	for i := range n {
		if i == 10*maxKeys {
			// Every shard is full by now.
			before = heap()
		}
		if _, err := g.Execute(ctx, "key-"+strconv.Itoa(i), groupOK); err != nil {
			t.Fatal(err)
		}
		if i%100_000 == 0 && g.Len() > maxKeys {
			t.Fatalf("Len = %d after %d keys, above the bound %d", g.Len(), i+1, maxKeys)
		}
	}
	if got := g.Len(); got != maxKeys {
		t.Errorf("Len = %d after %d keys, want the bound %d", got, n, maxKeys)
	}
	// Loose: the members' memory is a few megabytes; what matters is that
	// it does not grow with the number of keys seen.
	after := heap()
	mb := func(b uint64) float64 { return (float64(b) - float64(start)) / (1 << 20) }
	t.Logf("heap above the empty group: %.2f MB after %d keys, %.2f MB after %d keys; %d members held",
		mb(before), 10*maxKeys, mb(after), n, g.Len())
	if after > before+16<<20 {
		t.Errorf("heap grew from %d to %d bytes over %d keys", before, after, n-10*maxKeys)
	}
	runtime.KeepAlive(g)
}

func TestGroupIdleEviction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := breaker.NewGroup[int]("g", breaker.WithIdleTimeout(time.Minute), groupTripAfter(1))
		ctx := t.Context()
		_, _ = g.Execute(ctx, "idle", groupOK)
		idle := g.Get("idle")
		_, _ = g.Execute(ctx, "open", groupFail)
		g.Get("forced").ForceOpen()
		time.Sleep(30 * time.Second)
		_, _ = g.Execute(ctx, "busy", groupOK)
		time.Sleep(45 * time.Second) // busy: 45s unused, the others 75s

		g.Sweep()
		if g.Len() != 3 {
			t.Errorf("Len = %d after Sweep, want 3 (busy, open and forced)", g.Len())
		}
		for _, k := range []string{"open", "forced"} {
			if got := g.State(k); got != breaker.StateOpen {
				t.Errorf("State(%s) = %v: an open member was dropped for idleness", k, got)
			}
		}
		if g.Get("idle") == idle {
			t.Error("the idle member was kept")
		}
	})
}

func TestGroupInsertDropsIdleMembers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// 8 keys make one shard, so every insert samples all of it.
		g := breaker.NewGroup[int]("g", breaker.WithMaxKeys(8), breaker.WithIdleTimeout(time.Minute))
		ctx := t.Context()
		for i := range 5 {
			_, _ = g.Execute(ctx, strconv.Itoa(i), groupOK)
		}
		time.Sleep(2 * time.Minute)
		_, _ = g.Execute(ctx, "new", groupOK)
		if g.Len() != 1 {
			t.Errorf("Len = %d, want 1: the insert drops the idle members it samples", g.Len())
		}
	})
}

func TestGroupFullShardEvictsClosedFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := breaker.NewGroup[int]("g", breaker.WithMaxKeys(8), groupTripAfter(1))
		ctx := t.Context()
		open := make([]string, 7)
		for i := range open {
			open[i] = "open-" + strconv.Itoa(i)
			_, _ = g.Execute(ctx, open[i], groupFail)
			time.Sleep(time.Second)
		}
		_, _ = g.Execute(ctx, "closed", groupOK) // the most recently used
		time.Sleep(time.Second)

		_, _ = g.Execute(ctx, "new", groupFail) // full: the closed member goes
		if g.Len() != 8 {
			t.Errorf("Len = %d, want 8", g.Len())
		}
		for _, k := range open {
			if got := g.State(k); got != breaker.StateOpen {
				t.Errorf("State(%s) = %v, want open: a closed member should have gone first", k, got)
			}
		}
		time.Sleep(time.Second)

		// All eight are open now: the least recently used goes.
		_, _ = g.Execute(ctx, "another", groupOK)
		if g.Len() != 8 {
			t.Errorf("Len = %d, want 8", g.Len())
		}
		if got := g.State(open[0]); got != breaker.StateClosed {
			t.Errorf("State(%s) = %v, want it dropped as the least recently used", open[0], got)
		}
		for _, k := range append(open[1:], "new") {
			if got := g.State(k); got != breaker.StateOpen {
				t.Errorf("State(%s) = %v, want open", k, got)
			}
		}
	})
}

func TestGroupJanitor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := breaker.NewGroup[int]("g", breaker.WithIdleTimeout(time.Minute))
		stop := g.StartJanitor(time.Minute)
		_, _ = g.Execute(t.Context(), "k", groupOK)
		time.Sleep(3 * time.Minute)
		synctest.Wait()
		if g.Len() != 0 {
			t.Errorf("Len = %d, want 0 after the janitor's sweeps", g.Len())
		}
		stop()
		stop() // a second stop is harmless
		// synctest.Test fails if the janitor's goroutine is still there.
	})
}

func TestGroupJanitorStopLeavesNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	g := breaker.NewGroup[int]("g")
	stop := g.StartJanitor(time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	stop()
}

func TestGroupStartJanitorPanicsOnBadInterval(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("StartJanitor(0) did not panic")
		}
	}()
	breaker.NewGroup[int]("g").StartJanitor(0)
}

func TestGroupConcurrent(t *testing.T) {
	const maxKeys = 64
	g := breaker.NewGroup[int]("g", breaker.WithMaxKeys(maxKeys), breaker.WithIdleTimeout(time.Millisecond),
		breaker.WithBreakerOptions(breaker.WithTripPolicy(breaker.ConsecutiveFailures(3)), breaker.WithOpenTimeout(time.Millisecond)))
	stop := g.StartJanitor(time.Millisecond)
	defer stop()
	ctx := t.Context()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 3000 {
				key := strconv.Itoa((i*7 + w) % 200)
				fn := groupOK
				if i%3 == 0 {
					fn = groupFail
				}
				_, err := g.Execute(ctx, key, fn)
				if err != nil && !errors.Is(err, errGroupDown) && !errors.Is(err, breaker.ErrOpen) {
					t.Errorf("Execute: unexpected error %v", err)
					return
				}
				switch i % 50 {
				case 1:
					_ = g.State(key)
				case 2:
					g.Get(key).Counts()
				case 3:
					_ = g.Len()
				case 4:
					g.Sweep()
				}
			}
		})
	}
	wg.Wait()
	if g.Len() > maxKeys {
		t.Errorf("Len = %d, above the bound %d", g.Len(), maxKeys)
	}
}
