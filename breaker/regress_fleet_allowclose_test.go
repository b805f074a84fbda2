package breaker_test

import (
	"context"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/internal/redistest"
)

// A successful fleet probe made through Allow closes the prober's own
// breaker too, not only the others'.
func TestRegressionFleetAllowProbeClosesProber(t *testing.T) {
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	const timeout = 200 * time.Millisecond
	opts := []breaker.Option{breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(timeout)}
	a := breaker.New[int]("pay", append(opts, breaker.WithFleet(newInstance(t, addr, prefix)))...)
	b := breaker.New[int]("pay", append(opts, breaker.WithFleet(newInstance(t, addr, prefix)))...)
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
