package benchmarks

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	aegis "github.com/go-kratos/aegis/circuitbreaker"
	"github.com/go-kratos/aegis/circuitbreaker/sre"
	"github.com/sony/gobreaker/v2"
	zero "github.com/zeromicro/go-zero/core/breaker"

	"github.com/bulwarkgo/bulwark/breaker"
)

// errDown is what the protected dependency answers while it is down.
var errDown = errors.New("dependency down")

// The protected dependency, in the two shapes the libraries take it. It
// does no work, so a run measures the breaker alone.
func depUp() (int, error)                     { return 1, nil }
func depDown() (int, error)                   { return 0, errDown }
func depUpCtx(context.Context) (int, error)   { return 1, nil }
func depDownCtx(context.Context) (int, error) { return 0, errDown }

// callFunc is one call through one library's breaker, as a caller makes it:
// the dependency's value and error, or the library's rejection.
type callFunc func() (int, error)

// breakerLib builds a fresh breaker of one library for one benchmark run,
// for the same reason as [localLib]: a breaker carried over from a run with
// a smaller b.N would start the next one with different counts.
type breakerLib struct {
	name string
	// closed returns calls through a breaker with the library's defaults
	// to a dependency that always answers.
	closed func(b *testing.B) callFunc
	// open returns calls to a dependency that is down, through a breaker
	// that its failures have already opened.
	open func(b *testing.B) callFunc
	// rejected reports whether err is the library's rejection.
	rejected func(err error) bool
	// adaptive marks the breakers after Google's SRE client-side
	// throttling, which have no open state: they reject each call with a
	// probability computed from recent outcomes, so even when the
	// dependency has failed every call some calls still get through.
	adaptive bool
}

// tripped is how long an opened breaker stays open: far longer than any
// run, so that none reaches half-open.
const tripped = time.Hour

// sreDrive is how many failed calls drive an adaptive breaker before an
// open run. Both drop rates then exceed 99.9%: aegis rejects with
// probability total/(total+1) once no call succeeds, go-zero with
// (total-5)/(total+1), where total counts the calls in its window,
// rejections included.
const sreDrive = 10_000

var breakerLibs = []breakerLib{
	{
		name: "bulwark",
		closed: func(b *testing.B) callFunc {
			cb := breaker.New[int]("bench")
			ctx := context.Background()
			return func() (int, error) { return cb.Execute(ctx, depUpCtx) }
		},
		open: func(b *testing.B) callFunc {
			cb := breaker.New[int]("bench",
				breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
				breaker.WithOpenTimeout(tripped))
			ctx := context.Background()
			call := func() (int, error) { return cb.Execute(ctx, depDownCtx) }
			trip(b, call, 1)
			mustBeOpen(b, cb.State() == breaker.StateOpen)
			return call
		},
		rejected: func(err error) bool { return errors.Is(err, breaker.ErrOpen) },
	},
	{
		name: "gobreaker",
		closed: func(b *testing.B) callFunc {
			cb := gobreaker.NewCircuitBreaker[int](gobreaker.Settings{Name: "bench"})
			return func() (int, error) { return cb.Execute(depUp) }
		},
		open: func(b *testing.B) callFunc {
			cb := gobreaker.NewCircuitBreaker[int](gobreaker.Settings{
				Name:        "bench",
				Timeout:     tripped,
				ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= 1 },
			})
			call := func() (int, error) { return cb.Execute(depDown) }
			trip(b, call, 1)
			mustBeOpen(b, cb.State() == gobreaker.StateOpen)
			return call
		},
		rejected: func(err error) bool { return errors.Is(err, gobreaker.ErrOpenState) },
	},
	{
		// The executor is built once, as a service would keep it; building
		// it per call (failsafe.With(cb).Get(fn)) costs more.
		name: "failsafe-executor",
		closed: func(b *testing.B) callFunc {
			exec := failsafe.With(circuitbreaker.NewWithDefaults[int]())
			return func() (int, error) { return exec.Get(depUp) }
		},
		open: func(b *testing.B) callFunc {
			cb := failsafeOpen()
			exec := failsafe.With(cb)
			call := func() (int, error) { return exec.Get(depDown) }
			trip(b, call, 1)
			mustBeOpen(b, cb.IsOpen())
			return call
		},
		rejected: func(err error) bool { return errors.Is(err, circuitbreaker.ErrOpen) },
	},
	{
		name: "failsafe-permit",
		closed: func(b *testing.B) callFunc {
			return permitCall(circuitbreaker.NewWithDefaults[int](), depUp)
		},
		open: func(b *testing.B) callFunc {
			cb := failsafeOpen()
			call := permitCall(cb, depDown)
			trip(b, call, 1)
			mustBeOpen(b, cb.IsOpen())
			return call
		},
		rejected: func(err error) bool { return errors.Is(err, circuitbreaker.ErrOpen) },
	},
	{
		name: "go-zero",
		closed: func(b *testing.B) callFunc {
			return zeroCall(zero.NewBreaker(zero.WithName("bench")), depUp)
		},
		open: func(b *testing.B) callFunc {
			call := zeroCall(zero.NewBreaker(zero.WithName("bench")), depDown)
			trip(b, call, sreDrive)
			return call
		},
		rejected: func(err error) bool { return errors.Is(err, zero.ErrServiceUnavailable) },
		adaptive: true,
	},
	{
		name: "aegis-sre",
		closed: func(b *testing.B) callFunc {
			return aegisCall(sre.NewBreaker(), depUp)
		},
		open: func(b *testing.B) callFunc {
			call := aegisCall(sre.NewBreaker(), depDown)
			trip(b, call, sreDrive)
			return call
		},
		rejected: func(err error) bool { return errors.Is(err, aegis.ErrNotAllowed) },
		adaptive: true,
	},
}

