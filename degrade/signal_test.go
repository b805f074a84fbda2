package degrade_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/degrade"
	"github.com/bulwarkgo/bulwark/internal/israce"
)

func TestSignalConstructorsValidate(t *testing.T) {
	for _, c := range []struct {
		name  string
		err   error
		field string
	}{
		{"rate window", second(degrade.NewErrorRate(0, 10)), "window"},
		{"rate minCalls", second(degrade.NewErrorRate(time.Second, 0)), "minCalls"},
		{"latency window", second(degrade.NewLatency(-time.Second, 0.99, 10)), "window"},
		{"latency q percent", second(degrade.NewLatency(time.Second, 99, 10)), "0.99 for p99"},
		{"latency q zero", second(degrade.NewLatency(time.Second, 0, 10)), "q"},
		{"latency q NaN", second(degrade.NewLatency(time.Second, math.NaN(), 10)), "q"},
		{"latency minCalls", second(degrade.NewLatency(time.Second, 0.99, 0)), "minCalls"},
	} {
		if !errors.Is(c.err, degrade.ErrInvalidConfig) || !strings.Contains(c.err.Error(), c.field) {
			t.Errorf("%s: got %v, want ErrInvalidConfig naming %s", c.name, c.err, c.field)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func TestErrorRateMinCalls(t *testing.T) {
	r, err := degrade.NewErrorRate(time.Minute, 5)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		r.Observe(true)
	}
	r.Observe(false)
	if v := r.Value(); v != 0 {
		t.Fatalf("4 calls under minCalls 5 read %v, want 0", v)
	}
	r.Observe(false)
	if v := r.Value(); v != 0.6 {
		t.Fatalf("3 failed of 5 read %v, want 0.6", v)
	}
}

func TestErrorRateRecord(t *testing.T) {
	r, err := degrade.NewErrorRate(time.Minute, 1)
	if err != nil {
		t.Fatal(err)
	}
	// Neither a caller giving up nor a degraded feature says anything
	// about the dependency.
	r.Record(context.Canceled)
	r.Record(fmt.Errorf("get reviews: %w", context.Canceled))
	r.Record(&degrade.DegradedError{Feature: "reviews", Message: "busy"})
	r.Record(fmt.Errorf("handler: %w", degrade.ErrDegraded))
	if v := r.Value(); v != 0 {
		t.Fatalf("uncounted outcomes read %v", v)
	}
	r.Record(nil)
	r.Record(context.DeadlineExceeded) // the dependency was too slow: a failure
	r.Record(errors.New("503"))
	r.Record(nil)
	if v := r.Value(); v != 0.5 {
		t.Fatalf("2 failed of 4 read %v, want 0.5", v)
	}
}

// TestErrorRateWindowSlides drives the window with ValueAt. Calls are
// placed in time by the Value calls around them: the rate keeps a copy of
// its counters at most every window/10.
func TestErrorRateWindowSlides(t *testing.T) {
	r, err := degrade.NewErrorRate(10*time.Second, 10)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	at := func(d time.Duration) float64 { return r.ValueAt(t0.Add(d)) }
	record := func(calls, failed int) {
		for i := range calls {
			r.Observe(i < failed)
		}
	}

	record(10, 10) // between 0 and 1 s
	if v := at(s(1)); v != 1 {
		t.Fatalf("at 1 s: %v, want 1", v)
	}
	record(10, 0) // between 1 and 5 s
	if v := at(s(5)); v != 0.5 {
		t.Fatalf("at 5 s: %v, want 0.5", v)
	}
	// At 11 s the window starts from the copy at 1 s: the failures have
	// left it.
	if v := at(s(11)); v != 0 {
		t.Fatalf("at 11 s: %v, want 0", v)
	}
	record(30, 3) // between 11 and 12 s
	if v := at(s(12)); math.Abs(v-0.075) > 1e-12 {
		t.Fatalf("at 12 s: %v, want 3/40", v) // from the copy at 1 s
	}
	if v := at(s(16)); v != 0.1 {
		t.Fatalf("at 16 s: %v, want 0.1", v) // from the copy at 5 s
	}
	// An instant before one already seen counts as that one.
	if v := at(s(3)); v != 0.1 {
		t.Fatalf("going back in time: %v, want 0.1", v)
	}
	// After a long quiet spell the window holds nothing.
	if v := at(time.Hour); v != 0 {
		t.Fatalf("an hour later: %v, want 0", v)
	}
	record(20, 20)
	if v := at(time.Hour + s(0.5)); v != 1 {
		t.Fatalf("after the quiet spell: %v, want 1", v)
	}
}

func TestErrorRateConcurrent(t *testing.T) {
	r, err := degrade.NewErrorRate(time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	const goroutines, calls = 8, 4000
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range calls {
				r.Observe(i%4 == 0)
				if i%1000 == g {
					if v := r.Value(); v < 0 || v > 1 {
						t.Errorf("Value() = %v while recording", v)
					}
				}
			}
		})
	}
	wg.Wait()
	if v := r.Value(); v != 0.25 {
		t.Fatalf("Value() = %v, want 0.25", v)
	}
}

func TestLatencyQuantiles(t *testing.T) {
	for _, q := range []float64{0.5, 0.9, 0.99, 1} {
		l, err := degrade.NewLatency(time.Minute, q, 100)
		if err != nil {
			t.Fatal(err)
		}
		// 1 ms, 2 ms, ... 1000 ms: the quantile q is q seconds.
		for i := 1; i <= 1000; i++ {
			l.Record(time.Duration(i) * time.Millisecond)
		}
		if v := l.Value(); math.Abs(v-q)/q > 0.125 {
			t.Errorf("p%v of 1..1000 ms = %v s, want %v within 12.5%%", q*100, v, q)
		}
	}
}

