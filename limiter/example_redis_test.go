package limiter_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/limiter"
)

// One limit for the whole fleet: every instance sharing this Redis admits
// 100 orders per second per merchant between them. While Redis is down each
// instance enforces a quarter of the limit by itself (four instances).
func ExampleNewRedis() {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()

	orders, err := limiter.NewRedis(client, limiter.PerSecond(100, 20),
		limiter.WithName("orders-per-merchant"),
		limiter.WithOutagePolicy(limiter.FallbackLocal(0.25)),
	)
	if err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	d, err := orders.Allow(ctx, "merchant:1024")
	if err != nil {
		log.Fatal(err) // the context ended before a decision
	}
	if !d.Allowed {
		fmt.Printf("busy, retry in %v\n", d.RetryAfter)
		return
	}
	fmt.Printf("accepted, %d left in this burst\n", d.Remaining)
}

// Taking several tokens at once: a bulk export costs ten.
func ExampleRedis_AllowN() {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()
	exports, err := limiter.NewRedis(client, limiter.PerMinute(60, 30))
	if err != nil {
		log.Fatal(err)
	}
	d, err := exports.AllowN(context.Background(), "tenant:7", 10)
	if err != nil {
		log.Fatal(err)
	}
	if err := d.Err(); err != nil {
		fmt.Println(err) // matches limiter.ErrLimited
	}
}
