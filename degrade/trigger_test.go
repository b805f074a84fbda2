package degrade_test

import (
	"context"
	"errors"
	"math"
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

	"github.com/bulwarkgo/bulwark/degrade"
)

// Every test here runs in a synctest bubble: the switchboard is created
// inside it, so its trigger loop ticks on the bubble's fake clock, and
// the bubble ending fails the test if Close left a goroutine behind.
//
// The loop ticks every second from the switchboard's creation (instant 0
// of a test). The tests look at the switchboard half a second after a
// tick, when the tick's work is done, and change signals half a second
// before one.

// gauge is a signal a test sets by hand.
type gauge struct{ bits atomic.Uint64 }

func (g *gauge) set(v float64)  { g.bits.Store(math.Float64bits(v)) }
func (g *gauge) Value() float64 { return math.Float64frombits(g.bits.Load()) }

// trigBoard is a switchboard made in the running bubble, with its clock's
// instant 0, closed when the test ends.
type trigBoard struct {
	*degrade.Switchboard
	t     *testing.T
	start time.Time
}

var trigFeatures = []degrade.Feature{
	{Name: "payment", Level: degrade.Core},
	{Name: "search-suggest", Level: degrade.Important},
	{Name: "recommendations", Level: degrade.Optional},
	{Name: "reviews", Level: degrade.Optional},
}

func newTrigBoard(t *testing.T, opts ...degrade.Option) *trigBoard {
	t.Helper()
	opts = append([]degrade.Option{degrade.WithEvaluationInterval(time.Second)}, opts...)
	sb, err := degrade.New(trigFeatures, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Close() })
	return &trigBoard{Switchboard: sb, t: t, start: time.Now()}
}

// at sleeps until instant d of the test and lets the switchboard's
// goroutines finish what that instant woke them for.
func (b *trigBoard) at(d time.Duration) {
	b.t.Helper()
	if wait := time.Until(b.start.Add(d)); wait < 0 {
		b.t.Fatalf("at(%v): the test is already at %v", d, time.Since(b.start))
	} else {
		time.Sleep(wait)
	}
	synctest.Wait()
}

// want checks a feature's state and source now.
func (b *trigBoard) want(name string, on bool, source degrade.Source) {
	b.t.Helper()
	if got := b.Enabled(context.Background(), name); got != on {
		b.t.Errorf("at %v: Enabled(%s) = %v, want %v", time.Since(b.start), name, got, on)
	}
	if st, _ := b.Status(name); st.Source != source {
		b.t.Errorf("at %v: %s's source is %s, want %s", time.Since(b.start), name, st.Source, source)
	}
}

// s is a number of seconds, so timelines read as "at 5.5 s".
func s(x float64) time.Duration { return time.Duration(x * float64(time.Second)) }

// errorsTrigger fires above 0.5 held for 5 s and recovers at or below 0.2
// held for 10 s.
func errorsTrigger(sig degrade.Signal, off ...string) degrade.Trigger {
	return degrade.Trigger{
		Name: "errors", Signal: sig,
		Above: 0.5, For: 5 * time.Second,
		Below: 0.2, RecoverFor: 10 * time.Second,
		Off: off,
	}
}

func TestTriggerFiresAfterForAndRecoversAfterRecoverFor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var sig gauge
		sig.set(0.9) // above from the start: the tick at 1 s sees it first
		b := newTrigBoard(t, degrade.WithTrigger(errorsTrigger(&sig, "recommendations")))

		b.at(s(5.5)) // held for 4.5 s of ticks
		b.want("recommendations", true, degrade.SourceDefault)
		b.at(s(6.5)) // the tick at 6 s saw it held for 5 s
		b.want("recommendations", false, degrade.SourceTrigger)
		if st, _ := b.Status("recommendations"); st.Trigger != "errors" {
			t.Errorf("Status.Trigger = %q, want errors", st.Trigger)
		}
		b.want("reviews", true, degrade.SourceDefault)
		if err := b.Check(context.Background(), "recommendations"); !errors.Is(err, degrade.ErrDegraded) {
			t.Errorf("Check of the tripped feature: %v", err)
		}

		sig.set(0.1) // at 6.5 s: the tick at 7 s starts the recovery hold
		b.at(s(16.5))
		b.want("recommendations", false, degrade.SourceTrigger)
		b.at(s(17.5))
		b.want("recommendations", true, degrade.SourceDefault)
		if st, _ := b.Status("recommendations"); st.Trigger != "" {
			t.Errorf("Status.Trigger = %q after recovery", st.Trigger)
		}
	})
}

