package queue

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"
)

// redisEnqueueBatch adds several messages in one step, each as
// redisEnqueue would: unless its idempotency record exists (a key repeated
// within the batch is a duplicate of its first) or the buffer is full.
//
// KEYS: stream, retry, then the idempotency records of the messages that
// have a key. ARGV: TTL ms, then for each message its key, body, max depth
// (0: none) and the index in KEYS of its record (0: no key). Reply: for
// each message, {id, status, depth} with status 0 added, 1 duplicate, 2
// full.
var redisEnqueueBatch = redis.NewScript(`
local depth = nil
local out = {}
for i = 2, #ARGV, 4 do
  local key, body, max, k = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local id = false
  if k > 0 then id = redis.call('GET', KEYS[k]) end
  if id then
    out[#out + 1] = {id, 1, 0}
  else
    if max > 0 and not depth then
      depth = redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
    end
    if max > 0 and depth >= max then
      out[#out + 1] = {'', 2, depth}
    else
      if key == '' then
        id = redis.call('XADD', KEYS[1], '*', 'body', body)
      else
        id = redis.call('XADD', KEYS[1], '*', 'key', key, 'body', body)
      end
      if k > 0 then redis.call('SET', KEYS[k], id, 'PX', ARGV[1]) end
      if depth then depth = depth + 1 end
      out[#out + 1] = {id, 0, 0}
    end
  end
end
return out
`)

// maxEnqueueInflight is how many enqueue script calls a store keeps on the
// wire before concurrent Enqueues start to share calls. Below it every
// Enqueue is sent at once, so a lightly loaded store adds no waiting.
const maxEnqueueInflight = 4

// maxEnqueueBatch bounds the messages one script call adds, so that one
// call does not hold Redis for long.
const maxEnqueueBatch = 64

// enqueueCall is one Enqueue on its way through the batcher.
type enqueueCall struct {
	key      string
	body     []byte
	maxDepth int64
	res      enqueueResult
	err      error

	// done receives true when the call must carry batch to Redis for the
	// others, false when res/err are ready.
	done  chan bool
	batch []*enqueueCall
}

var enqueueCallPool = sync.Pool{New: func() any { return &enqueueCall{done: make(chan bool, 1)} }}

// enqueueBatcher coalesces concurrent Enqueues into shared script calls
// without a goroutine of its own. A caller finding fewer than
// maxEnqueueInflight calls on the wire sends its message, with whatever is
// waiting, itself. Otherwise it waits in line; the caller whose call
// returns hands the next batch to the first in line, who carries it. So
// under load the number of round trips, and Redis' work per message, falls
// as load rises.
type enqueueBatcher struct {
	s *redisStore

	mu       sync.Mutex
	inflight int
	pending  []*enqueueCall
}

// do enqueues c, possibly with others. A caller whose context ends while
// waiting in line leaves it; one whose message is on the wire waits for the
// round trip (bounded by the client's timeouts), since Redis may have added
// it.
func (q *enqueueBatcher) do(ctx context.Context, c *enqueueCall) {
	q.mu.Lock()
	if q.inflight < maxEnqueueInflight {
		q.inflight++
		batch := q.takeLocked(c)
		q.mu.Unlock()
		q.lead(ctx, batch, c)
		return
	}
	q.pending = append(q.pending, c)
	q.mu.Unlock()

	var lead bool
	select {
	case lead = <-c.done:
	case <-ctx.Done():
		if q.leave(c) {
			c.err = ctx.Err()
			return
		}
		lead = <-c.done
	}
	if lead {
		q.lead(ctx, c.batch, c)
	}
}

// takeLocked returns first (when not nil) and the longest-waiting pending
// calls, at most maxEnqueueBatch in all.
func (q *enqueueBatcher) takeLocked(first *enqueueCall) []*enqueueCall {
	n := min(len(q.pending), maxEnqueueBatch)
	if first != nil {
		n = min(len(q.pending), maxEnqueueBatch-1)
	}
	if first == nil && n == 0 {
		return nil
	}
	batch := make([]*enqueueCall, 0, n+1)
	if first != nil {
		batch = append(batch, first)
	}
	batch = append(batch, q.pending[:n]...)
	rest := copy(q.pending, q.pending[n:])
	clear(q.pending[rest:])
	q.pending = q.pending[:rest]
	return batch
}

// leave takes c out of the line if it is still waiting there.
func (q *enqueueBatcher) leave(c *enqueueCall) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, p := range q.pending {
		if p == c {
			last := len(q.pending) - 1
			copy(q.pending[i:], q.pending[i+1:])
			q.pending[last] = nil
			q.pending = q.pending[:last]
			return true
		}
	}
	return false
}

// lead sends batch, hands the next batch to the first in line, and gives
// every other member of batch its result. The script call does not inherit
// the leader's cancellation: the others wait on it too.
func (q *enqueueBatcher) lead(ctx context.Context, batch []*enqueueCall, self *enqueueCall) {
	defer func() {
		// A panic in the Redis call (a client hook, say) must not leave
		// the line stuck: the batch gets an error, the line moves on, and
		// the panic goes on up in this goroutine.
		if p := recover(); p != nil {
			for _, c := range batch {
				c.err = unavailable("enqueue", fmt.Errorf("panic during the Redis call: %v", p))
			}
			q.handOff(batch, self)
			panic(p)
		}
	}()
	q.s.enqueueBatch(context.WithoutCancel(ctx), batch)
	q.handOff(batch, self)
}

// handOff gives the next batch to the first in line and the members of
// batch their results.
func (q *enqueueBatcher) handOff(batch []*enqueueCall, self *enqueueCall) {
	q.mu.Lock()
	next := q.takeLocked(nil)
	if len(next) == 0 {
		q.inflight--
	}
	q.mu.Unlock()
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

// enqueueBatch runs the batch script and sets each call's result or error.
func (s *redisStore) enqueueBatch(ctx context.Context, batch []*enqueueCall) {
	keys := make([]string, 2, 2+len(batch))
	keys[0], keys[1] = s.keys[0], s.keys[1]
	args := make([]any, 1, 1+4*len(batch))
	args[0] = s.idemTTL
	for _, c := range batch {
		k := 0
		if c.key != "" {
			keys = append(keys, s.idem+c.key)
			k = len(keys)
		}
		args = append(args, c.key, c.body, c.maxDepth, k)
	}
	reply, err := redisEnqueueBatch.Run(ctx, s.client, keys, args...).Slice()
	if err == nil && len(reply) != len(batch) {
		err = fmt.Errorf("script replied %d results for %d messages", len(reply), len(batch))
	}
	for i, c := range batch {
		if err != nil {
			c.err = unavailable("enqueue", err)
			continue
		}
		r, _ := reply[i].([]any)
		if len(r) != 3 {
			c.err = unavailable("enqueue", fmt.Errorf("unexpected script reply %v", reply[i]))
			continue
		}
		id, _ := r[0].(string)
		status, _ := r[1].(int64)
		depth, _ := r[2].(int64)
		c.res = enqueueResult{id: id, duplicate: status == 1, full: status == 2, depth: depth}
	}
}
