package limiter_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/bulwarkgo/bulwark/internal/israce"
	"github.com/bulwarkgo/bulwark/limiter"
)

// localT0 is the fixed instant the AllowNAt tests start from.
var localT0 = time.Date(2026, 11, 11, 12, 0, 0, 0, time.UTC)

func mustLocal(t testing.TB, limit limiter.Limit, opts ...limiter.LocalOption) *limiter.Local {
	t.Helper()
	l, err := limiter.NewLocal(limit, opts...)
	if err != nil {
		t.Fatalf("NewLocal(%v): %v", limit, err)
	}
	return l
}

func localAt(t *testing.T, l *limiter.Local, at time.Duration, key string, n int) limiter.Decision {
	t.Helper()
	d, err := l.AllowNAt(localT0.Add(at), key, n)
	if err != nil {
		t.Fatalf("AllowNAt(t0+%v, %q, %d): %v", at, key, n, err)
	}
	return d
}

func checkDecision(t *testing.T, what string, got, want limiter.Decision) {
	t.Helper()
	if got != want {
		t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

func TestLocalBurstThenRefusal(t *testing.T) {
	lim := limiter.PerSecond(10, 3) // a token every 100ms
	l := mustLocal(t, lim)
	ms := time.Millisecond

	for i, want := range []limiter.Decision{
		{Allowed: true, Limit: lim, Remaining: 2, ResetAfter: 100 * ms},
		{Allowed: true, Limit: lim, Remaining: 1, ResetAfter: 200 * ms},
		{Allowed: true, Limit: lim, Remaining: 0, ResetAfter: 300 * ms},
		{Allowed: false, Limit: lim, Remaining: 0, RetryAfter: 100 * ms, ResetAfter: 300 * ms},
	} {
		checkDecision(t, "call "+strconv.Itoa(i+1), localAt(t, l, 0, "k", 1), want)
	}
	// 40ms later 0.4 of a token has come back.
	checkDecision(t, "at 40ms", localAt(t, l, 40*ms, "k", 1),
		limiter.Decision{Allowed: false, Limit: lim, RetryAfter: 60 * ms, ResetAfter: 260 * ms})
	// A request for 2 waits for 2 tokens.
	checkDecision(t, "n=2 at 40ms", localAt(t, l, 40*ms, "k", 2),
		limiter.Decision{Allowed: false, Limit: lim, RetryAfter: 160 * ms, ResetAfter: 260 * ms})
	// Another key has its own bucket.
	checkDecision(t, "other key", localAt(t, l, 40*ms, "other", 1),
		limiter.Decision{Allowed: true, Limit: lim, Remaining: 2, ResetAfter: 100 * ms})
	if got := l.Len(); got != 2 {
		t.Errorf("Len = %d, want 2", got)
	}
}

func TestLocalRefill(t *testing.T) {
	lim := limiter.PerSecond(10, 3)
	l := mustLocal(t, lim)
	ms := time.Millisecond
	localAt(t, l, 0, "k", 3)

	checkDecision(t, "at 100ms", localAt(t, l, 100*ms, "k", 1),
		limiter.Decision{Allowed: true, Limit: lim, Remaining: 0, ResetAfter: 300 * ms})
	// 1.5 tokens back: one taken, half a token left.
	checkDecision(t, "at 250ms", localAt(t, l, 250*ms, "k", 1),
		limiter.Decision{Allowed: true, Limit: lim, Remaining: 0, ResetAfter: 250 * ms})
	checkDecision(t, "at 300ms", localAt(t, l, 300*ms, "k", 1),
		limiter.Decision{Allowed: true, Limit: lim, Remaining: 0, ResetAfter: 300 * ms})
	// Long after, the bucket is full and never more than full.
	checkDecision(t, "an hour later", localAt(t, l, time.Hour, "k", 0),
		limiter.Decision{Allowed: true, Limit: lim, Remaining: 3})
	checkDecision(t, "burst after an hour", localAt(t, l, time.Hour, "k", 3),
		limiter.Decision{Allowed: true, Limit: lim, Remaining: 0, ResetAfter: 300 * ms})
}

func TestLocalPeek(t *testing.T) {
	lim := limiter.PerMinute(6, 4) // a token every 10s
	l := mustLocal(t, lim)
	full := limiter.Decision{Allowed: true, Limit: lim, Remaining: 4}

	checkDecision(t, "peek unknown key", localAt(t, l, 0, "k", 0), full)
	if got := l.Len(); got != 0 {
		t.Errorf("Len after peeking an unknown key = %d, want 0", got)
	}
	localAt(t, l, 0, "k", 3)
	for i := range 3 {
		checkDecision(t, "peek "+strconv.Itoa(i), localAt(t, l, 0, "k", 0),
			limiter.Decision{Allowed: true, Limit: lim, Remaining: 1, ResetAfter: 30 * time.Second})
	}
	localAt(t, l, 0, "k", 1)
	checkDecision(t, "peek empty bucket", localAt(t, l, 0, "k", 0),
		limiter.Decision{Allowed: true, Limit: lim, Remaining: 0, ResetAfter: 40 * time.Second})
}

func TestLocalInvalidN(t *testing.T) {
	lim := limiter.PerSecond(1, 5)
	l := mustLocal(t, lim)
	ctx := context.Background()

	for _, tc := range []struct {
		n    int
		want error
	}{
		{6, limiter.ErrBurstExceeded},
		{1 << 40, limiter.ErrBurstExceeded},
		{-1, limiter.ErrInvalidN},
	} {
		if _, err := l.AllowN(ctx, "k", tc.n); !errors.Is(err, tc.want) {
			t.Errorf("AllowN(n=%d) error = %v, want %v", tc.n, err, tc.want)
		}
		if _, err := l.AllowNAt(localT0, "k", tc.n); !errors.Is(err, tc.want) {
			t.Errorf("AllowNAt(n=%d) error = %v, want %v", tc.n, err, tc.want)
		}
	}
	if got := l.Len(); got != 0 {
		t.Errorf("Len after invalid requests = %d, want 0", got)
	}
	checkDecision(t, "n = burst", localAt(t, l, 0, "k", 5),
		limiter.Decision{Allowed: true, Limit: lim, Remaining: 0, ResetAfter: 5 * time.Second})
}

func TestLocalCancelledContext(t *testing.T) {
	l := mustLocal(t, limiter.PerMinute(1, 2))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	if _, err := l.Allow(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Allow error = %v, want context.Canceled", err)
	}
	if _, err := l.AllowN(ctx, "k", 2); !errors.Is(err, context.Canceled) {
		t.Errorf("AllowN error = %v, want context.Canceled", err)
	}
	if got := l.Len(); got != 0 {
		t.Errorf("Len = %d, want 0: a cancelled call must not create the key", got)
	}

	d, err := l.AllowN(context.Background(), "k", 2)
	if err != nil || !d.Allowed {
		t.Fatalf("AllowN after cancelled calls = %+v, %v; want the full burst still there", d, err)
	}
	if err := l.Reset(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Reset error = %v, want context.Canceled", err)
	}
	if got := l.Len(); got != 1 {
		t.Errorf("Len = %d, want 1: a cancelled Reset must not forget the key", got)
	}
}

func TestLocalReset(t *testing.T) {
	lim := limiter.PerMinute(1, 2)
	l := mustLocal(t, lim)
	ctx := context.Background()

	localAt(t, l, 0, "k", 2)
	localAt(t, l, 0, "other", 1)
	if d := localAt(t, l, 0, "k", 1); d.Allowed {
		t.Fatalf("drained bucket allowed: %+v", d)
	}
	if err := l.Reset(ctx, "k"); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if got := l.Len(); got != 1 {
		t.Errorf("Len after Reset = %d, want 1", got)
	}
	checkDecision(t, "after Reset", localAt(t, l, 0, "k", 1),
		limiter.Decision{Allowed: true, Limit: lim, Remaining: 1, ResetAfter: time.Minute})
	checkDecision(t, "other key untouched", localAt(t, l, 0, "other", 0),
		limiter.Decision{Allowed: true, Limit: lim, Remaining: 1, ResetAfter: time.Minute})
	if err := l.Reset(ctx, "never seen"); err != nil {
		t.Errorf("Reset of an unknown key: %v", err)
	}
}

func TestNewLocalInvalidConfig(t *testing.T) {
	good := limiter.PerSecond(10, 10)
	for _, tc := range []struct {
		name  string
		limit limiter.Limit
		opts  []limiter.LocalOption
		field string
	}{
		{"zero rate", limiter.Limit{Rate: 0, Period: time.Second, Burst: 1}, nil, "Limit.Rate"},
		{"negative rate", limiter.Limit{Rate: -1, Period: time.Second, Burst: 1}, nil, "Limit.Rate"},
		{"too fast", limiter.Limit{Rate: 2_000_000, Period: time.Second, Burst: 1}, nil, "Limit.Rate"},
		{"zero period", limiter.Limit{Rate: 1, Burst: 1}, nil, "Limit.Period"},
		{"zero burst", limiter.Limit{Rate: 1, Period: time.Second}, nil, "Limit.Burst"},
		{"bucket lasting centuries", limiter.Limit{Rate: 1, Period: 24 * time.Hour, Burst: 1 << 20}, nil, "Limit.Burst"},
		{"zero max keys", good, []limiter.LocalOption{limiter.WithMaxKeys(0)}, "WithMaxKeys"},
		{"negative max keys", good, []limiter.LocalOption{limiter.WithMaxKeys(-5)}, "WithMaxKeys"},
		{"zero idle timeout", good, []limiter.LocalOption{limiter.WithIdleTimeout(0)}, "WithIdleTimeout"},
		{"negative idle timeout", good, []limiter.LocalOption{limiter.WithIdleTimeout(-time.Second)}, "WithIdleTimeout"},
		{"nil option", good, []limiter.LocalOption{limiter.WithMaxKeys(5), nil}, "opts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := limiter.NewLocal(tc.limit, tc.opts...)
			if !errors.Is(err, limiter.ErrInvalidConfig) {
				t.Fatalf("NewLocal = %v, %v; want an error matching ErrInvalidConfig", l, err)
			}
			if l != nil {
				t.Errorf("NewLocal returned a limiter with error %v", err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %q does not name %s", err, tc.field)
			}
		})
	}
}

// TestLocalMillionKeys feeds a million distinct keys through a Local and
// checks that neither the number of keys nor the heap grows with them.
func TestLocalMillionKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("a million keys in -short mode")
	}
	const (
		maxKeys = 10_000
		keys    = 1_000_000
		full    = 10 * maxKeys // by then every shard is full
	)
	// An idle timeout of an hour leaves all eviction to the key bound.
	l := mustLocal(t, limiter.PerSecond(1, 5), limiter.WithMaxKeys(maxKeys), limiter.WithIdleTimeout(time.Hour))

	heap := func() int64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	start := heap()
	var atBound int64
	buf := make([]byte, 0, 32)
	for i := range keys {
		if i == full {
			atBound = heap()
		}
		buf = strconv.AppendInt(append(buf[:0], "user:"...), int64(i), 10)
		if _, err := l.AllowNAt(localT0.Add(time.Duration(i)*time.Microsecond), string(buf), 1); err != nil {
			t.Fatal(err)
		}
		if i%50_000 == 0 {
			if n := l.Len(); n > maxKeys {
				t.Fatalf("after %d keys Len = %d, above the bound %d", i+1, n, maxKeys)
			}
		}
	}
	if n := l.Len(); n > maxKeys || n < maxKeys/2 {
		t.Fatalf("Len = %d, want at most %d (and not far below)", n, maxKeys)
	}
	end := heap()
	mb := func(b int64) float64 { return float64(b) / (1 << 20) }
	t.Logf("heap above the empty limiter: %.2f MB after %d keys, %.2f MB after %d keys; %d keys held, about %d bytes each",
		mb(atBound-start), full, mb(end-start), keys, l.Len(), (end-start)/int64(l.Len()))
	// Ten thousand small entries take a few MB; a million would take well
	// over a hundred.
	const bound = 32 << 20
	if end-start > bound {
		t.Errorf("heap grew by %d MB holding at most %d keys, want under %d MB", (end-start)>>20, maxKeys, bound>>20)
	}
	// And nothing grows with the keys seen once the bound is reached: the
	// last 900 000 keys leave the heap where the first 100 000 did.
	if end-atBound > 4<<20 {
		t.Errorf("heap grew by %.1f MB from %d to %d keys seen, at the bound of %d held", mb(end-atBound), full, keys, maxKeys)
	}
	runtime.KeepAlive(l)
}

func TestLocalDefaultMaxKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("over a hundred thousand keys in -short mode")
	}
	l := mustLocal(t, limiter.PerMinute(1, 1))
	for i := range limiter.DefaultMaxKeys + 20_000 {
		if _, err := l.AllowNAt(localT0, "k"+strconv.Itoa(i), 1); err != nil {
			t.Fatal(err)
		}
	}
	if n := l.Len(); n > limiter.DefaultMaxKeys {
		t.Fatalf("Len = %d, above DefaultMaxKeys %d", n, limiter.DefaultMaxKeys)
	}
}

// With at most 8 keys a Local has one shard and an insert samples all of
// it, so the tests below know exactly what eviction sees.

func TestLocalEvictsIdleKeysOnInsert(t *testing.T) {
	// Default idle timeout: Burst×Interval = 5 × 100ms.
	lim := limiter.PerSecond(10, 5)
	l := mustLocal(t, lim, limiter.WithMaxKeys(8))
	for _, k := range []string{"a", "b", "c"} {
		localAt(t, l, 0, k, 1)
	}
	localAt(t, l, 200*time.Millisecond, "c", 1)

	// Exactly the idle timeout after a and b is not past it.
	localAt(t, l, 500*time.Millisecond, "d", 1)
	if got := l.Len(); got != 4 {
		t.Fatalf("Len = %d, want 4: nothing is idle past the timeout yet", got)
	}
	localAt(t, l, 500*time.Millisecond+1, "e", 1)
	if got := l.Len(); got != 3 {
		t.Fatalf("Len = %d, want 3 (c, d, e): a and b were idle past the timeout", got)
	}
	// a was forgotten with a full bucket, so forgetting changed nothing.
	checkDecision(t, "a after eviction", localAt(t, l, time.Second, "a", 0),
		limiter.Decision{Allowed: true, Limit: lim, Remaining: 5})
}

