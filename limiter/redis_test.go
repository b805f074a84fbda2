package limiter_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/limiter"
)

func newRedis(t *testing.T, c redis.UniversalClient, l limiter.Limit, opts ...limiter.RedisOption) *limiter.Redis {
	t.Helper()
	opts = append([]limiter.RedisOption{limiter.WithPrefix(redistest.Prefix(t))}, opts...)
	r, err := limiter.NewRedis(c, l, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRedisExactSteps(t *testing.T) {
	r := newRedis(t, redistest.Client(t), limiter.PerSecond(10, 10))
	ctx := context.Background()
	for i := range 10 {
		d, err := r.Allow(ctx, "user-1")
		if err != nil {
			t.Fatal(err)
		}
		if !d.Allowed || d.Remaining != 9-i || d.RetryAfter != 0 {
			t.Fatalf("call %d: got %+v, want allowed with Remaining %d", i+1, d, 9-i)
		}
	}
	d, err := r.Allow(ctx, "user-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Allowed || d.Remaining != 0 {
		t.Fatalf("11th call: got %+v, want refused with Remaining 0", d)
	}
	// The bucket regains a token every 100 ms; the calls above took some
	// of that already.
	if d.RetryAfter <= 50*time.Millisecond || d.RetryAfter > 100*time.Millisecond {
		t.Fatalf("RetryAfter = %v, want about 100ms", d.RetryAfter)
	}
	if d.ResetAfter <= 900*time.Millisecond || d.ResetAfter > time.Second {
		t.Fatalf("ResetAfter = %v, want about 1s", d.ResetAfter)
	}
	if d.Limit != limiter.PerSecond(10, 10) {
		t.Fatalf("Limit = %v", d.Limit)
	}
	// Another key has its own bucket.
	if d, _ := r.Allow(ctx, "user-2"); !d.Allowed || d.Remaining != 9 {
		t.Fatalf("other key: %+v", d)
	}
}

// A float-based GCRA reports 8 remaining after the first of 10/s burst 10,
// because 0.9/0.1 is 8.999… in floating point and Redis truncates Lua
// numbers in replies. The script works in whole microseconds.
func TestRedisRemainingHasNoFloatTruncation(t *testing.T) {
	c := redistest.Client(t)
	ctx := context.Background()
	for _, l := range []limiter.Limit{
		limiter.PerSecond(10, 10), limiter.PerSecond(3, 3), limiter.PerSecond(7, 20),
		limiter.PerSecond(100, 100), limiter.PerMinute(30, 5), limiter.PerSecond(1000, 1),
		{Rate: 9, Period: 900 * time.Millisecond, Burst: 9},
	} {
		r := newRedis(t, c, l)
		if d, err := r.AllowN(ctx, "k", 0); err != nil || !d.Allowed || d.Remaining != l.Burst {
			t.Errorf("%v: peek got %+v, %v; want Remaining %d", l, d, err, l.Burst)
		}
		if d, err := r.Allow(ctx, "k"); err != nil || !d.Allowed || d.Remaining != l.Burst-1 {
			t.Errorf("%v: first call got %+v, %v; want Remaining %d", l, d, err, l.Burst-1)
		}
	}
}

func TestRedisAllowN(t *testing.T) {
	r := newRedis(t, redistest.Client(t), limiter.PerSecond(10, 10))
	ctx := context.Background()
	if d, err := r.AllowN(ctx, "k", 7); err != nil || !d.Allowed || d.Remaining != 3 {
		t.Fatalf("AllowN 7: %+v, %v", d, err)
	}
	d, err := r.AllowN(ctx, "k", 5)
	if err != nil || d.Allowed || d.Remaining != 3 {
		t.Fatalf("AllowN 5 with 3 left: %+v, %v", d, err)
	}
	// Two more tokens take about 200 ms.
	if d.RetryAfter <= 150*time.Millisecond || d.RetryAfter > 200*time.Millisecond {
		t.Fatalf("RetryAfter = %v, want about 200ms", d.RetryAfter)
	}
	if _, err := r.AllowN(ctx, "k", 11); !errors.Is(err, limiter.ErrBurstExceeded) {
		t.Fatalf("n > burst: err = %v", err)
	}
	if _, err := r.AllowN(ctx, "k", -1); !errors.Is(err, limiter.ErrInvalidN) {
		t.Fatalf("n < 0: err = %v", err)
	}
}

func TestRedisKeyIsHashTaggedAndExpires(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t)
	r, err := limiter.NewRedis(c, limiter.PerSecond(10, 10), limiter.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := r.AllowN(ctx, "shop:42", 5); err != nil {
		t.Fatal(err)
	}
	ttl, err := c.PTTL(ctx, prefix+"{shop:42}").Result()
	if err != nil {
		t.Fatal(err)
	}
	// Five tokens come back in 500 ms; the key expires then.
	if ttl <= 0 || ttl > 500*time.Millisecond {
		t.Fatalf("PTTL = %v, want in (0, 500ms]", ttl)
	}
}

func TestRedisReset(t *testing.T) {
	r := newRedis(t, redistest.Client(t), limiter.PerSecond(1, 2))
	ctx := context.Background()
	r.AllowN(ctx, "k", 2)
	if d, _ := r.Allow(ctx, "k"); d.Allowed {
		t.Fatal("allowed past the burst")
	}
	if err := r.Reset(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if d, _ := r.Allow(ctx, "k"); !d.Allowed || d.Remaining != 1 {
		t.Fatalf("after Reset: %+v", d)
	}
}

// Eight goroutines on two clients (two instances of a service) for 2 s at
// 100/s admit the burst plus 100 per second of the window, within 2%.
func TestRedisAccuracyAcrossClients(t *testing.T) {
	if testing.Short() {
		t.Skip("2 s of load")
	}
	addr := redistest.Addr(t)
	prefix := redistest.Prefix(t)
	const rate, burst = 100, 10
	var lims [2]*limiter.Redis
	for i := range lims {
		var err error
		lims[i], err = limiter.NewRedis(redistest.NewClient(t, addr), limiter.PerSecond(rate, burst), limiter.WithPrefix(prefix))
		if err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	var admitted, calls atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(2 * time.Second)
	for g := range 8 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				d, err := lims[g%2].Allow(ctx, "global")
				if err != nil {
					t.Error(err)
					return
				}
				calls.Add(1)
				if d.Allowed {
					admitted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	want := burst + rate*elapsed.Seconds()
	got := float64(admitted.Load())
	t.Logf("admitted %v of %d calls in %v; expected %.1f", got, calls.Load(), elapsed, want)
	if got < want*0.98 || got > want*1.02 {
		t.Fatalf("admitted %v, want %.1f ± 2%%", got, want)
	}
}

func TestRedisCallerCancelIsNotAnOutage(t *testing.T) {
	r := newRedis(t, redistest.Client(t), limiter.PerSecond(10, 10))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Allow(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if r.InOutage() {
		t.Fatal("a cancelled caller put the limiter in outage mode")
	}
}

// countingHook counts the commands a client sends.
type countingHook struct{ n atomic.Int64 }

func (h *countingHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}
func (h *countingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func TestRedisOutagePolicies(t *testing.T) {
	ctx := context.Background()
	const retry = 200 * time.Millisecond
	for _, tc := range []struct {
		policy limiter.OutagePolicy
		check  func(t *testing.T, r *limiter.Redis)
	}{
		{limiter.FailOpen, func(t *testing.T, r *limiter.Redis) {
			for range 20 {
				if d, err := r.Allow(ctx, "k"); err != nil || !d.Allowed {
					t.Fatalf("FailOpen: %+v, %v", d, err)
				}
			}
		}},
		{limiter.FailClosed, func(t *testing.T, r *limiter.Redis) {
			d, err := r.Allow(ctx, "k")
			if err != nil || d.Allowed || d.RetryAfter != retry {
				t.Fatalf("FailClosed: %+v, %v", d, err)
			}
		}},
		{limiter.FallbackLocal(0.5), func(t *testing.T, r *limiter.Redis) {
			// Half of burst 10 locally: five allowed, then refused.
			for i := range 5 {
				if d, err := r.Allow(ctx, "k"); err != nil || !d.Allowed || d.Remaining != 4-i {
					t.Fatalf("FallbackLocal call %d: %+v, %v", i+1, d, err)
				}
			}
			if d, err := r.Allow(ctx, "k"); err != nil || d.Allowed || d.RetryAfter <= 0 {
				t.Fatalf("FallbackLocal 6th call: %+v, %v", d, err)
			}
		}},
	} {
		t.Run(tc.policy.String(), func(t *testing.T) {
			srv := redistest.StartServer(t)
			c := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: 1, DialTimeout: 200 * time.Millisecond})
			t.Cleanup(func() { c.Close() })
			hook := &countingHook{}
			c.AddHook(hook)
			r := newRedis(t, c, limiter.PerSecond(10, 10), limiter.WithOutagePolicy(tc.policy), limiter.WithRetryInterval(retry))

			if d, err := r.AllowN(ctx, "k", 3); err != nil || !d.Allowed || d.Remaining != 7 {
				t.Fatalf("before outage: %+v, %v", d, err)
			}
			srv.Kill()
			tc.check(t, r)
			if !r.InOutage() {
				t.Fatal("InOutage() = false with Redis down")
			}
			// While the retry interval runs, callers do not touch Redis.
			sent := hook.n.Load()
			for range 50 {
				r.Allow(ctx, "other")
			}
			if r.InOutage() && hook.n.Load() != sent {
				t.Fatalf("%d commands sent to a Redis known to be down", hook.n.Load()-sent)
			}
			if err := r.Reset(ctx, "k"); !errors.Is(err, limiter.ErrUnavailable) {
				t.Fatalf("Reset during outage: %v", err)
			}

			srv.Start(t)
			// Within a few retry intervals one call probes Redis and all
			// return to it. The restarted Redis lost its data: a fresh
			// bucket of 10 shows the decision came from Redis.
			deadline := time.Now().Add(20 * retry)
			for {
				d, err := r.Allow(ctx, "fresh")
				if err != nil {
					t.Fatal(err)
				}
				if !r.InOutage() && d.Allowed && d.Remaining == 9 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("limiter did not return to Redis; last decision %+v", d)
				}
				time.Sleep(retry / 4)
			}
		})
	}
}

func TestRedisMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	r := newRedis(t, redistest.Client(t), limiter.PerSecond(1, 2), limiter.WithName("orders"), limiter.WithMeterProvider(mp))
	ctx := context.Background()
	for range 3 {
		r.Allow(ctx, "k")
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	var durations uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch data := m.Data.(type) {
			case metricdata.Sum[int64]:
				if m.Name != "bulwark.limiter.decisions" {
					continue
				}
				for _, dp := range data.DataPoints {
					name, _ := dp.Attributes.Value("bulwark.limiter.name")
					result, _ := dp.Attributes.Value("bulwark.limiter.result")
					got[name.AsString()+"/"+result.AsString()] += dp.Value
				}
			case metricdata.Histogram[float64]:
				if m.Name == "bulwark.limiter.redis.duration" {
					for _, dp := range data.DataPoints {
						durations += dp.Count
					}
				}
			}
		}
	}
	if got["orders/allowed"] != 2 || got["orders/limited"] != 1 {
		t.Fatalf("decisions = %v, want 2 allowed and 1 limited", got)
	}
	if durations != 3 {
		t.Fatalf("redis duration samples = %d, want 3", durations)
	}
}

func TestNewRedisValidates(t *testing.T) {
	c := redistest.Client(t)
	for _, tc := range []struct {
		name   string
		client redis.UniversalClient
		limit  limiter.Limit
		opts   []limiter.RedisOption
		field  string
	}{
		{"nil client", nil, limiter.PerSecond(1, 1), nil, "client"},
		{"zero rate", c, limiter.PerSecond(0, 1), nil, "Limit.Rate"},
		{"negative rate", c, limiter.PerSecond(-5, 1), nil, "Limit.Rate"},
		{"zero burst", c, limiter.PerSecond(1, 0), nil, "Limit.Burst"},
		{"zero period", c, limiter.Limit{Rate: 1, Burst: 1}, nil, "Limit.Period"},
		{"braces in prefix", c, limiter.PerSecond(1, 1), []limiter.RedisOption{limiter.WithPrefix("a{b}")}, "WithPrefix"},
		{"zero retry", c, limiter.PerSecond(1, 1), []limiter.RedisOption{limiter.WithRetryInterval(0)}, "WithRetryInterval"},
		{"share 0", c, limiter.PerSecond(1, 1), []limiter.RedisOption{limiter.WithOutagePolicy(limiter.FallbackLocal(0))}, "FallbackLocal"},
		{"share 2", c, limiter.PerSecond(1, 1), []limiter.RedisOption{limiter.WithOutagePolicy(limiter.FallbackLocal(2))}, "FallbackLocal"},
		{"nil option", c, limiter.PerSecond(1, 1), []limiter.RedisOption{nil}, "opts"},
		{"bucket lasting centuries", c, limiter.PerMinute(1, 1<<30), nil, "Limit.Burst"},
		{"zero max batch", c, limiter.PerSecond(1, 1), []limiter.RedisOption{limiter.WithMaxBatch(0)}, "WithMaxBatch"},
	} {
		_, err := limiter.NewRedis(tc.client, tc.limit, tc.opts...)
		if !errors.Is(err, limiter.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: err = %v, want ErrInvalidConfig naming %s", tc.name, err, tc.field)
		}
	}
}

// Under load, decisions share script calls.
func TestRedisCoalescesConcurrentDecisions(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: redistest.Addr(t)})
	t.Cleanup(func() { c.Close() })
	hook := &countingHook{}
	c.AddHook(hook)
	r := newRedis(t, c, limiter.PerSecond(1000, 1000))
	ctx := context.Background()
	const goroutines, each = 64, 20
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range each {
				d, err := r.Allow(ctx, "hot")
				if err != nil {
					t.Error(err)
					return
				}
				if d.Allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	calls := hook.n.Load()
	t.Logf("%d decisions in %d script calls", goroutines*each, calls)
	if calls >= goroutines*each {
		t.Fatalf("%d script calls for %d decisions: nothing was batched", calls, goroutines*each)
	}
	if allowed.Load() < 1000 {
		t.Fatalf("allowed %d, want at least the burst of 1000", allowed.Load())
	}
}
