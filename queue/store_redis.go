package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/internal/batch"
)

// The Redis store keeps one buffer under four kinds of key, all sharing the
// hash tag {name} so every script's keys are in one Cluster slot:
//
//	<prefix>{<name>}:stream     the line: a stream read by one consumer group
//	<prefix>{<name>}:retry      delayed messages: a sorted set scored by due time (ms)
//	<prefix>{<name>}:dead       dead letters: a stream
//	<prefix>{<name>}:idem:<key> idempotency records: the first message's ID, with a TTL
//
// An entry leaves the stream only in a script that also acknowledges it, so
// a stream holds exactly the messages waiting or in flight, and an entry
// still unacknowledged is never trimmed. A retried message is a new entry
// carrying its original ID in the "id" field; its attempt number is the
// "attempt" field plus the deliveries of the current entry after the first,
// so a delivery lost with a dead consumer counts without rewriting the entry.

// redisGroup is the consumer group every Buffer of a store reads through.
const redisGroup = "bulwark"

// redisPruneIdle is how long a consumer holding nothing may stay silent
// before another consumer removes it from the group: a default consumer name
// is new with each process, so dead ones would otherwise pile up. Live
// consumers read at least every poll interval, far more often.
const redisPruneIdle = time.Hour

// bufferLuaLib holds helpers prepended to the scripts that use them:
// attemptOf reads an entry's attempt field; rebuild returns the fields of
// entry eid with the original ID kept, attempt set, and the error replaced
// when seterr; nowMS is Redis' clock; owner returns the consumer holding an
// entry and its deliveries (nil, 0 when none does).
const bufferLuaLib = `
local function attemptOf(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'attempt' then return tonumber(fields[i + 1]) or 1 end
  end
  return 1
end
local function rebuild(eid, fields, attempt, err, seterr)
  local out, id, lasterr = {}, eid, nil
  for i = 1, #fields, 2 do
    local k, v = fields[i], fields[i + 1]
    if k == 'id' then id = v
    elseif k == 'error' then lasterr = v
    elseif k ~= 'attempt' then out[#out + 1] = k; out[#out + 1] = v end
  end
  if seterr then lasterr = err end
  out[#out + 1] = 'id'; out[#out + 1] = id
  out[#out + 1] = 'attempt'; out[#out + 1] = tostring(attempt)
  if lasterr and lasterr ~= '' then out[#out + 1] = 'error'; out[#out + 1] = lasterr end
  return out
end
local function nowMS()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end
local function owner(stream, group, id)
  local p = redis.pcall('XPENDING', stream, group, id, id, 1)
  if type(p) ~= 'table' or p.err or #p == 0 then return nil, 0 end
  return p[1][2], p[1][4]
end
`

// redisReclaim takes over deliveries idle past the visibility timeout,
// moving to the dead letters those whose lost delivery was their last
// attempt, and removes consumers long silent that hold nothing.
//
// KEYS: stream, dead. ARGV: group, consumer, min idle ms, cursor, count,
// max attempts, error text for the dead, prune idle ms. Reply: {next
// cursor, {{entry, fields, attempt}...}, dead count}.
var redisReclaim = redis.NewScript(bufferLuaLib + `
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out, dead, max = {}, 0, tonumber(ARGV[6])
for _, e in ipairs(r[2]) do
  if type(e) == 'table' and type(e[2]) == 'table' then
    local id, fields = e[1], e[2]
    local _, deliveries = owner(KEYS[1], ARGV[1], id)
    local attempt = attemptOf(fields) + math.max(deliveries - 1, 0)
    if attempt > max then
      redis.call('XACK', KEYS[1], ARGV[1], id)
      redis.call('XDEL', KEYS[1], id)
      redis.call('XADD', KEYS[2], '*', unpack(rebuild(id, fields, attempt - 1, ARGV[7], true)))
      dead = dead + 1
    else
      out[#out + 1] = {id, fields, attempt}
    end
  end
end
local prune = tonumber(ARGV[8])
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if name ~= ARGV[2] and pending == 0 and idle and idle > prune then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
  end
end
return {r[1], out, dead}
`)

// redisExtend renews the consumer's leases on the entries it still holds.
// One that another consumer took over is left alone: taking it back would
// have two consumers work on it.
//
// KEYS: stream. ARGV: group, consumer, entries... Reply: leases lost.
var redisExtend = redis.NewScript(bufferLuaLib + `
local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for i = 3, #ARGV do
  if owner(KEYS[1], ARGV[1], ARGV[i]) == ARGV[2] then args[#args + 1] = ARGV[i] end
end
local kept = #args - 5
if kept > 0 then
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
return #ARGV - 2 - kept
`)

// redisAck acknowledges entries and deletes them: a processed message
// leaves the stream.
//
// KEYS: stream. ARGV: group, entries...
var redisAck = redis.NewScript(`
local ids = {unpack(ARGV, 2)}
local n = redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
return n
`)

