package breaker_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/internal/israce"
)

var errDown = errors.New("dependency down")

func ok(context.Context) (int, error)   { return 1, nil }
func fail(context.Context) (int, error) { return 0, errDown }

func run(t *testing.T, b *breaker.Breaker[int], fn func(context.Context) (int, error), times int) {
	t.Helper()
	for range times {
		b.Execute(context.Background(), fn)
	}
}

func TestStateMachine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var changes []breaker.StateChange
		b := breaker.New[int]("pay",
			breaker.WithTripPolicy(breaker.ConsecutiveFailures(3)),
			breaker.WithOpenTimeout(time.Second),
			breaker.WithListener(func(c breaker.StateChange) { changes = append(changes, c) }))
		ctx := context.Background()

		run(t, b, fail, 2)
		if s := b.State(); s != breaker.StateClosed {
			t.Fatalf("after 2 failures: %v", s)
		}
		run(t, b, fail, 1)
		if s := b.State(); s != breaker.StateOpen {
			t.Fatalf("after 3 failures: %v", s)
		}
		called := false
		_, err := b.Execute(ctx, func(context.Context) (int, error) { called = true; return 1, nil })
		if !errors.Is(err, breaker.ErrOpen) || errors.Is(err, breaker.ErrTooManyRequests) || called {
			t.Fatalf("open breaker: err=%v called=%v", err, called)
		}

		time.Sleep(time.Second + time.Millisecond)
		if s := b.State(); s != breaker.StateHalfOpen {
			t.Fatalf("after the open timeout: %v", s)
		}
		run(t, b, fail, 1) // the probe fails: open again
		if s := b.State(); s != breaker.StateOpen {
			t.Fatalf("after a failed probe: %v", s)
		}
		time.Sleep(time.Second + time.Millisecond)
		if v, err := b.Execute(ctx, ok); v != 1 || err != nil {
			t.Fatalf("probe: %v, %v", v, err)
		}
		if s := b.State(); s != breaker.StateClosed {
			t.Fatalf("after a good probe: %v", s)
		}

		want := []string{"closed>open", "open>half-open", "half-open>open", "open>half-open", "half-open>closed"}
		var got []string
		for _, c := range changes {
			if c.Name != "pay" {
				t.Errorf("change named %q", c.Name)
			}
			got = append(got, c.From.String()+">"+c.To.String())
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("changes %v, want %v", got, want)
		}
	})
}

// A half-open breaker with its probe in flight rejects with
// ErrTooManyRequests, which also matches ErrOpen.
func TestHalfOpenProbeSlots(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := breaker.New[int]("maps", breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(time.Second))
		run(t, b, fail, 1)
		time.Sleep(time.Second + time.Millisecond)
		release := make(chan struct{})
		go b.Execute(context.Background(), func(context.Context) (int, error) { <-release; return 1, nil })
		synctest.Wait()
		_, err := b.Execute(context.Background(), ok)
		if !errors.Is(err, breaker.ErrTooManyRequests) || !errors.Is(err, breaker.ErrOpen) {
			t.Fatalf("second probe: %v", err)
		}
		close(release)
		synctest.Wait()
		if s := b.State(); s != breaker.StateClosed {
			t.Fatalf("after the probe succeeded: %v", s)
		}
	})
}

func TestContext(t *testing.T) {
	b := breaker.New[int]("db", breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)))

	// A done context is refused before the call and not counted.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	if _, err := b.Execute(ctx, func(context.Context) (int, error) { called = true; return 0, nil }); !errors.Is(err, context.Canceled) || called {
		t.Fatalf("done ctx: err=%v called=%v", err, called)
	}

	// A caller that cancels during the call is not a dependency failure.
	ctx, cancel = context.WithCancel(context.Background())
	b.Execute(ctx, func(ctx context.Context) (int, error) {
		cancel()
		<-ctx.Done()
		return 0, ctx.Err()
	})
	if c := b.Counts(); c.TotalFailures != 0 || b.State() != breaker.StateClosed {
		t.Fatalf("cancelled call counted: %+v, %v", c, b.State())
	}

	// A deadline that expires inside the call is the dependency's failure.
	synctest.Test(t, func(t *testing.T) {
		b := breaker.New[int]("db", breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)))
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := b.Execute(ctx, func(ctx context.Context) (int, error) {
			<-ctx.Done()
			return 0, ctx.Err()
		})
		if !errors.Is(err, context.DeadlineExceeded) || b.State() != breaker.StateOpen {
			t.Fatalf("deadline inside the call: err=%v state=%v", err, b.State())
		}
	})
}

