package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// roomAdvance is the first part of every room script: it reads Redis' clock,
// drops what has expired and admits everyone whose turn has come, so each
// script sees the room as it is now and no instance needs to keep a clock
// running for the others.
//
// One room is six keys sharing the hash tag {name}:
//
//	seq    INCR counter: the number of the last ticket issued
//	line   ZSET id → seq: tickets waiting, in joining order
//	exp    ZSET id → µs deadline of the next poll of a ticket in line
//	adm    ZSET id → µs deadline of an admission; its size is the number active
//	tix    HASH id → kind of every ticket in line or admitted: "h" for a
//	       Wait caller's (held), the joining µs of a Join ticket whose
//	       admission Status has not seen, "c" and the µs of the Status
//	       that claimed it
//	state  HASH tat (µs), serving (seq of the last admitted ticket),
//	       rate and idle (the outflow estimator, as in the Go outflow type)
//	       and last (µs of the last script)
//
// Admission follows the theoretical admission time (tat): the head is
// admitted once tat <= now and tat then moves one interval on, so admissions
// that fall due while no script runs are made by the next script, keeping
// the rate exact. tat is raised to now when a ticket joins an empty line and
// when an admission ends while the active limit was reached, so an idle or
// blocked room banks no admissions. At most 1000 expiries of each kind and
// 1000 admissions are handled per script, bounding the time Redis spends in
// one.
//
// Every script sets the keys to expire after three times the longer of
// the ticket and admission TTLs, so an abandoned room disappears, while the
// counter and state outlive every ticket that could still use them. The
// instances of a room must share its options: each script applies those of
// the instance that runs it.
//
// Times are whole microseconds, exact in Lua's doubles; numbers reach
// redis.call as numbers, which Redis formats exactly.
//
// ARGV: interval µs, max active, ticket TTL µs, admission TTL µs, outflow
// time constant µs, initial outflow per second, key TTL ms; then the
// script's own arguments.
const roomAdvance = `
local kSeq, kLine, kExp, kAdm, kTix, kState = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local interval = tonumber(ARGV[1])
local maxActive = tonumber(ARGV[2])
local ticketTTL = tonumber(ARGV[3])
local admitTTL = tonumber(ARGV[4])
local tau = tonumber(ARGV[5])
local keyTTL = tonumber(ARGV[7])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local s = redis.call('HMGET', kState, 'tat', 'serving', 'rate', 'idle', 'last')
local tat = tonumber(s[1]) or now
local serving = tonumber(s[2]) or 0
local rate = tonumber(s[3]) or tonumber(ARGV[6])
local idle = tonumber(s[4]) or 0
local last = tonumber(s[5]) or now
local lineLen = redis.call('ZCARD', kLine)
local active = redis.call('ZCARD', kAdm)
local expired = 0

-- The estimator counts time only while the line was not empty.
if lineLen > 0 and now > last then
  idle = idle + (now - last)
end

local function outflow()
  return rate * math.exp(-idle / tau)
end

-- outflowMicro is the outflow in millionths, an integer for the reply.
local function outflowMicro()
  return math.floor(outflow() * 1000000 + 0.5)
end

local function headWait()
  return math.max(tat - now, 0)
end

-- ended accounts n admissions that ended.
local function ended(n)
  if n > 0 then
    if maxActive > 0 and active >= maxActive and tat < now then
      tat = now
    end
    active = active - n
  end
end

-- dropExpired removes tickets in line that were not polled in time. Only
-- Join tickets count as expired here: a Wait caller whose ticket expires
-- is told so, and counted, by its room.
local function dropExpired(ids)
  lineLen = lineLen - redis.call('ZREM', kLine, unpack(ids))
  local kinds = redis.call('HMGET', kTix, unpack(ids))
  for i = 1, #ids do
    if kinds[i] and kinds[i] ~= 'h' then
      expired = expired + 1
    end
  end
  redis.call('HDEL', kTix, unpack(ids))
end

local function purge()
  local ids = redis.call('ZRANGEBYSCORE', kExp, '-inf', now, 'LIMIT', 0, 1000)
  if #ids > 0 then
    redis.call('ZREM', kExp, unpack(ids))
    dropExpired(ids)
  end
  ids = redis.call('ZRANGEBYSCORE', kAdm, '-inf', now, 'LIMIT', 0, 1000)
  if #ids > 0 then
    ended(redis.call('ZREM', kAdm, unpack(ids)))
    redis.call('HDEL', kTix, unpack(ids))
  end
end

local function admit()
  for _ = 1, 1000 do
    if lineLen == 0 or tat > now or (maxActive > 0 and active >= maxActive) then
      return
    end
    local head = redis.call('ZRANGE', kLine, 0, 0, 'WITHSCORES')
    local id = head[1]
    local deadline = tonumber(redis.call('ZSCORE', kExp, id))
    redis.call('ZREM', kExp, id)
    if deadline == nil or deadline <= now then
      -- Beyond what purge dropped this time.
      dropExpired({id})
    else
      redis.call('ZREM', kLine, id)
      lineLen = lineLen - 1
      -- Claimed by Status (a Join ticket) or by the owner's poller (a
      -- Wait caller) within a ticket TTL, or it lapses.
      redis.call('ZADD', kAdm, now + ticketTTL, id)
      active = active + 1
      serving = tonumber(head[2])
      rate = outflow() + 1000000 / tau
      idle = 0
      tat = tat + interval
    end
  end
end

local function save()
  redis.call('HSET', kState, 'tat', tat, 'serving', serving, 'rate', rate, 'idle', idle, 'last', now)
  for i = 1, #KEYS do
    redis.call('PEXPIRE', KEYS[i], keyTTL)
  end
end

purge()
admit()
`

