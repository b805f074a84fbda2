package breaker_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
)

// Two Resets racing (or Reset racing a fleet's "closed") may store the
// gobreaker made first last; its changes must still be reported.
func TestRegressionOverlappingResetsKeepReporting(t *testing.T) {
	for i := range 2000 {
		var opened atomic.Int32
		b := breaker.New[int]("g",
			breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
			breaker.WithOpenTimeout(time.Hour),
			breaker.WithListener(func(c breaker.StateChange) {
				if c.To == breaker.StateOpen {
					opened.Add(1)
				}
			}))
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 2 {
			wg.Go(func() { <-start; b.Reset() })
		}
		close(start)
		wg.Wait()
		b.Execute(context.Background(), fail)
		if b.State() != breaker.StateOpen {
			t.Fatalf("iteration %d: not open", i)
		}
		if opened.Load() == 0 {
			t.Fatalf("iteration %d: the breaker opened (State()=%v) but no listener heard it: its gobreaker's changes are ignored for good", i, b.State())
		}
	}
}