func TestTriggerHysteresis(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var sig gauge
		sig.set(0.5) // at Above is not above it
		b := newTrigBoard(t, degrade.WithTrigger(errorsTrigger(&sig, "recommendations")))
		b.at(s(30.5))
		b.want("recommendations", true, degrade.SourceDefault)

		sig.set(0.6)
		b.at(s(36.5)) // seen at 31 s, fired at 36 s
		b.want("recommendations", false, degrade.SourceTrigger)

		// Between Below and Above: a fired trigger does not recover, and
		// nothing fires it again or resets it.
		sig.set(0.3)
		b.at(s(100.5))
		b.want("recommendations", false, degrade.SourceTrigger)

		sig.set(0.2) // at Below counts as recovered
		b.at(s(110.5))
		b.want("recommendations", false, degrade.SourceTrigger)
		b.at(s(111.5)) // seen at 101 s, recovered at 111 s
		b.want("recommendations", true, degrade.SourceDefault)

		// Back between the thresholds: a recovered trigger does not fire.
		sig.set(0.45)
		b.at(s(200.5))
		b.want("recommendations", true, degrade.SourceDefault)
	})
}

func TestTriggerBriefDipResetsTheHold(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var sig gauge
		sig.set(0.9)
		b := newTrigBoard(t, degrade.WithTrigger(errorsTrigger(&sig, "recommendations")))

		b.at(s(4.5)) // held since 1 s
		sig.set(0.4) // the tick at 5 s sees a dip
		b.at(s(5.5))
		sig.set(0.9) // seen again at 6 s: the hold starts over
		b.at(s(10.5))
		b.want("recommendations", true, degrade.SourceDefault)
		b.at(s(11.5))
		b.want("recommendations", false, degrade.SourceTrigger)

		// The same on the way back: a spike during the recovery hold
		// starts it over.
		sig.set(0.1) // seen at 12 s
		b.at(s(19.5))
		sig.set(0.3) // at 20 s: not at or below Below
		b.at(s(20.5))
		sig.set(0.1) // seen again at 21 s
		b.at(s(30.5))
		b.want("recommendations", false, degrade.SourceTrigger)
		b.at(s(31.5))
		b.want("recommendations", true, degrade.SourceDefault)
	})
}

func TestTriggerForZeroFiresOnTheFirstTick(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var sig gauge
		sig.set(1)
		tr := errorsTrigger(&sig, "recommendations")
		tr.For, tr.RecoverFor = 0, 0
		b := newTrigBoard(t, degrade.WithTrigger(tr))
		b.at(s(0.5))
		b.want("recommendations", true, degrade.SourceDefault)
		b.at(s(1.5))
		b.want("recommendations", false, degrade.SourceTrigger)
		sig.set(0)
		b.at(s(2.5))
		b.want("recommendations", true, degrade.SourceDefault)
	})
}

func TestTriggerOperatorPinWins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		var sig gauge
		sig.set(0.9)
		b := newTrigBoard(t, degrade.WithTrigger(errorsTrigger(&sig, "recommendations")))
		b.at(s(6.5))
		b.want("recommendations", false, degrade.SourceTrigger)

		// An operator turns it back on: the pin wins over the trigger,
		// whose name stays in the status so the console can show it.
		if err := b.Set(ctx, "recommendations", degrade.State{Mode: degrade.On}, trigOps); err != nil {
			t.Fatal(err)
		}
		b.want("recommendations", true, degrade.SourceManual)
		if st, _ := b.Status("recommendations"); st.Trigger != "errors" {
			t.Errorf("Status.Trigger = %q under a pin, want errors", st.Trigger)
		}
		b.at(s(60.5)) // the trigger still holds
		b.want("recommendations", true, degrade.SourceManual)

		// Unpinned, the trigger's hold shows again.
		if err := b.Unpin(ctx, "recommendations", trigOps); err != nil {
			t.Fatal(err)
		}
		b.want("recommendations", false, degrade.SourceTrigger)

		// A pin to off outlasts the trigger's recovery.
		if err := b.Set(ctx, "recommendations", degrade.State{Mode: degrade.Off}, trigOps); err != nil {
			t.Fatal(err)
		}
		sig.set(0)
		b.at(s(80.5))
		b.want("recommendations", false, degrade.SourceManual)
		if st, _ := b.Status("recommendations"); st.Trigger != "" {
			t.Errorf("Status.Trigger = %q after recovery", st.Trigger)
		}
		if err := b.Unpin(ctx, "recommendations", trigOps); err != nil {
			t.Fatal(err)
		}
		b.want("recommendations", true, degrade.SourceDefault)
	})
}

