package breaker_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
)

// A done that arrives after the breaker changed state belongs to the
// earlier state: it must not close a half-open breaker.
func TestRegressionAllowLateDoneIsDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := breaker.New[int]("a", breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(time.Second))
		done, err := b.Allow(context.Background()) // admitted while closed
		if err != nil {
			t.Fatal(err)
		}
		run(t, b, fail, 1)
		time.Sleep(time.Second + time.Millisecond)
		if s := b.State(); s != breaker.StateHalfOpen {
			t.Fatalf("state %v, want half-open", s)
		}
		done(nil)
		if s := b.State(); s != breaker.StateHalfOpen {
			t.Fatalf("a late done moved the breaker to %v without a probe", s)
		}
	})
}

// A probe admitted by Allow that never finishes holds its slot only for the
// half-open state it was admitted in, not for every later one.
func TestRegressionAllowProbeSlotsResetWithState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := breaker.New[int]("a", breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(time.Second))
		ctx := context.Background()
		run(t, b, fail, 1)
		time.Sleep(time.Second + time.Millisecond)
		if _, err := b.Allow(ctx); err != nil { // a probe that hangs
			t.Fatal(err)
		}
		b.Reset()
		run(t, b, fail, 1)
		time.Sleep(time.Second + time.Millisecond)
		done, err := b.Allow(ctx)
		if errors.Is(err, breaker.ErrTooManyRequests) {
			t.Fatal("a hung probe of an earlier half-open state blocks this one")
		}
		if err != nil {
			t.Fatal(err)
		}
		done(nil)
		if s := b.State(); s != breaker.StateClosed {
			t.Fatalf("after a good probe: %v", s)
		}
	})
}
