package breaker_test

import (
	"context"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
)

func panicking(context.Context) (int, error) { panic("boom") }

func executeRecovering(b *breaker.Breaker[int], fn func(context.Context) (int, error)) {
	defer func() { _ = recover() }()
	b.Execute(context.Background(), fn)
}

// A panic is a failure for policies with a window of their own too.
func TestRegressionPanicReachesThePolicyWindow(t *testing.T) {
	b := breaker.New[int]("p", breaker.WithTripPolicy(breaker.FailureRateOfLast(0.5, 4)))
	for range 4 {
		executeRecovering(b, panicking)
	}
	if s := b.State(); s != breaker.StateOpen {
		t.Fatalf("4 panics in the last 4 calls left the breaker %v", s)
	}
}

// The change made by a panicking call reaches the listeners without
// waiting for a later State call.
func TestRegressionPanicTripIsDelivered(t *testing.T) {
	changes := 0
	b := breaker.New[int]("p",
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
		breaker.WithOpenTimeout(time.Hour),
		breaker.WithListener(func(breaker.StateChange) { changes++ }))
	executeRecovering(b, panicking)
	if changes != 1 {
		t.Fatalf("%d changes delivered after the panic tripped the breaker, want 1", changes)
	}
}
