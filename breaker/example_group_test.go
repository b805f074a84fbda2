package breaker_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
)

// One breaker per merchant: a merchant whose payment endpoint keeps failing
// is cut off, while calls for every other merchant go on.
func ExampleGroup() {
	merchants := breaker.NewGroup[string]("merchant-api",
		breaker.WithMaxKeys(50_000),
		breaker.WithIdleTimeout(15*time.Minute),
		breaker.WithBreakerOptions(
			breaker.WithTripPolicy(breaker.ConsecutiveFailures(3)),
			breaker.WithOpenTimeout(time.Minute)))

	notify := func(merchant string) func(context.Context) (string, error) {
		return func(context.Context) (string, error) {
			if merchant == "m-1042" {
				return "", errors.New("503 from the merchant's webhook")
			}
			return "notified " + merchant, nil
		}
	}

	ctx := context.Background()
	for range 3 {
		_, _ = merchants.Execute(ctx, "m-1042", notify("m-1042"))
	}
	_, err := merchants.Execute(ctx, "m-1042", notify("m-1042"))
	fmt.Println("m-1042:", errors.Is(err, breaker.ErrOpen), merchants.State("m-1042"))

	v, err := merchants.Execute(ctx, "m-7", notify("m-7"))
	fmt.Println("m-7:", v, err, merchants.State("m-7"))
	fmt.Println("keys:", merchants.Len())
	// Output:
	// m-1042: true open
	// m-7: notified m-7 <nil> closed
	// keys: 2
}
