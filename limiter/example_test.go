package limiter_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bulwarkgo/bulwark/limiter"
)

// A Local limits each key on its own. AllowNAt takes the instant, so this
// example always prints the same thing.
func ExampleLocal() {
	l, err := limiter.NewLocal(limiter.PerSecond(1, 3))
	if err != nil {
		panic(err)
	}
	now := time.Date(2026, 11, 11, 12, 0, 0, 0, time.UTC)
	for range 4 {
		d, _ := l.AllowNAt(now, "alice", 1)
		fmt.Printf("allowed=%v remaining=%d retry after %v\n", d.Allowed, d.Remaining, d.RetryAfter)
	}
	d, _ := l.AllowNAt(now, "bob", 1)
	fmt.Printf("bob: allowed=%v remaining=%d\n", d.Allowed, d.Remaining)

	d, _ = l.AllowNAt(now.Add(1500*time.Millisecond), "alice", 1)
	fmt.Printf("1.5s later: allowed=%v remaining=%d full in %v\n", d.Allowed, d.Remaining, d.ResetAfter)
	// Output:
	// allowed=true remaining=2 retry after 0s
	// allowed=true remaining=1 retry after 0s
	// allowed=true remaining=0 retry after 0s
	// allowed=false remaining=0 retry after 1s
	// bob: allowed=true remaining=2
	// 1.5s later: allowed=true remaining=0 full in 2.5s
}

// In a handler, Allow decides with the current time, and Decision.Err turns
// a refusal into an error that carries RetryAfter.
func ExampleLocal_Allow() {
	l, err := limiter.NewLocal(limiter.PerMinute(10, 2), limiter.WithName("api"))
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	for range 3 {
		d, err := l.Allow(ctx, "203.0.113.7")
		if err != nil {
			panic(err) // cancelled context; not a refusal
		}
		if err := d.Err(); errors.Is(err, limiter.ErrLimited) {
			fmt.Println("429, try again later")
			continue
		}
		fmt.Println("200, remaining", d.Remaining)
	}
	// Output:
	// 200, remaining 1
	// 200, remaining 0
	// 429, try again later
}

// AllowN with n = 0 reports a key's state without taking anything.
func ExampleLocal_AllowN() {
	l, err := limiter.NewLocal(limiter.PerMinute(60, 10))
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	if _, err := l.AllowN(ctx, "upload:42", 4); err != nil {
		panic(err)
	}
	d, _ := l.AllowN(ctx, "upload:42", 0)
	fmt.Println("remaining", d.Remaining)

	_, err = l.AllowN(ctx, "upload:42", 11)
	fmt.Println(errors.Is(err, limiter.ErrBurstExceeded))
	// Output:
	// remaining 6
	// true
}

// WithMaxKeys bounds memory: past the bound, a new key displaces the least
// recently used of a sample of old ones.
func ExampleWithMaxKeys() {
	l, err := limiter.NewLocal(limiter.PerSecond(1, 1), limiter.WithMaxKeys(2))
	if err != nil {
		panic(err)
	}
	now := time.Date(2026, 11, 11, 12, 0, 0, 0, time.UTC)
	for i, user := range []string{"ann", "ben", "cat", "dan"} {
		_, _ = l.AllowNAt(now.Add(time.Duration(i)*time.Millisecond), user, 1)
	}
	fmt.Println("keys held:", l.Len())
	// Output:
	// keys held: 2
}

// Eviction happens as new keys arrive. A janitor also returns the memory
// of keys that went quiet when no new keys come.
func ExampleLocal_StartJanitor() {
	l, err := limiter.NewLocal(limiter.PerSecond(100, 200))
	if err != nil {
		panic(err)
	}
	stop := l.StartJanitor(time.Minute)
	defer stop()

	_, _ = l.Allow(context.Background(), "tenant-7")
}