var trigOps = degrade.Change{By: "oncall", Reason: "trigger test"}

func TestTriggerShedsALevelOnThisInstanceOnly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := degrade.NewMemoryStore(0)
		var sig gauge
		sig.set(0.9)
		b := newTrigBoard(t, degrade.WithStore(store), degrade.WithTrigger(degrade.Trigger{
			Name: "overload", Signal: &sig, Above: 0.5, For: 5 * time.Second, Below: 0.2, RecoverFor: 10 * time.Second,
			Shed: degrade.Important,
		}))
		other := newTrigBoard(t, degrade.WithStore(store))

		b.at(s(6.5))
		b.want("payment", true, degrade.SourceDefault) // core is never shed
		b.want("search-suggest", false, degrade.SourceTrigger)
		b.want("recommendations", false, degrade.SourceTrigger)
		if got := b.Shedding(); got != degrade.Important {
			t.Errorf("Shedding() = %v, want important", got)
		}
		// Triggers are not stored: another instance on the same store
		// decides from its own signals.
		if got := other.Shedding(); got != 0 {
			t.Errorf("the other instance sheds %v", got)
		}
		if !other.Enabled(context.Background(), "recommendations") {
			t.Error("the other instance turned recommendations off")
		}
		// An operator's setting for one feature wins over the shed.
		if err := b.Set(context.Background(), "reviews", degrade.State{Mode: degrade.On}, trigOps); err != nil {
			t.Fatal(err)
		}
		b.want("reviews", true, degrade.SourceManual)

		sig.set(0)
		b.at(s(17.5))
		b.want("search-suggest", true, degrade.SourceDefault)
		b.want("recommendations", true, degrade.SourceDefault)
		if got := b.Shedding(); got != 0 {
			t.Errorf("Shedding() = %v after recovery", got)
		}
	})
}

func TestTriggerOperatorShedAboveTriggerShed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var sig gauge
		sig.set(0.9)
		b := newTrigBoard(t, degrade.WithTrigger(degrade.Trigger{
			Name: "overload", Signal: &sig, Above: 0.5, Below: 0.2, Shed: degrade.Optional,
		}))
		b.at(s(1.5))
		b.want("recommendations", false, degrade.SourceTrigger)
		b.want("search-suggest", true, degrade.SourceDefault)
		// The operator sheds more: the higher level wins, and says so.
		if err := b.Shed(context.Background(), degrade.Important, trigOps); err != nil {
			t.Fatal(err)
		}
		b.want("search-suggest", false, degrade.SourceShed)
		b.want("recommendations", false, degrade.SourceShed)
		if err := b.Restore(context.Background(), trigOps); err != nil {
			t.Fatal(err)
		}
		b.want("search-suggest", true, degrade.SourceDefault)
		b.want("recommendations", false, degrade.SourceTrigger)
	})
}

func TestTriggerTwoOnOneFeature(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var errs, slow gauge
		errs.set(0.9)
		slow.set(0.9)
		a := errorsTrigger(&errs, "recommendations", "reviews")
		l := errorsTrigger(&slow, "recommendations")
		l.Name = "latency"
		b := newTrigBoard(t, degrade.WithTrigger(a), degrade.WithTrigger(l))
		b.at(s(6.5))
		b.want("recommendations", false, degrade.SourceTrigger)
		b.want("reviews", false, degrade.SourceTrigger)

		errs.set(0) // errors recover at 17 s; latency stays high
		b.at(s(17.5))
		b.want("reviews", true, degrade.SourceDefault)
		b.want("recommendations", false, degrade.SourceTrigger)
		if st, _ := b.Status("recommendations"); st.Trigger != "latency" {
			t.Errorf("Status.Trigger = %q, want latency", st.Trigger)
		}

		slow.set(0) // seen at 18 s, recovered at 28 s
		b.at(s(27.5))
		b.want("recommendations", false, degrade.SourceTrigger)
		b.at(s(28.5))
		b.want("recommendations", true, degrade.SourceDefault)
	})
}