// failsafeOpen is a failsafe-go breaker that opens on one failure (its
// default) and stays open for [tripped].
func failsafeOpen() circuitbreaker.CircuitBreaker[int] {
	return circuitbreaker.NewBuilder[int]().WithFailureThreshold(1).WithDelay(tripped).Build()
}

// permitCall is failsafe-go's breaker used without its executor: ask for a
// permit, call, record the outcome.
func permitCall(cb circuitbreaker.CircuitBreaker[int], dep func() (int, error)) callFunc {
	return func() (int, error) {
		if !cb.TryAcquirePermit() {
			return 0, circuitbreaker.ErrOpen
		}
		v, err := dep()
		if err != nil {
			cb.RecordFailure()
		} else {
			cb.RecordSuccess()
		}
		return v, err
	}
}

// zeroCall is a call through go-zero's breaker. Do takes a func() error, so
// the value comes back through a closure, as in any use that needs one; it
// escapes into the breaker and costs an allocation per call.
func zeroCall(cb zero.Breaker, dep func() (int, error)) callFunc {
	return func() (int, error) {
		var v int
		err := cb.Do(func() error {
			var err error
			v, err = dep()
			return err
		})
		return v, err
	}
}

// aegisCall is a call through aegis' SRE breaker the way Kratos' own
// circuit-breaker middleware makes it: a rejection is marked as a failure,
// which keeps the drop rate up while the dependency stays down.
func aegisCall(cb aegis.CircuitBreaker, dep func() (int, error)) callFunc {
	return func() (int, error) {
		if err := cb.Allow(); err != nil {
			cb.MarkFailed()
			return 0, err
		}
		v, err := dep()
		if err != nil {
			cb.MarkFailed()
		} else {
			cb.MarkSuccess()
		}
		return v, err
	}
}

// trip makes n calls to the failing dependency before the timer starts.
func trip(b *testing.B, call callFunc, n int) {
	b.Helper()
	for range n {
		if v, err := call(); err == nil {
			b.Fatalf("a call to the failing dependency returned %d and no error", v)
		}
	}
}

func mustBeOpen(b *testing.B, open bool) {
	b.Helper()
	if !open {
		b.Fatal("the breaker is not open after the failures that should trip it")
	}
}

// BenchmarkBreakerClosed measures a call through a closed breaker to a
// dependency that answers at once: the cost a breaker adds to every call
// in normal operation. A run fails unless every call ran and succeeded.
func BenchmarkBreakerClosed(b *testing.B) {
	for _, lib := range breakerLibs {
		b.Run("lib="+lib.name, func(b *testing.B) {
			benchBreaker(b, lib, false)
		})
	}
}

// BenchmarkBreakerOpen measures a call while the dependency is down and its
// failures have opened the breaker: the rejection path, which runs on every
// call during an outage. For the libraries with an open state a run fails
// unless every call was rejected. The adaptive (SRE) libraries reject with
// a probability; their runs report the fraction rejected as rejected/op
// (every run reports it), and fail when it is below 0.99 over 1000 calls or
// more. Their few admitted calls reach the failing dependency and are part
// of what is measured.
func BenchmarkBreakerOpen(b *testing.B) {
	for _, lib := range breakerLibs {
		b.Run("lib="+lib.name, func(b *testing.B) {
			benchBreaker(b, lib, true)
		})
	}
}

func benchBreaker(b *testing.B, lib breakerLib, open bool) {
	for _, parallel := range []bool{false, true} {
		mode := "mode=serial"
		if parallel {
			mode = "mode=parallel"
		}
		b.Run(mode, func(b *testing.B) {
			build := lib.closed
			if open {
				build = lib.open
			}
			call := build(b)
			var t tally
			b.ReportAllocs()
			b.ResetTimer()
			if parallel {
				b.RunParallel(func(pb *testing.PB) {
					var got counts
					for pb.Next() {
						judge(&got, open, lib.rejected, call)
					}
					t.add(got)
				})
			} else {
				var got counts
				for range b.N {
					judge(&got, open, lib.rejected, call)
				}
				t.add(got)
			}
			b.StopTimer()
			if !open {
				t.check(b, "executed")
				return
			}
			reportRejected(b, lib, &t)
		})
	}
}

// judge makes one call and counts whether it took the path the benchmark
// measures. On a closed breaker that is a successful call; any error,
// rejections included, is an error. On an open breaker it is a rejection; a
// call let through to the failing dependency is a wrong decision, and any
// other error an error.
func judge(c *counts, open bool, rejected func(error) bool, call callFunc) {
	v, err := call()
	switch {
	case !open:
		c.note(v == 1, err)
	case rejected(err):
		c.note(true, nil)
	case errors.Is(err, errDown):
		c.note(false, nil)
	default:
		c.note(false, err)
	}
}

func reportRejected(b *testing.B, lib breakerLib, t *tally) {
	b.Helper()
	admitted := t.wrong.Load()
	frac := 1 - float64(admitted)/float64(b.N)
	b.ReportMetric(frac, "rejected/op")
	if !lib.adaptive {
		t.check(b, "rejected")
		return
	}
	if n := t.errs.Load(); n > 0 {
		b.Errorf("%d of %d calls failed; first: %v", n, b.N, *t.firstErr.Load())
	}
	// One run of a few calls can admit a call by chance; over a thousand,
	// a rate below 0.99 means the breaker was not driven to rejecting.
	if b.N >= 1000 && frac < 0.99 {
		b.Errorf("%d of %d calls were admitted; the breaker was not driven open", admitted, b.N)
	}
}