// roomJoin appends a ticket unless the line is full or, with rejectLong,
// the estimated wait exceeds the maximum wait.
//
// ARGV after the common ones: max length, reject long (0/1), max wait µs,
// held (0/1), the ID's random part.
//
// Reply: code (0 in line, 1 admitted, -1 full, -2 too long), seq, position
// (for -1 and -2: the line's length), head wait µs (for -2: by how much the
// estimated wait exceeds the maximum, µs), outflow in millionths, expired,
// 1 if admission waits for an active slot.
var roomJoin = redis.NewScript(roomAdvance + `
local maxLength = tonumber(ARGV[8])
local maxWait = tonumber(ARGV[10])
if lineLen >= maxLength then
  save()
  return {-1, 0, lineLen, 0, 0, expired, 0}
end
local eta = math.min(headWait() + lineLen / math.max(outflow(), 1e-9) * 1000000, 86400000000)
if ARGV[9] == '1' and eta > maxWait then
  save()
  return {-2, 0, lineLen, math.floor(eta - maxWait), 0, expired, 0}
end
local seq = redis.call('INCR', kSeq)
if seq == 1 then
  -- A new counter must still follow every ticket Redis knows of, in case
  -- it was evicted without the rest of the room.
  local tail = redis.call('ZRANGE', kLine, -1, -1, 'WITHSCORES')
  local floor = math.max(serving, tonumber(tail[2]) or 0)
  if floor >= seq then
    seq = redis.call('INCRBY', kSeq, floor - seq + 1)
  end
end
local id = string.format('%d', seq) .. '-' .. ARGV[12]
if lineLen == 0 and tat < now then
  tat = now
end
redis.call('ZADD', kLine, seq, id)
redis.call('ZADD', kExp, now + ticketTTL, id)
lineLen = lineLen + 1
if ARGV[11] == '1' then
  redis.call('HSET', kTix, id, 'h')
else
  redis.call('HSET', kTix, id, now)
end
admit()
local rank = redis.call('ZRANK', kLine, id)
local out = {1, seq, 0, 0, outflowMicro(), expired, 0}
if rank then
  out = {0, seq, rank + 1, headWait(), outflowMicro(), expired, 0}
  if maxActive > 0 and active >= maxActive then
    out[7] = 1
  end
end
save()
return out
`)

// roomStatus refreshes a Join ticket in line, or claims its admission the
// first time it is seen admitted. A Wait caller's ticket is not for Status.
//
// ARGV after the common ones: the ticket ID.
//
// Reply: code (0 in line, 1 admitted, 2 gone), position, head wait µs,
// outflow in millionths, µs until the ticket or admission lapses, expired,
// 1 if this call claimed the admission, µs the ticket waited, µs at which
// the admission was claimed.
var roomStatus = redis.NewScript(roomAdvance + `
local id = ARGV[8]
local kind = redis.call('HGET', kTix, id)
local out = {2, 0, 0, 0, 0, expired, 0, 0, 0}
if kind and kind ~= 'h' then
  local rank = redis.call('ZRANK', kLine, id)
  if rank then
    redis.call('ZADD', kExp, now + ticketTTL, id)
    out = {0, rank + 1, headWait(), outflowMicro(), ticketTTL, expired, 0, 0, 0}
  else
    local lease = tonumber(redis.call('ZSCORE', kAdm, id))
    if lease and string.sub(kind, 1, 1) == 'c' then
      out = {1, 0, 0, 0, lease - now, expired, 0, 0, tonumber(string.sub(kind, 2))}
    elseif lease then
      redis.call('HSET', kTix, id, string.format('c%d', now))
      redis.call('ZADD', kAdm, now + admitTTL, id)
      out = {1, 0, 0, 0, admitTTL, expired, 1, now - tonumber(kind), now}
    end
  end
end
save()
return out
`)

// roomLeave takes tickets out of the room and admits whoever that lets in.
//
// ARGV after the common ones: '1' to remove tickets in line or admitted,
// '0' to end admissions only; '1' if the tickets are Wait callers', '0' if
// Join tickets (others are left alone); then the ticket IDs.
//
// Reply: expired.
var roomLeave = redis.NewScript(roomAdvance + `
local anywhere = ARGV[8] == '1'
local held = ARGV[9] == '1'
for i = 10, #ARGV do
  local id = ARGV[i]
  local kind = redis.call('HGET', kTix, id)
  if kind and (kind == 'h') == held then
    if anywhere and redis.call('ZREM', kLine, id) == 1 then
      lineLen = lineLen - 1
      redis.call('ZREM', kExp, id)
      redis.call('HDEL', kTix, id)
    elseif redis.call('ZREM', kAdm, id) == 1 then
      ended(1)
      redis.call('HDEL', kTix, id)
    end
  end
end
admit()
save()
return expired
`)

