package breaker_test

import (
	"context"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
)

// A probe in flight when Reset replaces the breaker's state must not trip
// the reset breaker when it fails.
func TestRegressionResetIgnoresCallsOfTheOldState(t *testing.T) {
	b := breaker.New[int]("r", breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(time.Millisecond))
	run(t, b, fail, 1)
	time.Sleep(5 * time.Millisecond) // half-open
	started, finish := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Execute(context.Background(), func(context.Context) (int, error) {
			close(started)
			<-finish
			return 0, errDown
		})
	}()
	<-started
	b.Reset()
	close(finish)
	<-done
	if s := b.State(); s != breaker.StateClosed {
		t.Fatalf("the old probe's failure moved the reset breaker to %v", s)
	}
	if v, err := b.Execute(context.Background(), ok); v != 1 || err != nil {
		t.Fatalf("after Reset: %v, %v", v, err)
	}
}
