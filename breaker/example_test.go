package breaker_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/breaker"
)

// A payment gateway behind a breaker: after three failures in a row it
// opens, and calls fail fast with ErrOpen instead of waiting on the
// gateway.
func ExampleNew() {
	gateway := breaker.New[string]("wxpay",
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(3)),
		breaker.WithOpenTimeout(10*time.Second),
	)
	pay := func(ctx context.Context) (string, error) {
		return "", errors.New("gateway timeout")
	}
	ctx := context.Background()
	for i := 1; i <= 4; i++ {
		_, err := gateway.Execute(ctx, pay)
		fmt.Printf("call %d: %v (open: %v)\n", i, err, errors.Is(err, breaker.ErrOpen))
	}
	fmt.Println("state:", gateway.State())
	// Output:
	// call 1: gateway timeout (open: false)
	// call 2: gateway timeout (open: false)
	// call 3: gateway timeout (open: false)
	// call 4: breaker wxpay: open (open: true)
	// state: open
}

// Trip on the share of failures among recent calls, or when most calls
// are slow, whichever comes first.
func ExampleAnyOf() {
	b := breaker.New[int]("maps",
		breaker.WithTripPolicy(breaker.AnyOf(
			breaker.FailureRate(0.5, 20, time.Minute),                 // half of at least 20 calls in a minute
			breaker.SlowCallRate(2*time.Second, 0.8, 20, time.Minute), // or 80% slower than 2s
		)),
		breaker.WithJitter(0.2), // instances of a fleet probe at different moments
	)
	fmt.Println(b.State())
	// Output: closed
}

// A declined card is the gateway's correct answer, not its failure: the
// classifier counts it as a success, so declines never open the breaker.
func ExampleWithClassifier() {
	errDeclined := errors.New("card declined")
	b := breaker.New[string]("alipay",
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(2)),
		breaker.WithClassifier(func(err error) breaker.Outcome {
			if err == nil || errors.Is(err, errDeclined) {
				return breaker.Success
			}
			return breaker.Failure
		}),
	)
	for range 5 {
		b.Execute(context.Background(), func(context.Context) (string, error) { return "", errDeclined })
	}
	fmt.Println(b.State(), b.Counts().TotalSuccesses)
	// Output: closed 5
}

// The two-step form, for code that cannot wrap the call in a function.
func ExampleBreaker_Allow() {
	b := breaker.New[struct{}]("sms")
	done, err := b.Allow(context.Background())
	if err != nil {
		fmt.Println("rejected:", err)
		return
	}
	err = sendSMS()
	done(err)
	fmt.Println(b.State())
	// Output: closed
}

func sendSMS() error { return nil }

// Listeners run outside any lock and may ask the breaker anything.
func ExampleWithListener() {
	var b *breaker.Breaker[int]
	b = breaker.New[int]("db",
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
		breaker.WithListener(func(c breaker.StateChange) {
			fmt.Printf("%s: %v -> %v (now %v)\n", c.Name, c.From, c.To, b.State())
		}),
	)
	b.Execute(context.Background(), func(context.Context) (int, error) { return 0, errors.New("down") })
	// Output: db: closed -> open (now open)
}

// Every instance of the service shares the breaker's state through Redis:
// when one opens it, all do; one probes for all.
func ExampleNewFleet() {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()
	fleet, err := breaker.NewFleet(context.Background(), client)
	if err != nil {
		log.Fatal(err) // Redis unreachable at start-up
	}
	defer fleet.Close()

	gateway := breaker.New[string]("wxpay",
		breaker.WithFleet(fleet),
		breaker.WithTripPolicy(breaker.FailureRate(0.5, 20, 30*time.Second)),
	)
	_, err = gateway.Execute(context.Background(), func(ctx context.Context) (string, error) {
		return "paid", nil
	})
	fmt.Println(err)
}