// redisRequeue moves an entry the consumer holds out of the stream, into
// the retry set due after a delay or into the dead letters.
//
// KEYS: stream, retry, dead. ARGV: group, consumer, entry, "dead" or
// "retry", attempt, error text, "1" to set the error, delay ms. Reply: 1
// moved, 0 the consumer no longer holds it.
var redisRequeue = redis.NewScript(bufferLuaLib + `
if owner(KEYS[1], ARGV[1], ARGV[3]) ~= ARGV[2] then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if #e == 0 then return 0 end
local f = rebuild(ARGV[3], e[1][2], ARGV[5], ARGV[6], ARGV[7] == '1')
if ARGV[4] == 'dead' then
  redis.call('XADD', KEYS[3], '*', unpack(f))
else
  redis.call('ZADD', KEYS[2], nowMS() + tonumber(ARGV[8]), cmsgpack.pack(f))
end
return 1
`)

// redisPromote moves due delayed messages into the stream.
//
// KEYS: stream, retry. ARGV: max. Reply: {moved, ms until the next is due
// or -1}.
var redisPromote = redis.NewScript(bufferLuaLib + `
local now = nowMS()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  redis.call('XADD', KEYS[1], '*', unpack(cmsgpack.unpack(m)))
  redis.call('ZREM', KEYS[2], m)
end
local wait = -1
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #nxt > 0 then wait = math.max(tonumber(nxt[2]) - now, 0) end
return {#due, wait}
`)

// redisHandBack returns every entry the consumer holds to the end of the
// line as a new entry, undoing the count of its undelivered delivery, and
// removes the consumer once it holds nothing.
//
// KEYS: stream. ARGV: group, consumer, batch. Reply: entries handed back.
var redisHandBack = redis.NewScript(bufferLuaLib + `
local batch = tonumber(ARGV[3])
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', batch, ARGV[2])
if type(p) ~= 'table' or p.err then return 0 end
local n = 0
for _, e in ipairs(p) do
  local id, deliveries = e[1], e[4]
  local x = redis.call('XRANGE', KEYS[1], id, id)
  redis.call('XACK', KEYS[1], ARGV[1], id)
  redis.call('XDEL', KEYS[1], id)
  if #x > 0 then
    local fields = x[1][2]
    local attempt = attemptOf(fields) + math.max(deliveries - 1, 0)
    redis.call('XADD', KEYS[1], '*', unpack(rebuild(id, fields, attempt, '', false)))
    n = n + 1
  end
end
if #p < batch then redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) end
return n
`)

// redisStats reads the buffer's counts and the age of the head of the line
// by Redis' clock.
//
// KEYS: stream, retry, dead. ARGV: group. Reply: {stream length, delayed,
// dead, pending, head age ms or -1}.
var redisStats = redis.NewScript(bufferLuaLib + `
local len = redis.call('XLEN', KEYS[1])
local delayed = redis.call('ZCARD', KEYS[2])
local dead = redis.call('XLEN', KEYS[3])
local pending = 0
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(p) == 'table' and not p.err then pending = p[1] end
local age = -1
local h = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #h > 0 then
  local id, f = h[1][1], h[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'id' then id = f[i + 1] end
  end
  local ms = tonumber(string.match(id, '^%d+'))
  if ms then age = math.max(nowMS() - ms, 0) end
end
return {len, delayed, dead, pending, age}
`)

// redisRedrive moves the oldest dead letters back into the stream with a
// new round of attempts.
//
// KEYS: stream, dead. ARGV: count. Reply: moved.
var redisRedrive = redis.NewScript(bufferLuaLib + `
local es = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', tonumber(ARGV[1]))
for _, e in ipairs(es) do
  redis.call('XADD', KEYS[1], '*', unpack(rebuild(e[1], e[2], 1, '', false)))
  redis.call('XDEL', KEYS[2], e[1])
end
return #es
`)

type redisStoreOptionFunc func(*storeConfig)

func (f redisStoreOptionFunc) applyRedisStore(c *storeConfig) { f(c) }

// redisStore is the Redis implementation of Store.
type redisStore struct {
	client  redis.UniversalClient
	name    string
	idem    string // prefix of idempotency records
	idemTTL string // ms
	keys    []string
	stream  []string // stream key alone
	retryKs []string // stream, retry
	moveKs  []string // stream, dead
	batch   *batch.Batcher[*enqueueCall]
}

