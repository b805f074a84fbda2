package limiter

import (
	"context"
	"fmt"
	"sync"
)

// maxInflight is how many script calls one Redis limiter keeps on the wire
// at once before concurrent decisions start to share calls. Below it every
// decision is sent at once, so a lightly loaded limiter adds no waiting.
const maxInflight = 4

// call is one decision on its way through the batcher.
type call struct {
	key    string // full Redis key
	n      int
	behind int64 // the script's reply: µs the bucket was from full
	err    error

	// done receives true when the call must carry batch to Redis for the
	// others, false when behind/err are ready.
	done  chan bool
	batch []*call
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan bool, 1)} }}

// batcher coalesces concurrent decisions into shared script calls without a
// goroutine of its own. A caller finding fewer than maxInflight calls on the
// wire sends its decision, with whatever is pending, itself. Otherwise it
// waits in line; the caller whose call returns hands the next batch to the
// first in line, who carries it. So under load a call waits for the round
// trips ahead of it in line (one, until more than maxInflight batches of
// callers wait), and the number of script calls falls as load rises.
type batcher struct {
	r   *Redis
	max int

	mu       sync.Mutex
	inflight int
	pending  []*call
}

// do decides c, possibly in a batch with others. A caller whose context
// ends while waiting in line leaves it; one whose decision is already on the
// wire waits for that round trip (bounded by the client's timeouts), since
// Redis has taken its tokens.
func (b *batcher) do(ctx context.Context, c *call) {
	b.mu.Lock()
	if b.inflight < maxInflight {
		b.inflight++
		batch := b.takeLocked(c)
		b.mu.Unlock()
		b.lead(ctx, batch, c)
		return
	}
	b.pending = append(b.pending, c)
	b.mu.Unlock()

	var lead bool
	select {
	case lead = <-c.done:
	case <-ctx.Done():
		if b.leave(c) {
			c.err = ctx.Err()
			return
		}
		lead = <-c.done
	}
	if lead {
		b.lead(ctx, c.batch, c)
	}
}

// takeLocked returns first (when not nil) and the longest-waiting pending
// calls, at most max in all.
func (b *batcher) takeLocked(first *call) []*call {
	n := min(len(b.pending), b.max)
	if first != nil {
		n = min(len(b.pending), b.max-1)
	}
	if first == nil && n == 0 {
		return nil
	}
	batch := make([]*call, 0, n+1)
	if first != nil {
		batch = append(batch, first)
	}
	batch = append(batch, b.pending[:n]...)
	rest := copy(b.pending, b.pending[n:])
	clear(b.pending[rest:])
	b.pending = b.pending[:rest]
	return batch
}

// leave takes c out of the line if it is still waiting there.
func (b *batcher) leave(c *call) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, p := range b.pending {
		if p == c {
			last := len(b.pending) - 1
			copy(b.pending[i:], b.pending[i+1:])
			b.pending[last] = nil
			b.pending = b.pending[:last]
			return true
		}
	}
	return false
}

// lead sends batch, hands the next batch to the first in line, and gives
// every other member of batch its result. The script call does not inherit
// the leader's cancellation: the others are waiting on it too.
func (b *batcher) lead(ctx context.Context, batch []*call, self *call) {
	defer func() {
		// A panic in the Redis call (a client hook, say) must not leave
		// the line stuck: the batch gets an error, the line moves on, and
		// the panic goes on up in this goroutine.
		if p := recover(); p != nil {
			for _, c := range batch {
				c.err = fmt.Errorf("limiter: panic during the Redis call: %v", p)
			}
			b.handOff(batch, self)
			panic(p)
		}
	}()
	b.r.evalBatch(context.WithoutCancel(ctx), batch)
	b.handOff(batch, self)
}

// handOff gives the next batch to the first in line and the members of
// batch their results.
func (b *batcher) handOff(batch []*call, self *call) {
	b.mu.Lock()
	next := b.takeLocked(nil)
	if len(next) == 0 {
		b.inflight--
	}
	b.mu.Unlock()
	if len(next) > 0 {
		next[0].batch = next
		next[0].done <- true
	}
	self.batch = nil
	for _, c := range batch {
		if c != self {
			c.done <- false
		}
	}
}