// roomAbandon takes out the ticket whose ID ends in the given random part,
// in line or admitted, for a join whose reply was lost. It scans the line
// and the admissions, so it is for that rare case only.
//
// ARGV after the common ones: the ID's random part.
//
// Reply: tickets taken out, expired.
var roomAbandon = redis.NewScript(roomAdvance + `
local pattern = '*-' .. ARGV[8]
local found = 0
for _, key in ipairs({kLine, kAdm}) do
  local cursor = '0'
  repeat
    local page = redis.call('ZSCAN', key, cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = page[1]
    for i = 1, #page[2], 2 do
      local id = page[2][i]
      if redis.call('ZREM', key, id) == 1 then
        if key == kLine then
          lineLen = lineLen - 1
          redis.call('ZREM', kExp, id)
        else
          ended(1)
        end
        redis.call('HDEL', kTix, id)
        found = found + 1
      end
    end
  until cursor == '0'
end
admit()
save()
return {found, expired}
`)

// roomQuit takes a Wait caller's ticket out of the line, unless it was
// admitted already.
//
// ARGV after the common ones: the ticket ID.
//
// Reply: 0 taken out of the line, 1 admitted (and left so), 2 not in the
// room; expired.
var roomQuit = redis.NewScript(roomAdvance + `
local id = ARGV[8]
local out = 2
if redis.call('ZREM', kLine, id) == 1 then
  lineLen = lineLen - 1
  redis.call('ZREM', kExp, id)
  redis.call('HDEL', kTix, id)
  out = 0
elseif redis.call('ZSCORE', kAdm, id) then
  out = 1
end
admit()
save()
return {out, expired}
`)

// roomPoll is a poller's round for the Wait callers of one instance. The
// IDs come lowest number first. In a quick round only the IDs numbered at
// most serving can have changed (admission is in number order), so only
// they and the first one still in line are looked at, which costs Redis
// little however many callers wait. A full round also pushes back the
// deadline of every ticket and held admission it is given.
//
// ARGV after the common ones: '1' for a full round, then the IDs.
//
// Reply: head wait µs, expired, 1 if admission waits for an active slot,
// place of the first ID still in line counted from 0 (or -1), then per ID
// 0 in line (or not looked at), 1 admitted, 2 gone.
var roomPoll = redis.NewScript(roomAdvance + `
local full = ARGV[8] == '1'
local out = {0, 0, 0, -1}
local ahead = -1
local looking = true
-- claim pushes back the deadline of an admission and reports whether
-- there is one.
local function claim(id)
  return redis.call('ZADD', kAdm, 'XX', 'CH', now + ticketTTL, id) == 1 or redis.call('ZSCORE', kAdm, id)
end
for i = 9, #ARGV do
  local id = ARGV[i]
  local st = 0
  if full then
    if redis.call('ZSCORE', kLine, id) then
      redis.call('ZADD', kExp, 'XX', now + ticketTTL, id)
      if ahead < 0 then
        ahead = redis.call('ZRANK', kLine, id)
      end
    elseif claim(id) then
      st = 1
    else
      st = 2
    end
  elseif looking then
    if tonumber(string.match(id, '^%d+')) <= serving then
      if claim(id) then
        st = 1
      else
        st = 2
      end
    else
      local rank = redis.call('ZRANK', kLine, id)
      if rank then
        ahead = rank
        looking = false
      else
        st = 2
      end
    end
  end
  out[#out + 1] = st
end
out[1] = headWait()
out[2] = expired
if maxActive > 0 and active >= maxActive then
  out[3] = 1
end
out[4] = ahead
save()
return out
`)

// roomStats reports the line.
//
// Reply: length, active, outflow in millionths, head wait µs, expired.
var roomStats = redis.NewScript(roomAdvance + `
save()
return {lineLen, active, outflowMicro(), headWait(), expired}
`)

// Poller tuning.
const (
	// pollBatch is how many of an instance's first waiters a quick round
	// names. Only those admitted since the last round cost Redis work; if
	// all of them were, the next round follows at once.
	pollBatch = 64
	// pollChunk bounds the IDs of one script call, so a full round of
	// many waiters does not hold Redis for long at a time.
	pollChunk = 500
	// pollMinSleep and pollMaxSleep bound the sleep between rounds. The
	// maximum is how late an instance may notice an admission it could
	// not foresee: a slot freed on another instance, or tickets ahead
	// that left.
	pollMinSleep = time.Millisecond
	pollMaxSleep = 50 * time.Millisecond
	// pollMaxBackoff bounds the wait between rounds while Redis fails.
	pollMaxBackoff = time.Second
	// detachedTimeout bounds the Redis calls made for no caller: ending an
	// admission in Admission.Done, giving back a place after the caller
	// gave up, and leaving the line on Close.
	detachedTimeout = time.Second
	// maxRedisTTL keeps every deadline the scripts compute within the
	// integers a Lua double holds exactly.
	maxRedisTTL = (1 << 50) * time.Microsecond
)

