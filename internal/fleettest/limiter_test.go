package fleettest

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/limiter"
)

// The limiter scenario: four processes hammer one limiter.Redis key,
// each with limiterCallers goroutines calling Allow back to back, for
// limiterWindow from the common start.
const (
	limiterRate    = 200
	limiterBurst   = 100
	limiterWindow  = 10 * time.Second
	limiterCallers = 4
	// limiterTolerance is the accepted error of the fleet's admissions
	// against limiterRate × limiterWindow + limiterBurst.
	limiterTolerance = 0.02
)

// limiterReport is one worker's account of its calls. Instants are ns on
// Redis' clock.
type limiterReport struct {
	Allowed, Refused, Errors int
	// FirstStart and FirstEnd are when the worker's first call began and
	// returned; LastStart and LastEnd, its last.
	FirstStart, FirstEnd, LastStart, LastEnd int64
	// Outage is true if the limiter ever decided without Redis.
	Outage bool
	// LatencyUS is every call's duration, µs.
	LatencyUS []int32
	FirstErr  string
}

func limiterWorker(ctx context.Context, w *worker) (any, error) {
	// FailClosed: a decision Redis did not make refuses, so it can only
	// lower the count, never pass off a local decision as the fleet's.
	lim, err := limiter.NewRedis(w.client, limiter.PerSecond(limiterRate, limiterBurst),
		limiter.WithPrefix(w.prefix+"limiter:"), limiter.WithOutagePolicy(limiter.FailClosed))
	if err != nil {
		return nil, err
	}
	// Connect the pool before the start, so the first calls do not dial.
	if err := w.client.Ping(ctx).Err(); err != nil {
		return nil, err
	}
	if err := w.waitStart(ctx); err != nil {
		return nil, err
	}
	end := w.at(limiterWindow)
	reps := make([]limiterReport, limiterCallers)
	var wg sync.WaitGroup
	for g := range reps {
		r := &reps[g]
		wg.Go(func() {
			for {
				s := w.clock.now()
				// No call starts at or after the end of the window.
				if !s.Before(end) {
					return
				}
				d, err := lim.Allow(ctx, "fleet")
				e := w.clock.now()
				if r.FirstStart == 0 {
					r.FirstStart, r.FirstEnd = s.UnixNano(), e.UnixNano()
				}
				r.LastStart, r.LastEnd = s.UnixNano(), e.UnixNano()
				r.LatencyUS = append(r.LatencyUS, int32(e.Sub(s).Microseconds()))
				switch {
				case err != nil:
					r.Errors++
					if r.FirstErr == "" {
						r.FirstErr = err.Error()
					}
					if ctx.Err() != nil {
						return
					}
				case d.Allowed:
					r.Allowed++
				default:
					r.Refused++
				}
				if lim.InOutage() {
					r.Outage = true
				}
			}
		})
	}
	wg.Wait()
	out := limiterReport{}
	for _, r := range reps {
		out.Allowed += r.Allowed
		out.Refused += r.Refused
		out.Errors += r.Errors
		out.Outage = out.Outage || r.Outage
		if out.FirstErr == "" {
			out.FirstErr = r.FirstErr
		}
		if r.FirstStart != 0 && (out.FirstStart == 0 || r.FirstStart < out.FirstStart) {
			out.FirstStart, out.FirstEnd = r.FirstStart, r.FirstEnd
		}
		out.LastStart = max(out.LastStart, r.LastStart)
		out.LastEnd = max(out.LastEnd, r.LastEnd)
		out.LatencyUS = append(out.LatencyUS, r.LatencyUS...)
	}
	return out, nil
}

// TestFleetLimiter checks that one limiter.Redis limit holds for a fleet
// of processes: hammered by all of them, well above the rate, it admits
// the rate over the window plus the burst.
//
// The accounting. The bucket is new (the key is under the test's own
// prefix), so it is full when Redis makes the fleet's first decision, at
// T0 on Redis' clock, and GCRA then admits at most burst + R·(t−T0) by any
// later instant t: a bucket holds at most burst tokens and gains R a
// second. While it is hammered it never fills up again, so it admits
// exactly that, give or take the decision at hand. Every worker starts
// calling at the common start S and starts no call at or after S+W (W =
// limiterWindow); the fleet's decisions therefore lie between the
// earliest call start and the latest call end, and T0 lies between the
// earliest start and the earliest end. So the fleet admits
//
//	burst + R·(Tlast − T0)  ≈  burst + R·W
//
// with Tlast − T0 differing from W only by how late the first call reached
// Redis and by how long the last calls took, a few milliseconds, a
// fraction of one admission at 200/s. The test checks the count against
// burst + R·W within limiterTolerance, as the fleet's contract, and
// against the hard bound burst + R·(latest end − earliest start) + 1,
// which holds however the calls were delayed: the only error in it is
// that of the processes' clocks, a hundredth of an admission.
//
// "Never fills up again" holds as long as the fleet never stops asking
// for longer than the burst takes to refill (burst/R, half a second
// here): tokens that arrive while nobody asks are kept, up to the burst,
// and taken later. The burst is that large so that a machine that stalls
// the workers for a moment does not lose admissions.
func TestFleetLimiter(t *testing.T) {
	fleetScenario(t, "limiter", limiterWindow+30*time.Second, checkLimiter)
}

