package limiter

import (
	"context"
	"errors"
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

// A caller whose context ends while it waits in line leaves the line and
// is never sent.
func TestBatchCallerLeavesLine(t *testing.T) {
	r := newTestRedis(t, PerSecond(1, 1))
	b := &batcher{r: r, max: 64, inflight: maxInflight} // the wire is full
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c := &call{key: r.prefix + "{k}", n: 1, done: make(chan bool, 1)}
	b.do(ctx, c)
	if !errors.Is(c.err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", c.err)
	}
	if len(b.pending) != 0 {
		t.Fatalf("%d calls left in line", len(b.pending))
	}
	// Nothing was sent: the bucket is still full.
	if d, err := r.AllowN(context.Background(), "k", 1); err != nil || !d.Allowed {
		t.Fatalf("bucket was touched: %+v, %v", d, err)
	}
}

// The first in line carries the next batch when a call returns.
func TestBatchHandsOverToFirstInLine(t *testing.T) {
	r := newTestRedis(t, PerSecond(100, 100))
	b := &batcher{r: r, max: 64, inflight: maxInflight}
	waiters := make([]*call, 3)
	done := make(chan struct{})
	for i := range waiters {
		waiters[i] = &call{key: r.prefix + "{k}", n: 1, done: make(chan bool, 1)}
	}
	// Queue them by hand in order, as do would.
	b.pending = append(b.pending, waiters...)
	go func() {
		defer close(done)
		first := waiters[0]
		if lead := <-first.done; !lead {
			t.Error("first in line was not asked to lead")
			return
		}
		if len(first.batch) != 3 {
			t.Errorf("batch of %d, want 3", len(first.batch))
		}
		b.lead(context.Background(), first.batch, first)
	}()
	// A call on the wire returns: the line is handed over.
	running := &call{key: r.prefix + "{k}", n: 1, done: make(chan bool, 1)}
	b.lead(context.Background(), []*call{running}, running)
	<-done
	for i, w := range waiters[1:] {
		if lead := <-w.done; lead || w.err != nil || !r.redisDecision(w.behind, w.n).Allowed {
			t.Errorf("waiter %d: lead=%v err=%v behind=%dµs", i+1, lead, w.err, w.behind)
		}
	}
	if b.inflight != maxInflight-1 || len(b.pending) != 0 {
		t.Errorf("inflight=%d pending=%d after the line emptied", b.inflight, len(b.pending))
	}
}