// States of a redisWaiter.
const (
	waiterInLine = iota
	waiterAdmitted
	waiterGone
	waiterClosed
)

// redisWaiter is a Wait caller of this instance, in line or admitted and
// not yet released.
type redisWaiter struct {
	id    string
	seq   uint64
	ch    chan struct{} // closed when state leaves waiterInLine
	state uint8         // guarded by redisRoom.mu
}

// redisRoom keeps the line in Redis (see roomAdvance), shared by every Room
// of the same name on the same Redis. Each call of the room is one script,
// so an instance keeps no state of the line but its own Wait callers.
//
// Those callers are woken by one poller goroutine per instance rather than
// each polling Redis: it runs while the instance has callers in line or
// held admissions, sleeps until the next admission instant it can foresee,
// and keeps the tickets and admissions of its callers from expiring, so a
// crashed instance's callers leave the line within a ticket TTL.
type redisRoom struct {
	r       *Room
	client  redis.UniversalClient
	keys    []string
	common  []any // the ARGV every script starts with
	joinArg []any // common plus join's fixed arguments

	interval     time.Duration // between admissions, as the scripts round it
	refreshEvery time.Duration // between full rounds
	maxSleep     time.Duration

	stop   context.Context // ends the poller's Redis calls on close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	wake   chan struct{}
	// sleeper times the poller's rounds precisely at high rates; nil
	// for timers alone.
	sleeper *preciseSleeper

	// Until when (ns since epoch) join refuses without asking Redis,
	// because the line was full or its wait too long: a bound the line
	// cannot have moved past at the configured rate.
	epoch                time.Time
	fullUntil, longUntil atomic.Int64

	mu      sync.Mutex
	closed  bool
	running bool                    // a poller goroutine is running
	waiters []*redisWaiter          // in line, lowest seq first
	held    map[string]*redisWaiter // admitted, not yet released
	// hint is the earliest admission instant a join foresaw since the
	// poller's last round; zero if none.
	hint time.Time
	// planned is when the sleeping poller will wake; zero while it is
	// not asleep.
	planned time.Time

	pollArgs []any // the poller's buffer
}

func newRedisRoom(r *Room) (*redisRoom, error) {
	c := &r.cfg
	switch {
	case c.ticketTTL > maxRedisTTL:
		return nil, configError("WithTicketTTL", "must be at most 2^50µs (35 years) with WithRedis", c.ticketTTL)
	case c.admitTTL > maxRedisTTL:
		return nil, configError("WithAdmissionTTL", "must be at most 2^50µs (35 years) with WithRedis", c.admitTTL)
	}
	intervalUS := max(int64(math.Round(1e6/c.rate)), 1)
	tauUS := int64(math.Round(max(10, 20/c.rate) * 1e6))
	// No ticket or admission outlives the last script by more than the
	// longer TTL.
	keyTTL := 3 * max(c.ticketTTL, c.admitTTL)
	p := c.prefix + "{" + r.name + "}:"
	b := &redisRoom{
		r:      r,
		client: c.client,
		keys:   []string{p + "seq", p + "line", p + "exp", p + "adm", p + "tix", p + "state"},
		common: []any{
			strconv.FormatInt(intervalUS, 10),
			strconv.Itoa(c.maxActive),
			strconv.FormatInt(c.ticketTTL.Microseconds(), 10),
			strconv.FormatInt(c.admitTTL.Microseconds(), 10),
			strconv.FormatInt(tauUS, 10),
			strconv.FormatFloat(c.rate, 'g', -1, 64),
			strconv.FormatInt(max(keyTTL.Milliseconds(), 1), 10),
		},
		interval:     time.Duration(min(intervalUS, maxETA.Microseconds())) * time.Microsecond,
		refreshEvery: max(c.ticketTTL/4, time.Millisecond),
		wake:         make(chan struct{}, 1),
		held:         make(map[string]*redisWaiter),
		epoch:        time.Now(),
	}
	b.maxSleep = min(pollMaxSleep, b.refreshEvery)
	if intervalUS*int64(time.Microsecond) < preciseBelow {
		b.sleeper = newPreciseSleeper()
	}
	b.joinArg = append(slices.Clip(b.common), strconv.Itoa(c.maxLength), boolArg(c.rejectLong), strconv.FormatInt(min(c.maxWait, maxETA).Microseconds(), 10))
	b.stop, b.cancel = context.WithCancel(context.Background())
	return b, nil
}

// args returns the common ARGV followed by more.
func (b *redisRoom) args(more ...any) []any {
	return append(slices.Clip(b.common), more...)
}

// fail turns a Redis error into the caller's own context error when that
// ended, or else into one matching ErrUnavailable.
func (b *redisRoom) fail(ctx context.Context, op string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		// The connection's deadline, set from ctx's, went off before
		// ctx's own timer.
		return context.DeadlineExceeded
	}
	return unavailable(op, err)
}