// NewRedisStore returns a durable store for the buffer called name, kept in
// the Redis behind client (a single node, Sentinel or Cluster client). Every
// instance using the same Redis, prefix and name shares the buffer. Its
// errors match [ErrInvalidConfig] and name the bad argument.
//
// Messages are as durable as Redis makes them: with appendonly yes and
// appendfsync always, an acknowledged Enqueue survives a crash of Redis;
// with the default of snapshots or no persistence, a Redis restart loses
// what was buffered (and a failover to a replica what it had not yet
// received).
//
// Concurrent Enqueues share script calls: while a few are on the wire,
// others wait for one of them to return and then go together, so Redis
// does less work per message as load rises, and a lone Enqueue is sent at
// once.
func NewRedisStore(client redis.UniversalClient, name string, opts ...RedisStoreOption) (Store, error) {
	if client == nil {
		return nil, configError("client", "must not be nil", nil)
	}
	if err := validateStoreName(name); err != nil {
		return nil, err
	}
	c := defaultStoreConfig()
	for i, o := range opts {
		if o == nil {
			return nil, configError("opts", "must not contain nil, at index", i)
		}
		o.applyRedisStore(&c)
	}
	if strings.ContainsAny(c.prefix, "{}") {
		return nil, configError("WithKeyPrefix", "must not contain '{' or '}'", strconv.Quote(c.prefix))
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	base := c.prefix + "{" + name + "}:"
	s := &redisStore{
		client:  client,
		name:    name,
		idem:    base + "idem:",
		idemTTL: strconv.FormatInt(c.idemTTL.Milliseconds(), 10),
		keys:    []string{base + "stream", base + "retry", base + "dead"},
	}
	s.stream = s.keys[:1]
	s.retryKs = s.keys[:2]
	s.moveKs = []string{s.keys[0], s.keys[2]}
	s.batch = s.newEnqueueBatcher()
	return s, nil
}

func (s *redisStore) storeName() string { return s.name }

// fail turns a Redis error into the error a caller sees: the caller's own
// context error when that caused it, otherwise one matching ErrUnavailable.
func (s *redisStore) fail(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
		return ctxErr
	}
	return unavailable(op, err)
}

// enqueue adds the message in a script call shared with concurrent
// Enqueues (see newEnqueueBatcher): the idempotency check, the depth check,
// the add and the idempotency record are one atomic step.
func (s *redisStore) enqueue(ctx context.Context, key string, body []byte, maxDepth int64) (enqueueResult, error) {
	c := enqueueCallPool.Get().(*enqueueCall)
	c.key, c.body, c.maxDepth = key, body, maxDepth
	if err := s.batch.Do(ctx, c); err != nil {
		c.err = err
	}
	res, err := c.res, c.err
	*c = enqueueCall{Member: c.Member}
	enqueueCallPool.Put(c)
	return res, err
}

func (s *redisStore) ensureGroup(ctx context.Context) error {
	err := s.client.XGroupCreateMkStream(ctx, s.keys[0], redisGroup, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return s.fail(ctx, "create consumer group", err)
	}
	return nil
}

// isNoGroup reports a Redis error saying the consumer group is missing, as
// after a restart of a Redis without persistence.
func isNoGroup(err error) bool {
	return err != nil && strings.Contains(err.Error(), "NOGROUP")
}

func (s *redisStore) fetch(ctx context.Context, consumer string, n int, block time.Duration) ([]delivery, error) {
	// go-redis sends BLOCK 0 (wait forever) for a zero Block.
	block = max(block, time.Millisecond)
	streams, err := s.client.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group:    redisGroup,
		Consumer: consumer,
		Streams:  []string{s.keys[0], ">"},
		Count:    int64(n),
		Block:    block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, s.fail(ctx, "read", err)
	}
	var ds []delivery
	for _, st := range streams {
		for _, m := range st.Messages {
			ds = append(ds, delivery{entry: m.ID, msg: messageFromFields(m.ID, func(k string) (string, bool) {
				v, ok := m.Values[k]
				str, _ := v.(string)
				return str, ok
			})})
		}
	}
	return ds, nil
}

func (s *redisStore) reclaim(ctx context.Context, consumer, cursor string, minIdle time.Duration, n, maxAttempts int) ([]delivery, int, string, error) {
	if cursor == "" {
		cursor = "0-0"
	}
	reply, err := redisReclaim.Run(ctx, s.client, s.moveKs,
		redisGroup, consumer, minIdle.Milliseconds(), cursor, n, maxAttempts,
		"queue: not acknowledged within the visibility timeout (the consumer stopped or lost its lease)",
		redisPruneIdle.Milliseconds()).Slice()
	if err != nil {
		return nil, 0, "0-0", s.fail(ctx, "reclaim", err)
	}
	if len(reply) != 3 {
		return nil, 0, "0-0", unavailable("reclaim", fmt.Errorf("unexpected script reply %v", reply))
	}
	next, _ := reply[0].(string)
	entries, _ := reply[1].([]any)
	dead, _ := reply[2].(int64)
	ds := make([]delivery, 0, len(entries))
	for _, e := range entries {
		t, _ := e.([]any)
		if len(t) != 3 {
			continue
		}
		id, _ := t[0].(string)
		fields, _ := t[1].([]any)
		attempt, _ := t[2].(int64)
		m := messageFromFields(id, flatGetter(fields))
		m.Attempt = int(attempt)
		ds = append(ds, delivery{entry: id, msg: m})
	}
	return ds, int(dead), next, nil
}

