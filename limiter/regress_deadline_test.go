package limiter_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/limiter"
)

// Regression: decisions sharing a script call were sent with a context
// stripped of the callers' deadlines, so with ContextTimeoutEnabled a
// stalled Redis held a caller with a 100ms deadline for the whole stall,
// and it then got Redis' late decision with a nil error. Now a caller gets
// its context's error at its deadline, and the limiter does not count the
// stall as an outage.
func TestRegressionBatchedDecisionKeepsDeadline(t *testing.T) {
	srv := redistest.StartServerWith(t, "--enable-debug-command", "local")
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	r := newRedis(t, c, limiter.PerSecond(10, 10), limiter.WithOutagePolicy(limiter.FailOpen))
	if _, err := r.Allow(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}

	// margin is generous for two shared, busy cores under the race
	// detector, and far shorter than the stall.
	const timeout, margin = 100 * time.Millisecond, 500 * time.Millisecond
	type result struct {
		callers    int
		d          limiter.Decision
		err        error
		start, end time.Time
	}
	for attempt := 1; ; attempt++ {
		var mu sync.Mutex
		var results []result
		var inOutage []bool
		wait := srv.Stall(t, 2*time.Second)
		for _, callers := range []int{1, 8} {
			var wg sync.WaitGroup
			for range callers {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), timeout)
					defer cancel()
					start := time.Now()
					d, err := r.Allow(ctx, "k")
					mu.Lock()
					results = append(results, result{callers, d, err, start, time.Now()})
					mu.Unlock()
				})
			}
			wg.Wait()
			inOutage = append(inOutage, r.InOutage())
		}
		began := wait()
		covered := true
		for _, res := range results {
			covered = covered && res.start.After(began) && res.end.Before(began.Add(2*time.Second))
		}
		if !covered {
			// The server had not begun to sleep when the calls began.
			if attempt == 3 {
				t.Fatal("three stalls in a row did not cover the calls")
			}
			time.Sleep(time.Second) // out of any outage the early calls caused
			continue
		}
		for _, res := range results {
			if !errors.Is(res.err, context.DeadlineExceeded) || res.d.Allowed {
				t.Errorf("%d callers: Allow on a stalled Redis = %+v, %v; want context.DeadlineExceeded", res.callers, res.d, res.err)
			}
			if took := res.end.Sub(res.start); took > timeout+margin {
				t.Errorf("%d callers: Allow with a %v deadline returned after %v", res.callers, timeout, took)
			}
		}
		for i, out := range inOutage {
			if out {
				t.Errorf("%d callers: a stall that outlasted the callers' deadlines was counted as an outage", []int{1, 8}[i])
			}
		}
		return
	}
}
