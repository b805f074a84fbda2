package limiter_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bulwarkgo/bulwark/limiter"
)

func ExampleAdaptive() {
	lim, err := limiter.NewAdaptive(limiter.WithInitialLimit(2), limiter.WithMaxLimit(100))
	if err != nil {
		panic(err)
	}
	ctx := context.Background()

	// Two requests are admitted; a third, while they are in flight, is shed
	// at once rather than queued.
	p1, _ := lim.Acquire(ctx)
	p2, _ := lim.Acquire(ctx)
	_, err = lim.Acquire(ctx)
	fmt.Println("third request shed:", errors.Is(err, limiter.ErrLimited))
	fmt.Println("in flight:", lim.Inflight(), "of", lim.Limit())

	// Finishing a permit gives its slot back and reports the outcome:
	// success (a latency sample), or a timeout (an overload signal).
	p1.Finish(nil)
	p2.Finish(context.DeadlineExceeded)
	fmt.Println("in flight:", lim.Inflight())
	// Output:
	// third request shed: true
	// in flight: 2 of 2
	// in flight: 0
}

// A handler admits each request through the limiter and finishes the permit
// with the request's error, which tells the limiter how it went.
func ExamplePermit_Finish() {
	lim, err := limiter.NewAdaptive()
	if err != nil {
		panic(err)
	}
	callPayment := func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return ctx.Err() // the real call goes here
	}
	handle := func(ctx context.Context) error {
		p, err := lim.Acquire(ctx)
		if err != nil {
			return err // ErrLimited: answer 503 and let the client retry
		}
		err = callPayment(ctx)
		p.Finish(err)
		return err
	}

	fmt.Println(handle(context.Background()))
	// Output:
	// <nil>
}