func TestLocalEvictsLeastRecentlyUsed(t *testing.T) {
	lim := limiter.PerMinute(1, 2)
	l := mustLocal(t, lim, limiter.WithMaxKeys(3), limiter.WithIdleTimeout(time.Hour))
	s := time.Second
	localAt(t, l, 0, "a", 1)
	localAt(t, l, 1*s, "b", 1)
	localAt(t, l, 2*s, "c", 1)
	localAt(t, l, 3*s, "a", 1) // b is now the least recently used
	localAt(t, l, 4*s, "d", 1) // the shard is full: one key must go

	if got := l.Len(); got != 3 {
		t.Fatalf("Len = %d, want 3", got)
	}
	// A peek does not store a key, so it shows which were kept: a
	// forgotten key has a full bucket again.
	for key, want := range map[string]int{"a": 0, "b": 2, "c": 1, "d": 1} {
		if d := localAt(t, l, 4*s, key, 0); d.Remaining != want {
			t.Errorf("%s: Remaining = %d, want %d", key, d.Remaining, want)
		}
	}
}

func TestLocalSweep(t *testing.T) {
	l := mustLocal(t, limiter.PerSecond(10, 5))
	now := time.Now()
	for i := range 100 {
		// Used an hour ago: long idle. Used an hour from now: not idle.
		if _, err := l.AllowNAt(now.Add(-time.Hour), "old"+strconv.Itoa(i), 1); err != nil {
			t.Fatal(err)
		}
		if _, err := l.AllowNAt(now.Add(time.Hour), "new"+strconv.Itoa(i), 1); err != nil {
			t.Fatal(err)
		}
	}
	l.Sweep()
	if got := l.Len(); got != 100 {
		t.Fatalf("Len after Sweep = %d, want 100", got)
	}
	if d, err := l.AllowNAt(now.Add(time.Hour), "new7", 0); err != nil || d.Remaining != 4 {
		t.Errorf("a recent key lost its state: %+v, %v", d, err)
	}
}