// flatGetter reads fields from a script's flat [k1, v1, k2, v2...] reply.
func flatGetter(fields []any) func(string) (string, bool) {
	return func(k string) (string, bool) {
		for i := 0; i+1 < len(fields); i += 2 {
			if f, _ := fields[i].(string); f == k {
				v, _ := fields[i+1].(string)
				return v, true
			}
		}
		return "", false
	}
}

func (s *redisStore) extend(ctx context.Context, consumer string, entries []string) error {
	args := make([]any, 0, 2+len(entries))
	args = append(args, redisGroup, consumer)
	for _, e := range entries {
		args = append(args, e)
	}
	if err := redisExtend.Run(ctx, s.client, s.stream, args...).Err(); err != nil {
		return s.fail(ctx, "extend lease", err)
	}
	return nil
}

func (s *redisStore) ack(ctx context.Context, entries []string) error {
	args := make([]any, 0, 1+len(entries))
	args = append(args, redisGroup)
	for _, e := range entries {
		args = append(args, e)
	}
	if err := redisAck.Run(ctx, s.client, s.stream, args...).Err(); err != nil {
		return s.fail(ctx, "ack", err)
	}
	return nil
}

func (s *redisStore) requeue(ctx context.Context, consumer string, r requeueRequest) (bool, error) {
	mode, setErr := "retry", "0"
	if r.dead {
		mode = "dead"
	}
	if r.setErr {
		setErr = "1"
	}
	n, err := redisRequeue.Run(ctx, s.client, s.keys,
		redisGroup, consumer, r.entry, mode, r.attempt, r.errText, setErr, r.delay.Milliseconds()).Int()
	if err != nil {
		return false, s.fail(ctx, "requeue", err)
	}
	return n == 1, nil
}

// handBackBatch is how many entries one hand-back script moves; a consumer
// rarely holds more than its concurrency.
const handBackBatch = 1000

func (s *redisStore) handBack(ctx context.Context, consumer string) (int, error) {
	total := 0
	for {
		n, err := redisHandBack.Run(ctx, s.client, s.stream, redisGroup, consumer, handBackBatch).Int()
		if err != nil {
			return total, s.fail(ctx, "hand back", err)
		}
		total += n
		if n < handBackBatch {
			return total, nil
		}
	}
}

func (s *redisStore) promote(ctx context.Context, n int) (int, time.Duration, error) {
	reply, err := redisPromote.Run(ctx, s.client, s.retryKs, n).Int64Slice()
	if err != nil {
		return 0, 0, s.fail(ctx, "promote", err)
	}
	if len(reply) != 2 {
		return 0, 0, unavailable("promote", fmt.Errorf("unexpected script reply %v", reply))
	}
	next := time.Duration(-1)
	if reply[1] >= 0 {
		next = time.Duration(reply[1]) * time.Millisecond
	}
	return int(reply[0]), next, nil
}

func (s *redisStore) stats(ctx context.Context) (BufferStats, error) {
	reply, err := redisStats.Run(ctx, s.client, s.keys, redisGroup).Int64Slice()
	if err != nil {
		return BufferStats{}, s.fail(ctx, "stats", err)
	}
	if len(reply) != 5 {
		return BufferStats{}, unavailable("stats", fmt.Errorf("unexpected script reply %v", reply))
	}
	st := BufferStats{
		Depth:   reply[0] + reply[1],
		Delayed: reply[1],
		Dead:    reply[2],
		Pending: reply[3],
	}
	if reply[4] > 0 {
		st.OldestAge = time.Duration(reply[4]) * time.Millisecond
	}
	return st, nil
}

func (s *redisStore) deadLetters(ctx context.Context, n int) ([]Message, error) {
	xs, err := s.client.XRangeN(ctx, s.keys[2], "-", "+", int64(n)).Result()
	if err != nil {
		return nil, s.fail(ctx, "read dead letters", err)
	}
	out := make([]Message, len(xs))
	for i, x := range xs {
		out[i] = messageFromFields(x.ID, func(k string) (string, bool) {
			v, ok := x.Values[k]
			str, _ := v.(string)
			return str, ok
		})
	}
	return out, nil
}

func (s *redisStore) redrive(ctx context.Context, n int) (int, error) {
	moved, err := redisRedrive.Run(ctx, s.client, s.moveKs, n).Int()
	if err != nil {
		return 0, s.fail(ctx, "redrive", err)
	}
	return moved, nil
}
