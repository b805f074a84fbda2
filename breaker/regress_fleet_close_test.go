package breaker_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/internal/redistest"
)

// After Fleet.Close the breaker is local: its half-open calls claim
// nothing in Redis.
func TestRegressionClosedFleetProbesLocally(t *testing.T) {
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { c.Close() })
	f, err := breaker.NewFleet(context.Background(), c, breaker.WithFleetPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 100 * time.Millisecond
	a := breaker.New[int]("pay", breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(timeout), breaker.WithFleet(f))
	time.Sleep(50 * time.Millisecond)
	f.Close()
	run(t, a, fail, 1)
	time.Sleep(timeout + 20*time.Millisecond)
	a.Execute(context.Background(), ok)
	if n, _ := c.Exists(context.Background(), prefix+"{pay}:probe").Result(); n == 1 {
		t.Fatal("a breaker of a closed Fleet claimed its probe in Redis")
	}
}