func TestLocalJanitor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := mustLocal(t, limiter.PerSecond(10, 5)) // idle after 500ms
		ctx := context.Background()
		for i := range 50 {
			if _, err := l.Allow(ctx, "k"+strconv.Itoa(i)); err != nil {
				t.Fatal(err)
			}
		}
		stop := l.StartJanitor(time.Second)

		time.Sleep(500 * time.Millisecond)
		synctest.Wait()
		if got := l.Len(); got != 50 {
			t.Fatalf("Len before the first sweep = %d, want 50", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := l.Len(); got != 0 {
			t.Fatalf("Len after a sweep = %d, want 0", got)
		}
		stop()
		stop() // a second stop is harmless
	})
}

func TestLocalJanitorStopsAtOnce(t *testing.T) {
	l := mustLocal(t, limiter.PerSecond(10, 5))
	// A long interval: stop must not wait for a tick. TestMain checks
	// that no goroutine is left.
	stop := l.StartJanitor(time.Hour)
	stop()
}

func TestLocalJanitorNonPositiveInterval(t *testing.T) {
	l := mustLocal(t, limiter.PerSecond(10, 5))
	defer func() {
		if recover() == nil {
			t.Error("StartJanitor(0) did not panic")
		}
	}()
	l.StartJanitor(0)
}

