package breaker_test

import (
	"context"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
)

// A successful fleet probe made through Allow closes the prober's own
// breaker too, not only the others'.
func TestRegressionFleetAllowProbeClosesProber(t *testing.T) {
	const timeout = 200 * time.Millisecond
	a, b := fleetPair(t, timeout)
	run(t, a, fail, 1)
	waitState(t, b, breaker.StateOpen, time.Second)
	time.Sleep(timeout + 50*time.Millisecond)
	done, err := a.Allow(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	done(nil)
	waitState(t, b, breaker.StateClosed, time.Second)
	if s := a.State(); s != breaker.StateClosed {
		t.Fatalf("the prober's own breaker is %v after its fleet probe succeeded (b is closed)", s)
	}
}