// TestLatencyBuckets records one duration at a time: the maximum (q = 1)
// is the top of its bucket, at least the duration and at most 12.5% (or
// one bucket of 1.024 µs) above it.
func TestLatencyBuckets(t *testing.T) {
	for d := time.Duration(1); d < 5*time.Minute; d = d*9/8 + 1 {
		l, err := degrade.NewLatency(time.Minute, 1, 1)
		if err != nil {
			t.Fatal(err)
		}
		l.Record(d)
		got := l.Value()
		want := d.Seconds()
		if d >= 274877906944 { // 2^38 ns: every longer call counts as this
			if got != 274.877906944 {
				t.Errorf("%v read %v s, want 274.877906944", d, got)
			}
			continue
		}
		if got < want || got > want*1.125+1.024e-6 {
			t.Errorf("%v read %v s", d, got)
		}
	}
	l, _ := degrade.NewLatency(time.Minute, 1, 1)
	l.Record(-time.Second)
	if v := l.Value(); v != 1.024e-6 {
		t.Errorf("a negative duration read %v, want the first bucket's top", v)
	}
}

func TestLatencyMinCallsAndWindow(t *testing.T) {
	l, err := degrade.NewLatency(10*time.Second, 0.99, 50)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	at := func(d time.Duration) float64 { return l.ValueAt(t0.Add(d)) }
	for range 49 {
		l.Record(2 * time.Second)
	}
	if v := at(s(1)); v != 0 {
		t.Fatalf("49 calls under minCalls 50 read %v", v)
	}
	for range 51 {
		l.Record(10 * time.Millisecond)
	}
	if v := at(s(2)); v < 1.75 || v > 2.25 {
		t.Fatalf("p99 with 49 slow calls of 100: %v, want about 2", v)
	}
	for range 1000 {
		l.Record(10 * time.Millisecond)
	}
	// At 12 s the window starts from the copy at 2 s: only fast calls.
	if v := at(s(12)); v < 0.009 || v > 0.0113 {
		t.Fatalf("p99 once the slow calls left the window: %v, want about 0.01", v)
	}
	if v := at(s(30)); v != 0 {
		t.Fatalf("an empty window read %v", v)
	}
}

func TestLatencyConcurrent(t *testing.T) {
	l, err := degrade.NewLatency(time.Hour, 0.5, 1)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				l.Record(time.Duration(1+i%2) * 100 * time.Millisecond)
				if i%500 == g {
					_ = l.Value()
				}
			}
		})
	}
	wg.Wait()
	// Half the calls took 100 ms, half 200 ms: the median is the top of
	// 100 ms's bucket.
	if v := l.Value(); v < 0.1 || v > 0.1125 {
		t.Fatalf("median %v, want 0.1 to 0.1125", v)
	}
}

func TestSignalsAllocateNothing(t *testing.T) {
	if israce.Enabled {
		t.Skip("the race detector allocates")
	}
	r, _ := degrade.NewErrorRate(time.Second, 1)
	l, _ := degrade.NewLatency(time.Second, 0.99, 1)
	fail := errors.New("503")
	n := testing.AllocsPerRun(1000, func() {
		r.Record(nil)
		r.Record(fail)
		r.Record(context.Canceled)
		r.Observe(true)
		l.Record(42 * time.Millisecond)
		_ = r.Value()
		_ = l.Value()
	})
	if n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

// An ErrorRate counts the outcomes of calls to a dependency and feeds a
// trigger.
func ExampleErrorRate() {
	rate, err := degrade.NewErrorRate(time.Minute, 10)
	if err != nil {
		panic(err)
	}
	fetchReviews := func(i int) error { // stands for a call to a dependency
		if i%4 == 0 {
			return errors.New("reviews: 503")
		}
		return nil
	}
	for i := range 20 {
		rate.Record(fetchReviews(i))
	}
	fmt.Println(rate.Value())

	sb, err := degrade.New([]degrade.Feature{{Name: "reviews", Level: degrade.Optional}},
		degrade.WithTrigger(degrade.Trigger{
			Name:   "reviews-errors",
			Signal: rate,
			Above:  0.2, For: 30 * time.Second, // above 20% for 30 s
			Below: 0.05, RecoverFor: time.Minute, // at most 5% for a minute
			Off: []string{"reviews"},
		}))
	if err != nil {
		panic(err)
	}
	defer sb.Close()
	// Output: 0.25
}

// A Latency's quantile, in seconds, feeds a trigger that sheds optional
// features while the p99 stays above half a second.
func ExampleLatency() {
	p99, err := degrade.NewLatency(time.Minute, 0.99, 100)
	if err != nil {
		panic(err)
	}
	for i := range 1000 {
		start := time.Now().Add(-time.Duration(i%100+1) * time.Millisecond) // a call of 1 to 100 ms
		p99.Record(time.Since(start))
	}
	fmt.Printf("p99 about %.2f s\n", p99.Value())

	sb, err := degrade.New([]degrade.Feature{{Name: "recommendations", Level: degrade.Optional}},
		degrade.WithTrigger(degrade.Trigger{
			Name: "slow", Signal: p99,
			Above: 0.5, For: 10 * time.Second,
			Below: 0.2, RecoverFor: time.Minute,
			Shed: degrade.Optional,
		}))
	if err != nil {
		panic(err)
	}
	defer sb.Close()
	// Output: p99 about 0.10 s
}
