// Package batch coalesces concurrent requests to a remote service (a Redis
// script, in limiter.Redis and queue's Redis store) into shared calls,
// without a goroutine of its own. Start with [Batcher].
package batch

import (
	"context"
	"sync"
)

// Member is embedded in a request type to let a [Batcher] line the request
// up, signal it and hand it a batch to carry. Its zero value is ready.
type Member[R any] struct {
	// done receives true when the request must carry batch for the others,
	// false when its result is ready. Each Do receives once at most, so one
	// slot keeps senders from blocking.
	done chan bool
	// batch is the batch the request carries. Its array stays with the
	// request between calls, so a pooled request leads without allocating.
	batch []R
}

func (m *Member[R]) member() *Member[R] { return m }

// Request is what a [Batcher] takes: a pointer to a struct that embeds
// [Member], as in
//
//	type call struct {
//		batch.Member[*call]
//		key string
//		err error
//	}
type Request[R any] interface {
	comparable
	member() *Member[R]
}

// Batcher sends requests in batches. A caller finding fewer than
// MaxInflight batches on the wire sends its request, with whatever is
// waiting, itself. Otherwise it waits in line; the caller whose batch
// returns hands the next batch to the first in line, who carries it. So a
// lightly loaded Batcher adds no waiting, and under load the number of
// calls falls as load rises.
//
// Set the fields before the first Do; Send and Fail are required.
// A Batcher must not be copied after first use; it is safe for concurrent use.
type Batcher[R Request[R]] struct {
	// MaxInflight is how many batches may be on the wire before callers wait
	// in line; below 1 means 1.
	MaxInflight int
	// MaxBatch bounds the requests in one batch; below 1 means 1.
	MaxBatch int
	// Send sends batch and sets each member's result. Its context carries
	// the leader's values but not its cancellation, since the others wait
	// on the call too. It must not keep batch after it returns.
	Send func(ctx context.Context, batch []R)
	// Fail sets the result of every member of batch after Send panicked
	// with panicked (nil: Send called runtime.Goexit). It must not panic.
	Fail func(batch []R, panicked any)

	mu       sync.Mutex
	inflight int // batches on the wire
	pending  []R // the line, longest-waiting first
}

// Do sends r, possibly in a batch with others, and returns when r's result
// is set. A caller whose context ends while it waits in line leaves the
// line and gets ctx.Err(), r unsent. One whose request is already on the
// wire waits for the round trip (bounded by Send), since the service may
// have acted on it, and gets nil.
//
// If Send panics while r's caller carries the batch, Do panics with the
// same value after the batch has had Fail and the line has moved on.
// r must not be in another Do.
func (b *Batcher[R]) Do(ctx context.Context, r R) error {
	m := r.member()
	if m.done == nil {
		m.done = make(chan bool, 1)
	}
	b.mu.Lock()
	if b.inflight < max(b.MaxInflight, 1) {
		b.inflight++
		batch := b.takeLocked(append(m.batch[:0], r), max(b.MaxBatch, 1)-1)
		b.mu.Unlock()
		b.lead(ctx, batch, r)
		return nil
	}
	b.pending = append(b.pending, r)
	b.mu.Unlock()

	var lead bool
	select {
	case lead = <-m.done:
	case <-ctx.Done():
		if b.leave(r) {
			return ctx.Err()
		}
		lead = <-m.done
	}
	if lead {
		b.lead(ctx, m.batch, r)
	}
	return nil
}

// takeLocked moves up to n of the longest-waiting requests from the line
// onto batch.
func (b *Batcher[R]) takeLocked(batch []R, n int) []R {
	n = min(n, len(b.pending))
	batch = append(batch, b.pending[:n]...)
	rest := copy(b.pending, b.pending[n:])
	clear(b.pending[rest:])
	b.pending = b.pending[:rest]
	return batch
}

// leave takes r out of the line if it is still waiting there.
func (b *Batcher[R]) leave(r R) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, p := range b.pending {
		if p == r {
			last := len(b.pending) - 1
			copy(b.pending[i:], b.pending[i+1:])
			var none R
			b.pending[last] = none
			b.pending = b.pending[:last]
			return true
		}
	}
	return false
}

// lead sends batch, which self carries, then hands off.
func (b *Batcher[R]) lead(ctx context.Context, batch []R, self R) {
	sent := false
	defer func() {
		if sent {
			return
		}
		// Send panicked (a client hook, say) or exited the goroutine: the
		// line must not stick, so the batch gets its error, the line moves
		// on, and the panic goes on up in this goroutine.
		p := recover()
		b.Fail(batch, p)
		b.handOff(batch, self)
		if p != nil {
			panic(p)
		}
	}()
	b.Send(context.WithoutCancel(ctx), batch)
	sent = true
	b.handOff(batch, self)
}

// handOff gives the next batch to the first in line, or frees self's place
// on the wire if the line is empty, and tells the others in batch that
// their results are ready.
func (b *Batcher[R]) handOff(batch []R, self R) {
	var next []R
	b.mu.Lock()
	if len(b.pending) > 0 {
		// The next batch is built in its leader's array: the leader is
		// waiting, so nothing else uses it.
		next = b.takeLocked(b.pending[0].member().batch[:0], max(b.MaxBatch, 1))
	} else {
		b.inflight--
	}
	b.mu.Unlock()
	if next != nil {
		m := next[0].member()
		m.batch = next
		m.done <- true
	}
	for _, r := range batch {
		if r != self {
			r.member().done <- false
		}
	}
	// batch is in self's array (see Do and above): keep it for self's next
	// lead, without holding on to the others.
	clear(batch)
	self.member().batch = batch[:0]
}
