package queue

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/internal/batch"
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
	batch.Member[*enqueueCall]
	key      string
	body     []byte
	maxDepth int64
	res      enqueueResult
	err      error
}

var enqueueCallPool = sync.Pool{New: func() any { return new(enqueueCall) }}

// newEnqueueBatcher returns the batcher through which s's Enqueues share
// script calls. Under load the number of round trips, and Redis' work per
// message, falls as load rises.
func (s *redisStore) newEnqueueBatcher() *batch.Batcher[*enqueueCall] {
	return &batch.Batcher[*enqueueCall]{
		MaxInflight: maxEnqueueInflight,
		MaxBatch:    maxEnqueueBatch,
		Send:        s.enqueueBatch,
		Fail: func(calls []*enqueueCall, panicked any) {
			err := unavailable("enqueue", fmt.Errorf("panic during the Redis call: %v", panicked))
			for _, c := range calls {
				c.err = err
			}
		},
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
