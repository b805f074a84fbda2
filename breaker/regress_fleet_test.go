package breaker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/internal/redistest"
)

// A fleet probe admitted by Allow whose done arrives late (after its claim
// expired and another instance's probe failed and reopened the fleet) must
// not close every instance with its stale success.
func TestRegressionFleetLateAllowDoneIsDropped(t *testing.T) {
	const timeout = 300 * time.Millisecond
	a, b := fleetPair(t, timeout)
	run(t, a, fail, 1)
	waitState(t, b, breaker.StateOpen, time.Second)
	time.Sleep(timeout + 50*time.Millisecond)

	doneA, err := a.Allow(context.Background()) // a's probe: slow
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(timeout + 50*time.Millisecond) // a's claim expires
	if _, err := b.Execute(context.Background(), fail); !errors.Is(err, errDown) {
		t.Fatalf("b's probe: %v", err)
	}
	// b's probe failed: the fleet is open again for timeout.
	waitState(t, b, breaker.StateOpen, time.Second)
	time.Sleep(50 * time.Millisecond)
	doneA(nil) // a's stale success
	if reachesState(b, breaker.StateClosed, 150*time.Millisecond) {
		t.Fatal("a stale Allow outcome closed the fleet right after a newer probe failed")
	}
}

// A fleet probe admitted by Allow that never finishes holds this
// instance's probe slot only until the fleet's state changes or Reset.
func TestRegressionFleetHungAllowProbeEndsWithReset(t *testing.T) {
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	const timeout = 200 * time.Millisecond
	a := breaker.New[int]("pay", breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
		breaker.WithOpenTimeout(timeout), breaker.WithFleet(newInstance(t, addr, prefix)))
	ctx := context.Background()
	run(t, a, fail, 1)
	time.Sleep(timeout + 50*time.Millisecond)
	if _, err := a.Allow(ctx); err != nil { // a probe that hangs
		t.Fatal(err)
	}
	a.Reset()
	run(t, a, fail, 1)
	time.Sleep(3 * timeout) // past the open timeout and the old claim
	done, err := a.Allow(ctx)
	if errors.Is(err, breaker.ErrTooManyRequests) {
		t.Fatal("a hung fleet probe of an earlier state blocks this one (and every later one)")
	}
	if err != nil {
		t.Fatal(err)
	}
	done(nil)
}

// A probe whose caller cancelled is Ignored and gives its claim up, so the
// next call, on any instance, can probe without waiting for it to expire.
func TestRegressionFleetIgnoredProbeReleasesClaim(t *testing.T) {
	const timeout = 2 * time.Second
	a, b := fleetPair(t, timeout)
	run(t, a, fail, 1)
	waitState(t, b, breaker.StateOpen, time.Second)
	time.Sleep(timeout + 50*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := a.Execute(ctx, func(ctx context.Context) (int, error) {
		cancel()
		return 0, ctx.Err()
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("probe: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	for _, br := range []*breaker.Breaker[int]{a, b} {
		if _, err := br.Execute(context.Background(), ok); err != nil {
			t.Errorf("the probe was ignored, yet the next call is rejected: %v", err)
		}
	}
}