func (b *redisRoom) lost(ctx context.Context, n int64) {
	b.r.tel.lost(ctx, reasonExpired, int(n))
}

// eta is the same estimate as the local room's.
func (b *redisRoom) eta(pos, headUS, outflowMicro int64) time.Duration {
	head := time.Duration(min(headUS, maxETA.Microseconds())) * time.Microsecond
	return min(head+etaFor(int(pos-1), float64(outflowMicro)/1e6), maxETA)
}

// admitIn is when the ticket with ahead tickets before it is due, if none
// of them leaves and no active limit holds it back, capped at the longest
// sleep of the poller: beyond that the poller looks again anyway.
func (b *redisRoom) admitIn(headUS, ahead int64) time.Duration {
	if headUS >= b.maxSleep.Microseconds() || ahead > int64(b.maxSleep/b.interval) {
		return b.maxSleep
	}
	return min(time.Duration(headUS)*time.Microsecond+time.Duration(ahead)*b.interval, b.maxSleep)
}

func (b *redisRoom) join(ctx context.Context, held bool) (Ticket, any, error) {
	cfg := &b.r.cfg
	// A crowd at a full room is refused here, without a round trip,
	// for as long as the last refusal must still hold.
	if mono := int64(time.Since(b.epoch)); mono < b.fullUntil.Load() {
		return Ticket{}, nil, ErrFull
	} else if cfg.rejectLong && mono < b.longUntil.Load() {
		return Ticket{}, nil, ErrWaitTooLong
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	suffix := hex.EncodeToString(rnd[:])
	args := append(slices.Clip(b.joinArg), boolArg(held), suffix)
	v, err := roomJoin.Run(ctx, b.client, b.keys, args...).Int64Slice()
	if err == nil && len(v) != 7 {
		err = fmt.Errorf("queue: join script replied %d values", len(v))
	}
	if err != nil {
		if replyLost(err) {
			// The script may have run: take back the ticket it may
			// have added, or it would hold a place (and, admitted, an
			// active slot) until it expires. In the background, so a
			// stalled Redis does not hold the caller past its deadline.
			b.abandonLater(ctx, suffix)
		}
		return Ticket{}, nil, b.fail(ctx, "join", err)
	}
	b.lost(ctx, v[5])
	switch v[0] {
	case -1:
		// The line cannot take another caller before the rate has
		// admitted the surplus, unless someone leaves.
		b.refuseFor(&b.fullUntil, time.Duration(v[2]-int64(cfg.maxLength)+1)*b.interval)
		return Ticket{}, nil, ErrFull
	case -2:
		// Nor can the estimate fall faster than time passes.
		b.refuseFor(&b.longUntil, time.Duration(v[3])*time.Microsecond)
		return Ticket{}, nil, ErrWaitTooLong
	}
	now := time.Now()
	seq := uint64(v[1])
	t := Ticket{ID: strconv.FormatUint(seq, 10) + "-" + suffix}
	in := v[0] == 0
	if in {
		t.Position = int(v[2])
		t.ETA = b.eta(v[2], v[3], v[4])
		t.PollAfter = cfg.pollAfter(t.ETA)
	} else {
		t.Admitted = true
		t.PollAfter = cfg.pollMin
	}
	if !held {
		if t.Admitted {
			// Admitted at once: the client sees it in this answer, so
			// it is claimed now, with its token.
			t, err := b.status(ctx, t.ID)
			return t, nil, err
		}
		t.ExpiresAt = now.Add(cfg.ticketTTL)
		return t, nil, nil
	}
	w := &redisWaiter{id: t.ID, seq: seq, ch: make(chan struct{})}
	due := b.maxSleep // when blocked, only a round can tell
	if v[6] == 0 {
		due = b.admitIn(v[3], v[2]-1)
	}
	if !b.add(w, in, now.Add(due)) {
		b.giveBack(ctx, t.ID)
		return Ticket{}, nil, ErrClosed
	}
	return t, w, nil
}

// add registers a Wait caller's ticket with the poller, starting it if it
// is not running. It reports false if the room closed meanwhile.
func (b *redisRoom) add(w *redisWaiter, inLine bool, at time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	if inLine {
		i, _ := slices.BinarySearchFunc(b.waiters, w.seq, bySeq)
		b.waiters = slices.Insert(b.waiters, i, w)
		b.hintAt(at)
	} else {
		w.state = waiterAdmitted
		close(w.ch)
		b.held[w.id] = w
	}
	if !b.running {
		b.running = true
		b.wg.Add(1)
		go b.poll()
	}
	return true
}

// hintAt tells the poller that a caller may be admitted at at, waking it
// if it sleeps past that. b.mu is held.
func (b *redisRoom) hintAt(at time.Time) {
	if b.hint.IsZero() || at.Before(b.hint) {
		b.hint = at
	}
	if !b.planned.IsZero() && at.Before(b.planned) {
		b.planned = time.Time{}
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
}

func bySeq(w *redisWaiter, seq uint64) int {
	switch {
	case w.seq < seq:
		return -1
	case w.seq > seq:
		return 1
	}
	return 0
}

// removeWaiter takes w off the poller's list. b.mu is held.
func (b *redisRoom) removeWaiter(w *redisWaiter) {
	if i, ok := slices.BinarySearchFunc(b.waiters, w.seq, bySeq); ok && b.waiters[i] == w {
		b.waiters = slices.Delete(b.waiters, i, i+1)
	}
}

func (b *redisRoom) await(ctx context.Context, _ Ticket, h any) (Ticket, any, error) {
	w := h.(*redisWaiter)
	select {
	case <-w.ch:
	case <-ctx.Done():
	}
	b.mu.Lock()
	state := w.state
	switch {
	case state == waiterClosed:
		b.mu.Unlock()
		return Ticket{}, nil, ErrClosed
	case ctx.Err() != nil && state == waiterInLine:
		// ctx ended before this instance saw an admission, but Redis
		// may have made one that the poller has not noticed yet: its
		// slot of the rate cannot be given back, so it is kept, as the
		// local room keeps an admission that came at the same moment.
		// Otherwise the place goes to the next in line.
		b.removeWaiter(w)
		w.state = waiterGone
		b.stopIfIdle()
		b.mu.Unlock()
		if !b.quitSoon(ctx, w.id) {
			return Ticket{}, nil, ctx.Err()
		}
		if !b.add(w, false, time.Time{}) {
			b.giveBack(ctx, w.id)
			return Ticket{}, nil, ErrClosed
		}
		return b.admitted(w)
	case state == waiterGone:
		// The ticket vanished from Redis (a failover to a replica
		// that lacked it, or an outage longer than the ticket TTL):
		// the store failed the caller, who did nothing wrong.
		b.mu.Unlock()
		return Ticket{}, nil, fmt.Errorf("%w: the ticket was lost from Redis: %w", ErrUnavailable, ErrTicketExpired)
	}
	b.mu.Unlock()
	return b.admitted(w)
}

// replyLost reports whether err may have come after Redis ran the
// command: a timeout or a cancellation, rather than a refused connection.
func replyLost(err error) bool {
	var ne net.Error
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.As(err, &ne) && ne.Timeout()
}

// abandon takes out of the room the ticket whose ID ends in suffix, if
// there is one: best effort, with a detached context.
func (b *redisRoom) abandon(ctx context.Context, suffix string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
	defer cancel()
	if res, err := roomAbandon.Run(ctx, b.client, b.keys, b.args(suffix)...).Int64Slice(); err == nil {
		b.lost(ctx, res[1])
	}
}

// background runs f in a goroutine that Close waits for, and reports
// true; once the room is closing it runs nothing and reports false.
func (b *redisRoom) background(f func()) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f()
	}()
	return true
}

