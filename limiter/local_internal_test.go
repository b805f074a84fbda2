package limiter

import (
	"context"
	"hash/maphash"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/internal/sharded"
)

func TestLocalShardCapacities(t *testing.T) {
	for _, maxKeys := range []int{1, 2, 7, 8, 15, 16, 17, 100, 1000, 1023, DefaultMaxKeys, 1 << 20} {
		l, err := NewLocal(PerSecond(1, 1), WithMaxKeys(maxKeys))
		if err != nil {
			t.Fatal(err)
		}
		n := len(l.shards)
		if n&(n-1) != 0 || l.mask != uint64(n-1) {
			t.Errorf("maxKeys %d: %d shards, mask %#x; want a power of two and its mask", maxKeys, n, l.mask)
		}
		if maxKeys < 2*sharded.MinKeys && n != 1 {
			t.Errorf("maxKeys %d: %d shards, want 1 so an insert samples every key", maxKeys, n)
		}
		sum := 0
		for i := range l.shards {
			c := l.shards[i].cap
			if c < 1 {
				t.Errorf("maxKeys %d: shard %d has capacity %d", maxKeys, i, c)
			}
			sum += c
		}
		if sum != maxKeys {
			t.Errorf("maxKeys %d: shard capacities add up to %d", maxKeys, sum)
		}
	}
}

func TestLocalDefaultIdleTimeout(t *testing.T) {
	for _, tc := range []struct {
		limit Limit
		want  time.Duration
	}{
		{PerSecond(10, 5), 500 * time.Millisecond},
		{PerSecond(3, 1), 333_333_333 * time.Nanosecond}, // the interval, in whole nanoseconds
		{PerMinute(1, 60), time.Hour},
		{Limit{Rate: 1, Period: 24 * time.Hour, Burst: 20_000}, 20_000 * 24 * time.Hour},
	} {
		l, err := NewLocal(tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		if got := time.Duration(l.idle); got != tc.want {
			t.Errorf("%v: idle timeout %v, want %v", tc.limit, got, tc.want)
		}
	}
}

// TestLocalNewEntryIsFull checks that a new key's bucket is full at its
// first use whatever the limit and the instant, even where the time since
// the zero instant would not refill it.
func TestLocalNewEntryIsFull(t *testing.T) {
	for _, limit := range []Limit{
		PerSecond(1_000_000, 1),
		PerSecond(1, 1<<31),
		{Rate: 1, Period: 1 << 60, Burst: 1},
	} {
		l, err := NewLocal(limit)
		if err != nil {
			t.Fatal(err)
		}
		for _, at := range []time.Time{
			time.Date(1970, 1, 1, 0, 0, 0, 1, time.UTC),
			time.Now(),
			time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC),
		} {
			d, err := l.AllowNAt(at, at.String(), 0)
			if err != nil {
				t.Fatal(err)
			}
			s := l.shard(at.String())
			l.insert(s, at.String(), int64(at.Sub(l.epoch)))
			got, err := l.AllowNAt(at, at.String(), 0)
			if err != nil || got.Remaining != limit.Burst || d.Remaining != limit.Burst {
				t.Errorf("%v at %v: new entry holds %d tokens (peek before insert said %d), want %d", limit, at, got.Remaining, d.Remaining, limit.Burst)
			}
		}
	}
}

func TestLocalSweepAtFixedInstants(t *testing.T) {
	l, err := NewLocal(PerSecond(10, 5)) // idle after 500ms
	if err != nil {
		t.Fatal(err)
	}
	t0 := l.epoch
	for i, k := range []string{"a", "b", "c"} {
		if _, err := l.AllowNAt(t0.Add(time.Duration(i)*100*time.Millisecond), k, 1); err != nil {
			t.Fatal(err)
		}
	}
	l.sweepAt(int64(600 * time.Millisecond))
	if got := l.Len(); got != 2 {
		t.Errorf("Len after sweeping at 600ms = %d, want 2 (b and c)", got)
	}
	l.sweepAt(int64(700*time.Millisecond) + 1)
	if got := l.Len(); got != 0 {
		t.Errorf("Len after sweeping past 700ms = %d, want 0", got)
	}
}

// A key's entry found through the hot cache is never used once the key is
// forgotten: the next call finds the new bucket, and the slot moves to it.
func TestLocalHotCacheDropsForgottenEntries(t *testing.T) {
	ctx := context.Background()
	l, err := NewLocal(PerSecond(1, 2), WithMaxKeys(1))
	if err != nil {
		t.Fatal(err)
	}
	slotOf := func(key string) *atomic.Pointer[localEntry] {
		return &l.hot[maphash.String(l.seed, key)>>(64-hotBits)]
	}
	l.AllowN(ctx, "a", 2) // a's bucket is empty and cached
	old := slotOf("a").Load()
	if old == nil || old.key != "a" {
		t.Fatalf("a is not in its hot slot: %v", old)
	}
	if err := l.Reset(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if !old.dead.Load() {
		t.Fatal("Reset left the cached entry live")
	}
	if d, _ := l.Allow(ctx, "a"); !d.Allowed || d.Remaining != 1 {
		t.Fatalf("after Reset: %+v, want a full bucket", d)
	}
	if cur := slotOf("a").Load(); cur == old {
		t.Fatal("the slot still holds the forgotten entry")
	}
	// With room for one key, b evicts a; a comes back with a full bucket.
	l.AllowN(ctx, "a", 2)
	l.Allow(ctx, "b")
	if d, _ := l.Allow(ctx, "a"); !d.Allowed || d.Remaining != 1 {
		t.Fatalf("after eviction: %+v, want a full bucket", d)
	}
}
