package breaker

import (
	"sync"
	"sync/atomic"
)

// eventQueue hands state changes to listeners outside any lock. gobreaker
// reports a change while holding its mutex, where a listener that asked the
// breaker anything would deadlock; the change is only queued there, and
// delivered by the next call that finds the queue non-empty once it has
// left gobreaker. One goroutine delivers at a time, so listeners see the
// changes in order and are never called concurrently; a listener that
// causes another change (by asking for State, say) has it delivered after
// it returns.
type eventQueue struct {
	listeners []func(StateChange)

	pending    atomic.Bool
	delivering atomic.Bool
	mu         sync.Mutex // guards queue; never held while a listener runs
	queue      []StateChange
}

func (q *eventQueue) push(e StateChange) {
	q.mu.Lock()
	q.queue = append(q.queue, e)
	q.mu.Unlock()
	q.pending.Store(true)
}

// deliver runs the listeners for queued changes unless another goroutine is
// already doing so. The check for an empty queue is one atomic load.
func (q *eventQueue) deliver() {
	for q.pending.Load() && q.delivering.CompareAndSwap(false, true) {
		q.mu.Lock()
		batch := q.queue
		q.queue = nil
		q.pending.Store(false)
		q.mu.Unlock()
		q.run(batch)
		// A change queued while this goroutine delivered is picked up by
		// the loop, unless another goroutine takes it first.
	}
}

func (q *eventQueue) run(batch []StateChange) {
	defer q.delivering.Store(false)
	for _, e := range batch {
		for _, l := range q.listeners {
			l(e)
		}
	}
}