func checkLimiter(t *testing.T, run fleetRun) (misses []string) {
	reps := reports[limiterReport](t, run)
	var (
		allowed, refused, errs int
		firstStart, firstEnd   int64
		lastStart, lastEnd     int64
		lat                    []time.Duration
	)
	for i, r := range reps {
		allowed += r.Allowed
		refused += r.Refused
		errs += r.Errors
		if r.Outage {
			// A Redis that does not answer within the client's timeouts
			// (a stalled machine) is an outage; FailClosed then refuses,
			// so the count can only fall short.
			misses = append(misses, fmt.Sprintf("worker %d: the limiter lost Redis at some point and refused without it", i))
		}
		if r.Errors > 0 {
			t.Errorf("worker %d: %d calls failed, the first with %s", i, r.Errors, r.FirstErr)
		}
		if r.Allowed+r.Refused == 0 {
			t.Errorf("worker %d made no call", i)
			return nil
		}
		if firstStart == 0 || r.FirstStart < firstStart {
			firstStart, firstEnd = r.FirstStart, r.FirstEnd
		}
		lastStart, lastEnd = max(lastStart, r.LastStart), max(lastEnd, r.LastEnd)
		for _, us := range r.LatencyUS {
			lat = append(lat, time.Duration(us)*time.Microsecond)
		}
		t.Logf("worker %d: %d allowed, %d refused (%.0f calls/s)", i, r.Allowed, r.Refused,
			float64(r.Allowed+r.Refused)/limiterWindow.Seconds())
	}
	calls := allowed + refused + errs
	want := float64(limiterRate)*limiterWindow.Seconds() + limiterBurst
	span := time.Duration(lastEnd - firstStart)
	inner := time.Duration(lastStart - firstEnd)
	hardMax := limiterBurst + int(math.Floor(limiterRate*span.Seconds())) + 1
	accuracy := (float64(allowed) - want) / want

	t.Logf("fleet: %d calls in %v (%.0f/s, %.0f× the rate), %d allowed, want %.0f ± %.0f%%: off by %+.2f%%",
		calls, limiterWindow, float64(calls)/limiterWindow.Seconds(),
		float64(calls)/limiterWindow.Seconds()/limiterRate, allowed, want, 100*limiterTolerance, 100*accuracy)
	t.Logf("first call %s–%s after the start, last %s–%s: decisions spanned %v to %v, admitting %d to %d",
		msOff(run.start, firstStart), msOff(run.start, firstEnd), msOff(run.start, lastStart), msOff(run.start, lastEnd),
		round(inner), round(span),
		limiterBurst+int(math.Floor(limiterRate*inner.Seconds())), hardMax)
	t.Logf("Allow latency across the fleet: %v", distOf(lat))

	// Correctness: no view of the clocks excuses admitting more.
	if allowed > hardMax {
		t.Errorf("the fleet admitted %d, more than the burst plus the rate over the %v its calls spanned (%d)", allowed, span, hardMax)
	}
	// Timing: a fleet that stops asking for longer than the burst lasts
	// (a stalled machine) leaves tokens unused, and admits fewer.
	if calls < 5*limiterRate*int(limiterWindow/time.Second) {
		misses = append(misses, fmt.Sprintf("the fleet called only %d times in %v, under 5× the rate: it did not hammer the limit", calls, limiterWindow))
	}
	if math.Abs(accuracy) > limiterTolerance {
		misses = append(misses, fmt.Sprintf("the fleet admitted %d, want %.0f within %.0f%% (off by %+.2f%%)", allowed, want, 100*limiterTolerance, 100*accuracy))
	}
	return misses
}

// msOff shows an instant as milliseconds after origin (both ns).
func msOff(origin, t int64) string { return fmt.Sprintf("%.1fms", float64(t-origin)/1e6) }