// abandonLater runs abandon in the background, or at once if the room is
// closing.
func (b *redisRoom) abandonLater(ctx context.Context, suffix string) {
	if !b.background(func() { b.abandon(ctx, suffix) }) {
		b.abandon(ctx, suffix)
	}
}

// refuseFor makes join refuse at once for d (at most refuseMemory) from
// now, by the clock of b.epoch.
func (b *redisRoom) refuseFor(until *atomic.Int64, d time.Duration) {
	if d <= 0 {
		return
	}
	t := int64(time.Since(b.epoch) + min(d, refuseMemory))
	for {
		old := until.Load()
		if old >= t || until.CompareAndSwap(old, t) {
			return
		}
	}
}

// refuseMemory bounds how long an instance refuses on the strength of one
// answer from Redis.
const refuseMemory = time.Second

// admitted is await's answer for an admitted caller.
func (b *redisRoom) admitted(w *redisWaiter) (Ticket, any, error) {
	return Ticket{ID: w.id, Admitted: true}, w, nil
}

// quit takes a Wait caller's ticket out of the line and reports whether
// it had been admitted instead, in which case the admission stands.
func (b *redisRoom) quit(ctx context.Context, id string) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
	defer cancel()
	res, err := roomQuit.Run(ctx, b.client, b.keys, b.args(id)...).Int64Slice()
	if err != nil {
		// The ticket expires once nobody refreshes it.
		return false
	}
	b.lost(ctx, res[1])
	if res[0] == 0 {
		b.nudge()
	}
	return res[0] == 1
}

// quitGrace is how long past its deadline a Wait caller waits to learn
// whether Redis admitted it meanwhile: the quit script takes well under a
// millisecond on a Redis that answers.
const quitGrace = 100 * time.Millisecond

// quitSoon is quit for a caller whose context has ended: it waits for
// Redis' answer at most quitGrace, so a stalled Redis does not hold the
// caller past its deadline. An answer that comes later is settled in the
// background, which Close waits for: an admission it reports goes back,
// since nobody will use it.
func (b *redisRoom) quitSoon(ctx context.Context, id string) bool {
	answer := make(chan bool) // unbuffered: sent only to a caller still waiting
	late := make(chan struct{})
	if !b.background(func() {
		admitted := b.quit(ctx, id)
		select {
		case answer <- admitted:
		case <-late:
			if admitted {
				b.giveBack(ctx, id)
			}
		}
	}) {
		return b.quit(ctx, id)
	}
	t := time.NewTimer(quitGrace)
	defer t.Stop()
	select {
	case admitted := <-answer:
		return admitted
	case <-t.C:
		close(late)
		return false
	}
}