func TestPanicCountsAsFailure(t *testing.T) {
	b := breaker.New[int]("p", breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)))
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("panic was swallowed")
			}
		}()
		b.Execute(context.Background(), func(context.Context) (int, error) { panic("boom") })
	}()
	if s := b.State(); s != breaker.StateOpen {
		t.Fatalf("after a panic: %v", s)
	}
}

func TestClassifier(t *testing.T) {
	errDeclined := errors.New("card declined")
	errBadInput := errors.New("bad input")
	b := breaker.New[int]("pay",
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
		breaker.WithClassifier(func(err error) breaker.Outcome {
			switch {
			case err == nil, errors.Is(err, errDeclined):
				return breaker.Success
			case errors.Is(err, errBadInput):
				return breaker.Ignored
			}
			return breaker.Failure
		}))
	ctx := context.Background()
	if _, err := b.Execute(ctx, func(context.Context) (int, error) { return 0, errDeclined }); err != errDeclined {
		t.Fatalf("the caller must get the function's error: %v", err)
	}
	b.Execute(ctx, func(context.Context) (int, error) { return 0, errBadInput })
	c := b.Counts()
	if c.TotalSuccesses != 1 || c.TotalFailures != 0 || b.State() != breaker.StateClosed {
		t.Fatalf("counts %+v state %v", c, b.State())
	}
}

func TestFailureRateEdges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := breaker.FailureRate(0.5, 10, 10*time.Second)
		b := breaker.New[int]("r", breaker.WithTripPolicy(p))
		// 9 failures: every call failed, but the minimum is not reached.
		run(t, b, fail, 9)
		if s := b.State(); s != breaker.StateClosed {
			t.Fatalf("below minCalls: %v", s)
		}
		b.Reset()
		// 5 successes then 5 failures: exactly 50% at exactly 10 calls.
		run(t, b, ok, 5)
		run(t, b, fail, 4)
		if s := b.State(); s != breaker.StateClosed {
			t.Fatalf("4 of 9: %v", s)
		}
		run(t, b, fail, 1)
		if s := b.State(); s != breaker.StateOpen {
			t.Fatalf("5 of 10 at ratio 0.5: %v", s)
		}

		// Outcomes older than the window are forgotten.
		b.Reset()
		run(t, b, fail, 4)
		time.Sleep(11 * time.Second)
		run(t, b, ok, 5)
		run(t, b, fail, 1)
		if s := b.State(); s != breaker.StateClosed {
			t.Fatalf("old failures still counted: %v", s)
		}
	})
}

func TestFailureRateOfLastEdges(t *testing.T) {
	b := breaker.New[int]("n", breaker.WithTripPolicy(breaker.FailureRateOfLast(0.3, 10)))
	run(t, b, fail, 3) // 3 of 3, but fewer than 10 calls
	run(t, b, ok, 6)
	if s := b.State(); s != breaker.StateClosed {
		t.Fatalf("9 calls: %v", s)
	}
	run(t, b, ok, 1) // 10 calls, 3 failures: 30%, but trips only on a failure
	run(t, b, ok, 3) // the 3 failures slide out
	run(t, b, fail, 2)
	if s := b.State(); s != breaker.StateClosed {
		t.Fatalf("2 of the last 10: %v", s)
	}
	run(t, b, fail, 1)
	if s := b.State(); s != breaker.StateOpen {
		t.Fatalf("3 of the last 10 at ratio 0.3: %v", s)
	}
}

func TestSlowCallRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slow := func(context.Context) (int, error) { time.Sleep(200 * time.Millisecond); return 1, nil }
		b := breaker.New[int]("s", breaker.WithTripPolicy(breaker.SlowCallRate(100*time.Millisecond, 0.5, 4, 10*time.Second)))
		run(t, b, ok, 2)
		run(t, b, slow, 1)
		if s := b.State(); s != breaker.StateClosed {
			t.Fatalf("1 slow of 3, below minCalls: %v", s)
		}
		// The slow call's caller still gets its value.
		if v, err := b.Execute(context.Background(), slow); v != 1 || err != nil {
			t.Fatalf("slow call: %v, %v", v, err)
		}
		if s := b.State(); s != breaker.StateOpen {
			t.Fatalf("2 slow of 4 at ratio 0.5: %v", s)
		}
		// Counts restart with the new state.
		if c := b.Counts(); c != (breaker.Counts{}) {
			t.Fatalf("counts after opening: %+v", c)
		}
	})
}