// TestLocalConcurrentFixedInstant runs many goroutines at one instant,
// where exactly Burst requests per key can be allowed.
func TestLocalConcurrentFixedInstant(t *testing.T) {
	const (
		burst      = 25
		keys       = 4
		goroutines = 32
		attempts   = 20
	)
	l := mustLocal(t, limiter.PerMinute(1, burst))
	var admitted [keys]atomic.Int64
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range attempts {
				// Half the goroutines share key 0; the rest spread out.
				k := 0
				if g%2 == 1 {
					k = (g + i) % keys
				}
				d, err := l.AllowNAt(localT0, "key"+strconv.Itoa(k), 1)
				if err != nil {
					t.Error(err)
					return
				}
				if d.Allowed {
					admitted[k].Add(1)
				}
			}
		})
	}
	wg.Wait()
	for k := range keys {
		if got := admitted[k].Load(); got != burst {
			t.Errorf("key%d: %d admitted, want exactly the burst %d", k, got, burst)
		}
	}
}

// TestLocalConcurrentRealClock checks, with the real clock and so with
// whatever timing the scheduler gives, that no key admits more than its
// burst plus what the elapsed time refills. Slowness only loosens the
// bound, so the test cannot flake.
func TestLocalConcurrentRealClock(t *testing.T) {
	const (
		rate       = 100 // per second
		burst      = 20
		keys       = 3
		goroutines = 16
		attempts   = 200
	)
	start := time.Now()
	// No key goes idle long enough to be forgotten mid-test.
	l := mustLocal(t, limiter.PerSecond(rate, burst), limiter.WithIdleTimeout(time.Hour))
	ctx := context.Background()
	var admitted, asked [keys]atomic.Int64
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range attempts {
				k := (g * i) % keys
				asked[k].Add(1)
				d, err := l.Allow(ctx, "key"+strconv.Itoa(k))
				if err != nil {
					t.Error(err)
					return
				}
				if d.Allowed {
					admitted[k].Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	limit := burst + int64(elapsed.Seconds()*rate) + 1
	for k := range keys {
		got := admitted[k].Load()
		if got > limit {
			t.Errorf("key%d: %d admitted in %v, above burst + refill = %d", k, got, elapsed, limit)
		}
		// Until the burst is spent nothing is refused.
		if want := min(asked[k].Load(), burst); got < want {
			t.Errorf("key%d: %d admitted, want at least %d", k, got, want)
		}
	}
}

// TestLocalRetryAfterIsEnough checks, for awkward rates where float
// arithmetic is inexact, that a refused request is allowed once
// RetryAfter has passed, and that the bucket is full after ResetAfter.
func TestLocalRetryAfterIsEnough(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, lim := range []limiter.Limit{
		limiter.PerSecond(3, 7),
		limiter.PerSecond(999_999, 13),
		limiter.PerMinute(7, 3),
		{Rate: 11, Period: 13 * time.Second, Burst: 5},
		{Rate: 1, Period: 24 * time.Hour, Burst: 1000},
	} {
		l := mustLocal(t, lim)
		at := localT0
		for i := range 500 {
			n := 1 + rng.IntN(lim.Burst)
			at = at.Add(time.Duration(rng.Int64N(int64(lim.Interval()))))
			d, err := l.AllowNAt(at, "k", n)
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed {
				continue
			}
			if d.RetryAfter <= 0 {
				t.Fatalf("%v step %d: refused with RetryAfter %v", lim, i, d.RetryAfter)
			}
			if d.ResetAfter < d.RetryAfter {
				t.Fatalf("%v step %d: ResetAfter %v before RetryAfter %v", lim, i, d.ResetAfter, d.RetryAfter)
			}
			full, err := l.AllowNAt(at.Add(d.ResetAfter), "k", 0)
			if err != nil || full.Remaining != lim.Burst {
				t.Fatalf("%v step %d: after ResetAfter %v: %+v, %v; want a full bucket", lim, i, d.ResetAfter, full, err)
			}
			at = at.Add(d.RetryAfter)
			if again, err := l.AllowNAt(at, "k", n); err != nil || !again.Allowed {
				t.Fatalf("%v step %d: refused again after RetryAfter %v: %+v, %v", lim, i, d.RetryAfter, again, err)
			}
		}
	}
}

// TestLocalRemainingAtAwkwardRate: at 3/s a token takes 333,333,333 ns (the
// interval in whole nanoseconds); a third of a second, truncated to the
// nanosecond, after the bucket was drained, it holds exactly one token.
func TestLocalRemainingAtAwkwardRate(t *testing.T) {
	lim := limiter.PerSecond(3, 3)
	l := mustLocal(t, lim)
	localAt(t, l, 0, "k", 3)
	for i := 1; i <= 3; i++ {
		d := localAt(t, l, time.Duration(i)*time.Second/3, "k", 0)
		if d.Remaining != i {
			t.Errorf("after %d/3 s: Remaining = %d, want %d", i, d.Remaining, i)
		}
	}
}

func TestLocalClockGoingBackwards(t *testing.T) {
	lim := limiter.PerSecond(10, 2)
	l := mustLocal(t, lim)
	localAt(t, l, time.Second, "k", 2)
	// An earlier instant gives no tokens back.
	if d := localAt(t, l, 0, "k", 1); d.Allowed {
		t.Errorf("allowed at an earlier instant with an empty bucket: %+v", d)
	}
}

func TestLocalMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })

	l := mustLocal(t, limiter.PerMinute(1, 2), limiter.WithMeterProvider(mp), limiter.WithName("api"))
	ctx := context.Background()
	for range 5 {
		if _, err := l.Allow(ctx, "k"); err != nil {
			t.Fatal(err)
		}
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, _ = l.Allow(cancelled, "k")
	_, _ = l.AllowN(ctx, "k", 3) // above the burst

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "bulwark.limiter.decisions" {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				t.Fatalf("bulwark.limiter.decisions is %T, want a Sum[int64]", m.Data)
			}
			for _, dp := range sum.DataPoints {
				name, _ := dp.Attributes.Value(attribute.Key("bulwark.limiter.name"))
				kind, _ := dp.Attributes.Value(attribute.Key("bulwark.limiter.kind"))
				if name.AsString() != "api" || kind.AsString() != "local" {
					t.Errorf("data point attributes %v, want name api and kind local", dp.Attributes.ToSlice())
				}
				result, _ := dp.Attributes.Value(attribute.Key("bulwark.limiter.result"))
				got[result.AsString()] += dp.Value
			}
		}
	}
	want := map[string]int64{"allowed": 2, "limited": 3, "error": 2}
	for r, n := range want {
		if got[r] != n {
			t.Errorf("decisions{result=%s} = %d, want %d (all: %v)", r, got[r], n, got)
		}
	}
}

func TestLocalAllowDoesNotAllocate(t *testing.T) {
	if israce.Enabled {
		t.Skip("the race detector allocates")
	}
	l := mustLocal(t, limiter.PerSecond(1000, 10))
	ctx := context.Background()
	if _, err := l.Allow(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(1000, func() { _, _ = l.Allow(ctx, "k") }); n != 0 {
		t.Errorf("Allow on a known key: %v allocations, want 0", n)
	}
}