// stopIfIdle wakes the poller to end if it has nothing left to do, rather
// than let it sleep until its next full round. b.mu is held.
func (b *redisRoom) stopIfIdle() {
	if b.running && len(b.waiters) == 0 && len(b.held) == 0 {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
}

// forget drops a held admission from the poller's care. b.mu is held.
func (b *redisRoom) forget(w *redisWaiter) {
	if b.held[w.id] == w {
		delete(b.held, w.id)
	}
}

// giveBack takes a ticket out of the room for a caller who is no longer
// there to wait for the call: best effort, since the ticket expires anyway
// once nobody refreshes it.
func (b *redisRoom) giveBack(ctx context.Context, ids ...string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
	defer cancel()
	_ = b.end(ctx, "leave", true, true, ids...)
}

func (b *redisRoom) release(id string, h any) {
	if w, ok := h.(*redisWaiter); ok {
		b.mu.Lock()
		b.forget(w)
		w.state = waiterGone
		b.stopIfIdle()
		b.mu.Unlock()
	}
	// Best effort: if Redis cannot be reached the admission is no longer
	// refreshed and lapses within a ticket TTL.
	ctx, cancel := context.WithTimeout(context.Background(), detachedTimeout)
	defer cancel()
	_ = b.end(ctx, "done", false, true, id)
}

// end runs roomLeave for ids, the tickets of Wait callers (held) or of
// Join: anywhere removes tickets in line too, else only admissions end.
func (b *redisRoom) end(ctx context.Context, op string, anywhere, held bool, ids ...string) error {
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), pollChunk)]
		ids = ids[len(chunk):]
		args := b.args(boolArg(anywhere), boolArg(held))
		for _, id := range chunk {
			args = append(args, id)
		}
		n, err := roomLeave.Run(ctx, b.client, b.keys, args...).Int64()
		if err != nil {
			return b.fail(ctx, op, err)
		}
		b.lost(ctx, n)
	}
	b.nudge()
	return nil
}

// nudge makes the poller look at once: a ticket that left or an admission
// that ended may have let one of this instance's callers in, and the
// poller could not foresee it.
func (b *redisRoom) nudge() {
	b.mu.Lock()
	if b.running && len(b.waiters) > 0 {
		b.hintAt(time.Now())
	}
	b.mu.Unlock()
}

func boolArg(v bool) string {
	if v {
		return "1"
	}
	return "0"
}

func (b *redisRoom) status(ctx context.Context, id string) (Ticket, error) {
	cfg := &b.r.cfg
	v, err := roomStatus.Run(ctx, b.client, b.keys, b.args(id)...).Int64Slice()
	if err == nil && len(v) != 9 {
		err = fmt.Errorf("queue: status script replied %d values", len(v))
	}
	if err != nil {
		return Ticket{}, b.fail(ctx, "status", err)
	}
	b.lost(ctx, v[5])
	now := time.Now()
	t := Ticket{ID: id, ExpiresAt: now.Add(time.Duration(v[4]) * time.Microsecond)}
	switch v[0] {
	case 0:
		t.Position = int(v[1])
		t.ETA = b.eta(v[1], v[2], v[3])
		t.PollAfter = cfg.pollAfter(t.ETA)
		return t, nil
	case 1:
		t.Admitted = true
		t.PollAfter = cfg.pollMin
		if cfg.signer != nil {
			// Issued at the claim, by Redis' clock, the token is the
			// same on every poll and from every instance, so one
			// admission redeems once.
			t.Token = cfg.signer.Issue(b.r.name, id, time.UnixMicro(v[8]))
		}
		if v[6] == 1 {
			b.r.tel.admitted(ctx, time.Duration(v[7])*time.Microsecond)
		}
		return t, nil
	}
	return Ticket{}, ErrTicketExpired
}

func (b *redisRoom) leave(ctx context.Context, id string) error {
	return b.end(ctx, "leave", true, false, id)
}

func (b *redisRoom) finish(ctx context.Context, id string) error {
	return b.end(ctx, "done", false, false, id)
}

func (b *redisRoom) stats(ctx context.Context) (RoomStats, error) {
	v, err := roomStats.Run(ctx, b.client, b.keys, b.common...).Int64Slice()
	if err == nil && len(v) != 5 {
		err = fmt.Errorf("queue: stats script replied %d values", len(v))
	}
	if err != nil {
		return RoomStats{}, b.fail(ctx, "stats", err)
	}
	b.lost(ctx, v[4])
	return RoomStats{
		Length:  int(v[0]),
		Active:  int(v[1]),
		Outflow: float64(v[2]) / 1e6,
		ETA:     b.eta(v[0]+1, v[3], v[2]),
	}, nil
}