func TestAnyOf(t *testing.T) {
	b := breaker.New[int]("a", breaker.WithTripPolicy(breaker.AnyOf(
		breaker.ConsecutiveFailures(3),
		breaker.FailureRateOfLast(0.9, 100),
	)))
	run(t, b, fail, 3)
	if s := b.State(); s != breaker.StateOpen {
		t.Fatalf("3 in a row: %v", s)
	}
}

// gobreaker runs OnStateChange under its mutex, where a callback asking
// for the state deadlocks. Listeners here run outside any lock.
func TestListenerMayCallTheBreaker(t *testing.T) {
	var b *breaker.Breaker[int]
	var seen []breaker.State
	b = breaker.New[int]("l",
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
		breaker.WithListener(func(c breaker.StateChange) {
			seen = append(seen, b.State())
			b.Counts()
		}))
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(t, b, fail, 1)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a listener calling State() deadlocked the breaker")
	}
	if len(seen) != 1 || seen[0] != breaker.StateOpen {
		t.Fatalf("listener saw %v", seen)
	}
}

func TestListenersInOrderUnderConcurrency(t *testing.T) {
	var mu sync.Mutex
	inside := atomic.Int32{}
	var changes []breaker.StateChange
	b := breaker.New[int]("c",
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
		breaker.WithOpenTimeout(time.Millisecond),
		breaker.WithListener(func(c breaker.StateChange) {
			if inside.Add(1) != 1 {
				t.Error("listeners ran concurrently")
			}
			mu.Lock()
			changes = append(changes, c)
			mu.Unlock()
			inside.Add(-1)
		}))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				if (g+i)%3 == 0 {
					run(t, b, fail, 1)
				} else {
					run(t, b, ok, 1)
				}
			}
		})
	}
	wg.Wait()
	b.State()
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(changes); i++ {
		if changes[i].From != changes[i-1].To {
			t.Fatalf("change %d goes from %v, the one before went to %v", i, changes[i].From, changes[i-1].To)
		}
	}
}

func TestManualControl(t *testing.T) {
	var changes []string
	b := breaker.New[int]("m",
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
		breaker.WithListener(func(c breaker.StateChange) { changes = append(changes, c.From.String()+">"+c.To.String()) }))
	ctx := context.Background()

	if !b.Ready() {
		t.Fatal("a new breaker is not ready")
	}
	b.ForceOpen()
	if _, err := b.Execute(ctx, ok); !errors.Is(err, breaker.ErrOpen) || b.State() != breaker.StateOpen {
		t.Fatalf("forced open: %v, %v", err, b.State())
	}
	if b.Ready() {
		t.Fatal("an open breaker is ready")
	}
	if _, err := b.Allow(ctx); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("forced open Allow: %v", err)
	}
	b.Reset()
	b.Disable()
	run(t, b, fail, 10)
	if v, err := b.Execute(ctx, ok); v != 1 || err != nil || b.State() != breaker.StateClosed {
		t.Fatalf("disabled: %v, %v, %v", v, err, b.State())
	}
	b.Reset()
	run(t, b, fail, 1)
	if b.State() != breaker.StateOpen {
		t.Fatal("did not trip after Reset")
	}
	b.Reset()
	if c := b.Counts(); b.State() != breaker.StateClosed || c.Requests != 0 {
		t.Fatalf("after Reset: %v %+v", b.State(), c)
	}
	if v, err := b.Execute(ctx, ok); v != 1 || err != nil {
		t.Fatalf("Execute after Reset of an open breaker: %v, %v", v, err)
	}
	want := "closed>open open>closed closed>open open>closed"
	if got := strings.Join(changes, " "); got != want {
		t.Fatalf("changes %q, want %q", got, want)
	}
}

func TestJitteredOpenTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for range 20 {
			b := breaker.New[int]("j",
				breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
				breaker.WithOpenTimeout(time.Second),
				breaker.WithJitter(0.5))
			run(t, b, fail, 1)
			time.Sleep(time.Second - time.Millisecond)
			if s := b.State(); s != breaker.StateOpen {
				t.Fatalf("before the base timeout: %v", s)
			}
			time.Sleep(501 * time.Millisecond)
			if s := b.State(); s != breaker.StateHalfOpen {
				t.Fatalf("after base plus the largest jitter: %v", s)
			}
		}
	})
}