func TestTriggerFiringsMetric(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
		var sig gauge
		sig.set(0.9)
		b := newTrigBoard(t, degrade.WithMeterProvider(mp),
			degrade.WithTrigger(errorsTrigger(&sig, "recommendations")))

		b.at(s(6.5))
		sig.set(0)
		b.at(s(17.5)) // recovered at 17 s
		sig.set(0.9)
		b.at(s(23.5)) // fired again at 23 s

		got := firings(t, reader)
		want := map[[2]string]int64{{"errors", "fire"}: 2, {"errors", "recover"}: 1}
		if len(got) != len(want) || got[[2]string{"errors", "fire"}] != 2 || got[[2]string{"errors", "recover"}] != 1 {
			t.Errorf("bulwark.degrade.trigger.firings = %v, want %v", got, want)
		}
	})
}

// firings reads bulwark.degrade.trigger.firings by trigger and action.
func firings(t *testing.T, reader *sdkmetric.ManualReader) map[[2]string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[[2]string]int64{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != "github.com/bulwarkgo/bulwark/degrade" {
			continue
		}
		for _, m := range sm.Metrics {
			if m.Name != "bulwark.degrade.trigger.firings" {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok || !sum.IsMonotonic {
				t.Fatalf("%s is a %T, want a monotonic Sum[int64]", m.Name, m.Data)
			}
			for _, dp := range sum.DataPoints {
				tr, _ := dp.Attributes.Value(attribute.Key("bulwark.degrade.trigger"))
				ac, _ := dp.Attributes.Value(attribute.Key("bulwark.degrade.action"))
				out[[2]string{tr.AsString(), ac.AsString()}] += dp.Value
			}
		}
	}
	return out
}

func TestTriggerEventsReachSubscribers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var sig gauge
		sig.set(0.9)
		b := newTrigBoard(t, degrade.WithTrigger(errorsTrigger(&sig, "recommendations")))
		type seen struct {
			at time.Duration
			e  degrade.Event
		}
		var mu sync.Mutex
		var events []seen
		stop := b.Subscribe(func(e degrade.Event) {
			mu.Lock()
			events = append(events, seen{time.Since(b.start), e})
			mu.Unlock()
		})
		defer stop()

		b.at(s(6.5))
		sig.set(0)
		b.at(s(17.5))

		mu.Lock()
		defer mu.Unlock()
		if len(events) != 2 {
			t.Fatalf("%d events, want 2: %+v", len(events), events)
		}
		fire, recover := events[0], events[1]
		if fire.at != s(6) || fire.e.Feature != "recommendations" ||
			fire.e.Before.Source != degrade.SourceDefault || fire.e.Before.State.Mode != degrade.On ||
			fire.e.After.Source != degrade.SourceTrigger || fire.e.After.State.Mode != degrade.Off ||
			fire.e.After.Trigger != "errors" {
			t.Errorf("firing event %+v", fire)
		}
		if recover.at != s(17) || recover.e.Feature != "recommendations" ||
			recover.e.Before.Source != degrade.SourceTrigger || recover.e.After.Source != degrade.SourceDefault ||
			recover.e.After.State.Mode != degrade.On || recover.e.After.Trigger != "" {
			t.Errorf("recovery event %+v", recover)
		}
	})
}

func TestTriggerNotReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var open atomic.Bool
		open.Store(true)
		b := newTrigBoard(t, degrade.WithTrigger(degrade.Trigger{
			Name: "breaker", Signal: degrade.NotReady(readier{&open}),
			Above: 0.5, For: 2 * time.Second, Below: 0.5, RecoverFor: 3 * time.Second,
			Off: []string{"reviews"},
		}))
		b.at(s(3.5)) // open since before 1 s, held 2 s at the tick at 3 s
		b.want("reviews", false, degrade.SourceTrigger)
		open.Store(false)
		b.at(s(6.5))
		b.want("reviews", false, degrade.SourceTrigger)
		b.at(s(7.5)) // closed since 4 s, held 3 s
		b.want("reviews", true, degrade.SourceDefault)
	})
}

// readier stands in for a breaker: Ready is false while it is open.
type readier struct{ open *atomic.Bool }

func (r readier) Ready() bool { return !r.open.Load() }