// close wakes this instance's callers with ErrClosed, stops the poller and
// takes the callers' tickets out of the line, so other instances' callers
// do not wait behind them until they expire. Admissions already returned
// stay until Done, or lapse within a ticket TTL.
func (b *redisRoom) close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	ids := make([]string, 0, len(b.waiters))
	for _, w := range b.waiters {
		w.state = waiterClosed
		close(w.ch)
		ids = append(ids, w.id)
	}
	b.waiters = nil
	b.mu.Unlock()
	b.cancel()
	b.sleeper.close()
	b.wg.Wait()
	if len(ids) > 0 {
		b.giveBack(context.Background(), ids...)
	}
	return nil
}

// poll is the poller goroutine. It ends when the instance has no callers
// in line and no held admissions, or on close.
func (b *redisRoom) poll() {
	defer b.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	nextFull := time.Now().Add(b.refreshEvery)
	var due time.Time // the next quick round; zero: none before nextFull
	var backoff time.Duration
	for {
		b.mu.Lock()
		if b.closed || (len(b.waiters) == 0 && len(b.held) == 0) {
			b.running = false
			b.mu.Unlock()
			return
		}
		at := nextFull
		if !due.IsZero() && due.Before(at) {
			at = due
		}
		if !b.hint.IsZero() && b.hint.Before(at) {
			at = b.hint
		}
		d := time.Until(at)
		if d > 0 {
			b.planned = at
		}
		b.mu.Unlock()
		if d > 0 {
			// As in the local room: the timer fires early and the
			// rest is slept precisely, for evenly spaced admissions
			// at high rates.
			coarse := d
			if b.sleeper != nil {
				coarse -= time.Duration(preciseLead)
			}
			if coarse > 0 {
				timer.Reset(coarse)
				select {
				case <-b.stop.Done():
					return
				case <-b.wake:
					continue
				case <-timer.C:
				}
			}
			if b.sleeper != nil {
				if rest := time.Until(at); rest > 0 {
					b.sleeper.sleep(rest)
				}
			}
		}
		start := time.Now()
		full := !start.Before(nextFull)
		next, err := b.round(full)
		if err != nil {
			if b.stop.Err() != nil {
				return
			}
			// Callers keep waiting until their own deadline.
			backoff = min(max(2*backoff, 10*time.Millisecond), pollMaxBackoff)
			due = time.Now().Add(backoff)
			continue
		}
		backoff = 0
		if full {
			nextFull = start.Add(b.refreshEvery)
		}
		due = next
	}
}

// round runs one poll round, wakes the callers it finds admitted or gone,
// and returns when the next quick round is due (zero: not before the next
// full round).
func (b *redisRoom) round(full bool) (time.Time, error) {
	b.mu.Lock()
	b.hint = time.Time{}
	b.planned = time.Time{}
	var ws []*redisWaiter
	if full {
		// Held admissions first: losing one would let an extra caller
		// past the active limit.
		ws = make([]*redisWaiter, 0, len(b.waiters)+len(b.held))
		for _, w := range b.held {
			ws = append(ws, w)
		}
		ws = append(ws, b.waiters...)
	} else {
		ws = slices.Clone(b.waiters[:min(len(b.waiters), pollBatch)])
	}
	b.mu.Unlock()

	var next time.Time
	found := false // next is set from a caller still in line
	for len(ws) > 0 {
		chunk := ws[:min(len(ws), pollChunk)]
		ws = ws[len(chunk):]
		args := append(append(b.pollArgs[:0], b.common...), boolArg(full))
		for _, w := range chunk {
			args = append(args, w.id)
		}
		b.pollArgs = args
		v, err := roomPoll.Run(b.stop, b.client, b.keys, args...).Int64Slice()
		clear(args) // drop the IDs' strings
		if err == nil && len(v) != 4+len(chunk) {
			err = fmt.Errorf("queue: poll script replied %d values for %d tickets", len(v), len(chunk))
		}
		if err != nil {
			return time.Time{}, unavailable("poll", err)
		}
		now := time.Now()
		b.lost(context.Background(), v[1])
		if !found && v[3] >= 0 {
			found = true
			sleep := b.maxSleep
			if v[2] == 0 {
				sleep = max(b.admitIn(v[0], v[3]), pollMinSleep)
			}
			next = now.Add(sleep)
		}
		b.apply(chunk, v[4:])
	}
	if !found {
		b.mu.Lock()
		if len(b.waiters) > 0 {
			// Every caller looked at was admitted or gone; look at the
			// next ones now.
			next = time.Now()
		}
		b.mu.Unlock()
	}
	return next, nil
}

// apply wakes the callers of ws according to the poll's states.
func (b *redisRoom) apply(ws []*redisWaiter, states []int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, w := range ws {
		switch states[i] {
		case 1:
			if w.state == waiterInLine {
				b.removeWaiter(w)
				w.state = waiterAdmitted
				b.held[w.id] = w
				close(w.ch)
			}
		case 2:
			switch w.state {
			case waiterInLine:
				b.removeWaiter(w)
				w.state = waiterGone
				close(w.ch)
			case waiterAdmitted:
				// Lapsed while Redis could not be reached: nothing
				// left to refresh.
				b.forget(w)
			}
		}
	}
}
