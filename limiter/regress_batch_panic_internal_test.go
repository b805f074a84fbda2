package limiter

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

// panicHook panics in the first n script calls it sees.
type panicHook struct{ left atomic.Int32 }

func (h *panicHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *panicHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.left.Add(-1) >= 0 {
			panic("hook failed")
		}
		return next(ctx, cmd)
	}
}
func (h *panicHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A panic during a batch's Redis call must not leave the batcher's line
// stuck: after more panics than batches may be in flight, a decision is
// still made.
func TestRegressionBatchSurvivesPanics(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: redistest.Addr(t)})
	t.Cleanup(func() { c.Close() })
	hook := &panicHook{}
	hook.left.Store(maxInflight + 2)
	c.AddHook(hook)
	// A panic counts as a Redis failure: with a short retry interval each
	// call below, made after it, probes Redis and meets the hook.
	const retry = time.Millisecond
	r, err := NewRedis(c, PerSecond(100, 100), WithPrefix(redistest.Prefix(t)), WithRetryInterval(retry))
	if err != nil {
		t.Fatal(err)
	}
	// A panic that kept its place on the wire would leave the calls after
	// the first maxInflight waiting in line until ctx ends. (internal/batch
	// checks the count itself.)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range maxInflight + 2 {
		time.Sleep(5 * retry)
		func() {
			defer func() {
				if recover() == nil {
					t.Error("the hook's panic was swallowed")
				}
			}()
			r.Allow(ctx, "k")
		}()
	}
	time.Sleep(5 * retry)
	if d, err := r.Allow(ctx, "k"); err != nil || !d.Allowed {
		t.Fatalf("after the panics: %+v, %v", d, err)
	}
}
