package limiter

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

func newTestRedis(t *testing.T, l Limit) *Redis {
	t.Helper()
	r, err := NewRedis(redistest.Client(t), l, WithPrefix(redistest.Prefix(t)))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// One script call may carry the same key several times; its requests are
// decided in order against the one bucket.
func TestBatchDecidesRepeatedKeysInOrder(t *testing.T) {
	r := newTestRedis(t, PerSecond(1, 2))
	key := r.prefix + "{k}"
	other := r.prefix + "{other}"
	batch := []*call{{key: key, n: 1}, {key: other, n: 2}, {key: key, n: 1}, {key: key, n: 1}, {key: key, n: 0}}
	r.evalBatch(context.Background(), batch)
	type result struct {
		allowed   bool
		remaining int
	}
	want := []result{{true, 1}, {true, 0}, {true, 0}, {false, 0}, {true, 0}}
	var got []Decision
	for i, c := range batch {
		if c.err != nil {
			t.Fatal(c.err)
		}
		d := r.redisDecision(c.behind, c.n)
		got = append(got, d)
		if (result{d.Allowed, d.Remaining}) != want[i] {
			t.Errorf("call %d: %+v, want %+v", i, d, want[i])
		}
	}
	// The refused call waits for one token: about a second.
	if ra := got[3].RetryAfter; ra <= 900*time.Millisecond || ra > time.Second {
		t.Errorf("RetryAfter %v, want about 1s", ra)
	}
}

// A caller whose context ends while it waits in line leaves the line, is
// never sent, and gets its context's error.
func TestBatchCallerLeavesLine(t *testing.T) {
	r := newTestRedis(t, PerSecond(1, 1))
	// Fill the wire with calls that hold on until released.
	send := r.batch.Send
	onWire, release := make(chan struct{}), make(chan struct{})
	r.batch.Send = func(ctx context.Context, batch []*call) {
		onWire <- struct{}{}
		<-release
		send(ctx, batch)
	}
	var wg sync.WaitGroup
	for i := range maxInflight {
		wg.Go(func() {
			if _, err := r.Allow(context.Background(), "wire"+strconv.Itoa(i)); err != nil {
				t.Error(err)
			}
		})
		<-onWire
	}
	defer wg.Wait()
	defer close(release)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := r.Allow(ctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	// Nothing was sent: the bucket is still full.
	d, err := r.evalDecision("k")
	if err != nil || !d.Allowed {
		t.Fatalf("bucket was touched: %+v, %v", d, err)
	}
}

// evalDecision takes a token from key's bucket in a script call of its
// own, past the batcher.
func (r *Redis) evalDecision(key string) (Decision, error) {
	c := &call{key: r.prefix + "{" + key + "}", n: 1}
	r.evalBatch(context.Background(), []*call{c})
	return r.redisDecision(c.behind, c.n), c.err
}
