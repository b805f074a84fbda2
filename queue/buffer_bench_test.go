package queue_test

import (
	"context"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/queue"
)

// benchBackends are the stores the benchmarks compare. The Redis one
// deletes its keys when the benchmark ends; idempotency records expire
// within a minute.
func benchBackends() []struct {
	name     string
	newStore func(b *testing.B) queue.Store
} {
	return []struct {
		name     string
		newStore func(b *testing.B) queue.Store
	}{
		{"memory", func(b *testing.B) queue.Store {
			s, err := queue.NewMemoryStore("orders")
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
		{"redis", func(b *testing.B) queue.Store {
			c := redistest.Client(b)
			prefix := redistest.Prefix(b)
			s, err := queue.NewRedisStore(c, "orders", queue.WithKeyPrefix(prefix),
				queue.WithIdempotencyTTL(time.Minute))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { deleteKeys(c, prefix) })
			return s
		}},
	}
}

func deleteKeys(c *redis.Client, prefix string) {
	ctx := context.Background()
	for _, suffix := range []string{"stream", "retry", "dead"} {
		c.Del(ctx, prefix+"{orders}:"+suffix)
	}
}

// benchBody is the size of a small order.
var benchBody = []byte(`{"order":"1001","user":"u-42","sku":"phone-x","qty":1,"amount":4200,"currency":"CNY"}`)

// BenchmarkBufferEnqueue measures Enqueue one call at a time (on Redis, a
// round trip each) and from 32 goroutines at once (a busy order endpoint,
// where calls share round trips), with and without an idempotency key.
func BenchmarkBufferEnqueue(b *testing.B) {
	for _, be := range benchBackends() {
		b.Run(be.name+"/serial", func(b *testing.B) {
			buf, err := queue.NewBuffer(be.newStore(b))
			if err != nil {
				b.Fatal(err)
			}
			defer buf.Close()
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := buf.Enqueue(ctx, "", benchBody); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "orders/s")
		})
		for _, withKey := range []bool{false, true} {
			name := be.name + "/goroutines=32/no-key"
			if withKey {
				name = be.name + "/goroutines=32/key"
			}
			b.Run(name, func(b *testing.B) {
				buf, err := queue.NewBuffer(be.newStore(b))
				if err != nil {
					b.Fatal(err)
				}
				defer buf.Close()
				ctx := context.Background()
				var seq atomic.Int64
				b.SetParallelism((32 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					key := ""
					for pb.Next() {
						if withKey {
							key = "order-" + strconv.FormatInt(seq.Add(1), 10)
						}
						if _, err := buf.Enqueue(ctx, key, benchBody); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "orders/s")
			})
		}
	}
}

// BenchmarkBufferEndToEnd measures orders through the whole buffer: 16
// producers enqueue b.N orders (with idempotency keys) while one consumer
// with 64 handlers processes them; the clock stops when the last is
// acknowledged. "drain" enqueues first, untimed, and times the consumer
// alone.
func BenchmarkBufferEndToEnd(b *testing.B) {
	for _, be := range benchBackends() {
		for _, mode := range []string{"pipeline", "drain"} {
			b.Run(be.name+"/"+mode, func(b *testing.B) {
				buf, err := queue.NewBuffer(be.newStore(b),
					queue.WithConcurrency(64), queue.WithBufferPollInterval(10*time.Millisecond))
				if err != nil {
					b.Fatal(err)
				}
				defer buf.Close()
				ctx := context.Background()
				n := b.N
				produce := func() {
					var wg sync.WaitGroup
					var next atomic.Int64
					for range 16 {
						wg.Go(func() {
							for {
								i := next.Add(1)
								if i > int64(n) {
									return
								}
								if _, err := buf.Enqueue(ctx, "order-"+strconv.FormatInt(i, 10), benchBody); err != nil {
									b.Error(err)
									return
								}
							}
						})
					}
					wg.Wait()
				}
				if mode == "drain" {
					produce()
				}
				var handled atomic.Int64
				all := make(chan struct{})
				b.ReportAllocs()
				b.ResetTimer()
				runCtx, cancel := context.WithCancel(ctx)
				defer cancel()
				runDone := make(chan struct{})
				go func() {
					defer close(runDone)
					_ = buf.Run(runCtx, func(ctx context.Context, m queue.Message) error {
						if handled.Add(1) == int64(n) {
							close(all)
						}
						return nil
					})
				}()
				if mode == "pipeline" {
					produce()
				}
				<-all
				// The last acknowledgement is in when Run has drained.
				cancel()
				<-runDone
				b.StopTimer()
				b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "orders/s")
			})
		}
	}
}