func TestAllow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := breaker.New[int]("two", breaker.WithTripPolicy(breaker.ConsecutiveFailures(2)), breaker.WithOpenTimeout(time.Second))
		ctx := context.Background()
		for range 2 {
			done, err := b.Allow(ctx)
			if err != nil {
				t.Fatal(err)
			}
			done(errDown)
		}
		if _, err := b.Allow(ctx); !errors.Is(err, breaker.ErrOpen) {
			t.Fatalf("open: %v", err)
		}
		time.Sleep(time.Second + time.Millisecond)
		done, err := b.Allow(ctx)
		if err != nil {
			t.Fatalf("half-open probe: %v", err)
		}
		if _, err := b.Allow(ctx); !errors.Is(err, breaker.ErrTooManyRequests) {
			t.Fatalf("second probe: %v", err)
		}
		done(nil)
		done(nil) // a second call is ignored
		if s := b.State(); s != breaker.StateClosed {
			t.Fatalf("after the probe: %v", s)
		}
	})
}

func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	b := breaker.New[int]("gw", breaker.WithTripPolicy(breaker.ConsecutiveFailures(2)), breaker.WithMeterProvider(mp))
	run(t, b, ok, 3)
	run(t, b, fail, 2)
	run(t, b, ok, 4) // rejected
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	calls := map[string]int64{}
	var transitions int64
	state := int64(-1)
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					if name, _ := dp.Attributes.Value("bulwark.breaker.name"); name.AsString() != "gw" {
						t.Errorf("%s without the breaker's name", m.Name)
					}
					switch m.Name {
					case "bulwark.breaker.calls":
						o, _ := dp.Attributes.Value("bulwark.breaker.outcome")
						calls[o.AsString()] += dp.Value
					case "bulwark.breaker.transitions":
						transitions += dp.Value
					}
				}
			case metricdata.Gauge[int64]:
				if m.Name == "bulwark.breaker.state" {
					state = d.DataPoints[0].Value
				}
			}
		}
	}
	if calls["success"] != 3 || calls["failure"] != 2 || calls["rejected"] != 4 {
		t.Errorf("calls %v", calls)
	}
	if transitions != 1 || state != int64(breaker.StateOpen) {
		t.Errorf("transitions %d, state gauge %d", transitions, state)
	}
}

func TestOptionsValidated(t *testing.T) {
	for _, tc := range []struct {
		opt   breaker.Option
		field string
	}{
		{breaker.WithOpenTimeout(0), "WithOpenTimeout"},
		{breaker.WithJitter(1.5), "WithJitter"},
		{breaker.WithHalfOpenProbes(0), "WithHalfOpenProbes"},
		{breaker.WithClassifier(nil), "WithClassifier"},
		{breaker.WithListener(nil), "WithListener"},
		{breaker.WithTripPolicy(nil), "WithTripPolicy"},
		{breaker.WithTripPolicy(breaker.ConsecutiveFailures(0)), "ConsecutiveFailures"},
		{breaker.WithTripPolicy(breaker.FailureRate(0, 1, time.Second)), "FailureRate ratio"},
		{breaker.WithTripPolicy(breaker.FailureRate(0.5, 0, time.Second)), "FailureRate minCalls"},
		{breaker.WithTripPolicy(breaker.FailureRate(0.5, 1, time.Millisecond)), "FailureRate window"},
		{breaker.WithTripPolicy(breaker.FailureRateOfLast(1.1, 10)), "FailureRateOfLast ratio"},
		{breaker.WithTripPolicy(breaker.SlowCallRate(0, 0.5, 1, time.Second)), "SlowCallRate threshold"},
		{breaker.WithTripPolicy(breaker.AnyOf()), "AnyOf"},
		{breaker.WithTripPolicy(breaker.AnyOf(breaker.FailureRate(0.5, 1, time.Second), breaker.FailureRate(0.2, 1, time.Second))), "AnyOf"},
	} {
		err := breaker.ValidateOptions(tc.opt)
		if !errors.Is(err, breaker.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: %v", tc.field, err)
		}
		func() {
			defer func() {
				if r := recover(); r == nil {
					t.Errorf("%s: New did not panic", tc.field)
				}
			}()
			breaker.New[int]("x", tc.opt)
		}()
	}
	if err := breaker.ValidateOptions(breaker.WithOpenTimeout(time.Second)); err != nil {
		t.Fatal(err)
	}
}

func TestClosedExecuteDoesNotAllocate(t *testing.T) {
	if israce.Enabled {
		t.Skip("the race detector allocates")
	}
	b := breaker.New[int]("alloc")
	ctx := context.Background()
	if n := testing.AllocsPerRun(1000, func() { b.Execute(ctx, ok) }); n != 0 {
		t.Fatalf("closed Execute allocates %v times", n)
	}
	b.ForceOpen()
	if n := testing.AllocsPerRun(1000, func() { b.Execute(ctx, ok) }); n != 0 {
		t.Fatalf("rejection allocates %v times", n)
	}
}