// TestTriggerOnErrorRate drives a trigger from an ErrorRate fed by calls:
// once the feature is off, its calls stop, the window empties and the
// trigger recovers after RecoverFor, which lets the feature try again.
func TestTriggerOnErrorRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rate, err := degrade.NewErrorRate(10*time.Second, 20)
		if err != nil {
			t.Fatal(err)
		}
		b := newTrigBoard(t, degrade.WithTrigger(degrade.Trigger{
			Name: "reviews-errors", Signal: rate,
			Above: 0.5, For: 3 * time.Second, Below: 0.1, RecoverFor: 5 * time.Second,
			Off: []string{"reviews"},
		}))
		dependencyDown := true
		ctx := context.Background()
		// 10 calls a second, each second, for as long as the feature is on.
		call := func() {
			for range 10 {
				if err := b.Check(ctx, "reviews"); err != nil {
					rate.Record(err) // not counted: the call was not made
					continue
				}
				if dependencyDown {
					rate.Record(errors.New("reviews: 503"))
				} else {
					rate.Record(nil)
				}
			}
		}
		var offAt, onAt time.Duration
		for i := range 30 {
			b.at(s(float64(i) + 0.5))
			on := b.Enabled(ctx, "reviews")
			switch {
			case !on && offAt == 0:
				offAt = time.Since(b.start)
			case on && offAt != 0 && onAt == 0:
				onAt = time.Since(b.start)
				dependencyDown = false
			}
			call()
		}
		// Failed calls from 0.5 s on: the rate reads 1 once 20 are in the
		// window (the tick at 2 s), holds for 3 s, fires at 5 s. The 50
		// failed calls made until then stay in the 10 s window; from the
		// tick at 14 s fewer than 20 are left, the rate reads 0 and the
		// trigger recovers 5 s later, at 19 s.
		if offAt != s(5.5) || onAt != s(19.5) {
			t.Errorf("off at %v, on again at %v; want 5.5s and 19.5s", offAt, onAt)
		}
		if v := rate.Value(); v != 0 {
			t.Errorf("error rate %v after the dependency came back", v)
		}
		b.want("reviews", true, degrade.SourceDefault)
	})
}

func TestTriggerCloseStopsTheLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var sig gauge
		sig.set(0.9)
		var reads atomic.Int64
		counted := degrade.SignalFunc(func() float64 { reads.Add(1); return sig.Value() })
		b := newTrigBoard(t, degrade.WithTrigger(errorsTrigger(counted, "recommendations")))
		b.at(s(6.5))
		b.want("recommendations", false, degrade.SourceTrigger)
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		n := reads.Load()
		sig.set(0)
		b.at(s(60.5))
		if got := reads.Load(); got != n {
			t.Errorf("the signal was read %d times after Close", got-n)
		}
		// The last state stands.
		b.want("recommendations", false, degrade.SourceTrigger)
	})
}

// TestTriggerCloseLeavesNoGoroutine runs on the real clock, outside a
// bubble, so goleak sees the switchboard's goroutines as they really are.
func TestTriggerCloseLeavesNoGoroutine(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	fired := make(chan struct{})
	var once sync.Once
	sb, err := degrade.New(trigFeatures, degrade.WithEvaluationInterval(time.Millisecond),
		degrade.WithTrigger(degrade.Trigger{
			Name: "always", Signal: degrade.SignalFunc(func() float64 { return 1 }),
			Above: 0.5, Below: 0, Off: []string{"reviews"},
		}))
	if err != nil {
		t.Fatal(err)
	}
	sb.Subscribe(func(degrade.Event) { once.Do(func() { close(fired) }) })
	select {
	case <-fired:
	case <-time.After(10 * time.Second):
		t.Fatal("the trigger did not fire in 10 s")
	}
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t, ignore)
}

func TestTriggerValidation(t *testing.T) {
	sig := degrade.SignalFunc(func() float64 { return 0 })
	for _, c := range []struct {
		name  string
		tr    degrade.Trigger
		field string
	}{
		{"no name", degrade.Trigger{Signal: sig, Above: 1, Off: []string{"reviews"}}, "Name"},
		{"no signal", degrade.Trigger{Name: "t", Above: 1, Off: []string{"reviews"}}, "Signal"},
		{"negative For", degrade.Trigger{Name: "t", Signal: sig, Above: 1, For: -time.Second, Off: []string{"reviews"}}, "For"},
		{"negative RecoverFor", degrade.Trigger{Name: "t", Signal: sig, Above: 1, RecoverFor: -time.Second, Off: []string{"reviews"}}, "For"},
		{"nothing to do", degrade.Trigger{Name: "t", Signal: sig, Above: 1}, "Off"},
		{"shed core", degrade.Trigger{Name: "t", Signal: sig, Above: 1, Shed: degrade.Core}, "Shed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := degrade.New(trigFeatures, degrade.WithTrigger(c.tr))
			if !errors.Is(err, degrade.ErrInvalidConfig) || !strings.Contains(err.Error(), c.field) {
				t.Fatalf("got %v, want ErrInvalidConfig naming %s", err, c.field)
			}
		})
	}
}
