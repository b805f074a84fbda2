package limiter

import (
	"context"
	"hash/maphash"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/bulwarkgo/bulwark/internal/sharded"
)

// Local is an in-process rate limiter with one token bucket per key.
//
// A bucket holds up to Limit.Burst tokens, gains one every Limit.Interval,
// and a request for n tokens is allowed when n tokens are there. Each bucket
// is kept as GCRA (the generic cell rate algorithm, a token bucket written
// as one number): the theoretical arrival time of the next request, in
// whole nanoseconds, updated by compare-and-swap. So a decision takes no
// lock, does no floating-point arithmetic, and reports Remaining,
// RetryAfter and ResetAfter exactly; it is the same arithmetic as [Redis]
// uses, so a limit decides the same in one process as across a fleet.
// Keys are spread by hash over shards, each with its own map and lock; a
// known key is decided with the shard's read lock, or with none when it sits
// in a small cache of entries read by one atomic load, and never allocates.
//
// Why not golang.org/x/time/rate: its Limiter answers either "allowed" or
// "how many tokens", each under its mutex with float time arithmetic, so an
// exact Decision costs two locked calls: about 1.75× the cost of a bare
// rate.Limiter.Allow, where this costs less than one (see the benchmarks
// module), in a fifth of the memory per key.
//
// Memory is bounded without a background goroutine: when a new key arrives,
// a few entries of its shard are sampled, those unused for longer than the
// idle timeout (see [WithIdleTimeout]; by default the time an empty bucket
// takes to fill, so forgetting them changes no decision) are dropped, and if
// the shard is still full (see [WithMaxKeys]) the least recently used entry
// of the sample is dropped too. A forgotten key starts again with a full
// bucket; a call deciding a key at the moment it is forgotten may still use
// the old bucket. [Local.StartJanitor] adds an optional periodic sweep.
//
// The zero value is not usable; create a Local with [NewLocal]. A Local is
// safe for concurrent use.
type Local struct {
	// Read on every decision; kept together.
	seed   maphash.Seed
	mask   uint64
	shards []localShard
	epoch  time.Time // carries a monotonic reading; see AllowN
	limit  Limit
	// interval is the time per token and tolerance the time per burst, in
	// nanoseconds.
	interval  int64
	tolerance int64

	// hot caches recently used entries by hash, so a hit is found with one
	// atomic load: no shard lock, whose reader count parallel callers of
	// one key would otherwise write on every call, and no map lookup.
	hot [hotSlots]atomic.Pointer[localEntry]

	idle    int64 // nanoseconds
	touch   int64 // uses closer than this to the recorded one are not recorded
	metrics decisionCounter
}

var _ Limiter = (*Local)(nil)

// localConfig is filled by LocalOptions.
type localConfig struct {
	commonConfig
	maxKeys     int
	idleTimeout time.Duration
}

// Defaults and tuning of Local.
const (
	// DefaultMaxKeys is the number of keys a Local holds unless
	// [WithMaxKeys] says otherwise.
	DefaultMaxKeys = 100_000

	// evictSample is how many entries of a shard an insert looks at. Map
	// iteration starts at a random place, so this is a random sample.
	evictSample = 8

	// hotSlots is the size of the cache of recently used entries.
	hotBits  = 8
	hotSlots = 1 << hotBits
)

// WithMaxKeys bounds the number of keys a [Local] holds at once; n must be
// at least 1. The default is [DefaultMaxKeys]. The bound is split evenly
// over the Local's shards, so a new key may displace an old one a little
// before the total reaches n.
func WithMaxKeys(n int) LocalOption {
	return localOptionFunc(func(c *localConfig) { c.maxKeys = n })
}

// WithIdleTimeout sets how long a key must go unused before a [Local] may
// forget it; d must be positive. Uses are recorded to within a millisecond
// (or d/64 if less), so a key may be forgotten that much early. The default is Burst×Interval, the time an
// empty bucket takes to fill: a key idle that long has a full bucket, so
// forgetting it changes nothing. A shorter timeout saves memory but lets a
// partly drained key start over with a full bucket.
func WithIdleTimeout(d time.Duration) LocalOption {
	return localOptionFunc(func(c *localConfig) { c.idleTimeout = d })
}

// localShard is one lock's worth of keys, padded so neighbouring shards'
// locks do not share a cache line.
type localShard struct {
	mu  sync.RWMutex
	m   map[string]*localEntry
	cap int
	_   [64 - (unsafe.Sizeof(sync.RWMutex{})+16)%64]byte
}

type localEntry struct {
	key string
	// dead is set when the entry leaves its shard's map, so the hot cache
	// stops returning it.
	dead atomic.Bool
	// tat is the bucket: the theoretical arrival time of the next request
	// in nanoseconds since the Local's epoch. The bucket is full when tat
	// is at or before now, and otherwise holds
	// (tolerance - (tat - now)) / interval tokens.
	tat atomic.Int64
	// lastUse is the last time of a request for tokens, in nanoseconds
	// since the Local's epoch. It is written without the shard's write
	// lock, so it is atomic.
	lastUse atomic.Int64
}

// NewLocal returns a Local that applies limit to each key.
//
// Errors match [ErrInvalidConfig] and name the bad field or option.
func NewLocal(limit Limit, opts ...LocalOption) (*Local, error) {
	if err := limit.Validate(); err != nil {
		return nil, err
	}
	interval := int64(limit.Interval())
	// Room for instants and sums of durations: buckets lasting over 70
	// years are refused.
	if int64(limit.Burst) > math.MaxInt64/4/interval {
		return nil, configError("Limit.Burst", "is too large: a full bucket would last centuries", limit.Burst)
	}
	c := localConfig{
		maxKeys:     DefaultMaxKeys,
		idleTimeout: time.Duration(interval * int64(limit.Burst)),
	}
	for i, o := range opts {
		if o == nil {
			return nil, configError("opts", "must not contain nil, at index", i)
		}
		o.applyLocal(&c)
	}
	if c.maxKeys < 1 {
		return nil, configError("WithMaxKeys", "must be at least 1", c.maxKeys)
	}
	if c.idleTimeout <= 0 {
		return nil, configError("WithIdleTimeout", "must be positive", c.idleTimeout)
	}

	n := sharded.Count(c.maxKeys)
	l := &Local{
		seed:      maphash.MakeSeed(),
		mask:      uint64(n - 1),
		shards:    make([]localShard, n),
		epoch:     time.Now(),
		limit:     limit,
		interval:  interval,
		tolerance: interval * int64(limit.Burst),
		idle:      int64(c.idleTimeout),
		touch:     max(1, min(int64(time.Millisecond), int64(c.idleTimeout)/64)),
		metrics:   newDecisionCounter(c.meter(), c.baseAttrs("local")),
	}
	for i := range l.shards {
		s := &l.shards[i]
		s.cap = sharded.Capacity(c.maxKeys, n, i)
		s.m = make(map[string]*localEntry)
	}
	return l, nil
}

// Allow is AllowN(ctx, key, 1).
func (l *Local) Allow(ctx context.Context, key string) (Decision, error) {
	return l.AllowN(ctx, key, 1)
}

// AllowN takes n tokens from key's bucket if they are all there, and reports
// the outcome. n = 0 reports the bucket's state without taking anything,
// creating the key or counting as a use of it. It returns ctx.Err() without
// taking tokens if ctx is done, [ErrInvalidN] for a negative n and
// [ErrBurstExceeded] for an n above the burst.
func (l *Local) AllowN(ctx context.Context, key string, n int) (Decision, error) {
	if err := ctx.Err(); err != nil {
		l.metrics.record(ctx, Decision{}, err, false)
		return Decision{Limit: l.limit}, err
	}
	// time.Since on a time with a monotonic reading reads only the
	// monotonic clock, half the cost of time.Now.
	d, err := l.decide(int64(time.Since(l.epoch)), key, n)
	l.metrics.record(ctx, d, err, false)
	return d, err
}

// AllowNAt is AllowN at instant t, for tests and simulations: it takes no
// context and records no metrics. Eviction also goes by t, so a Local
// should be driven either by AllowNAt or by the clock (AllowN, Sweep), not
// both, unless the instants come from time.Now. An instant earlier than one
// already used for key adds no tokens.
func (l *Local) AllowNAt(t time.Time, key string, n int) (Decision, error) {
	return l.decide(int64(t.Sub(l.epoch)), key, n)
}

// Reset forgets key: its next request finds a full bucket. It returns
// ctx.Err() without doing anything if ctx is done.
func (l *Local) Reset(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s := l.shard(key)
	s.mu.Lock()
	if e := s.m[key]; e != nil {
		s.remove(key, e)
	}
	s.mu.Unlock()
	return nil
}

// Len reports how many keys the Local holds.
func (l *Local) Len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}

// Sweep forgets every key that has been idle for longer than the idle
// timeout. Inserts already evict as they go; Sweep returns the memory of
// keys that went quiet when no new keys arrive.
func (l *Local) Sweep() {
	l.sweepAt(int64(time.Since(l.epoch)))
}

func (l *Local) sweepAt(at int64) {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for k, e := range s.m {
			if at-e.lastUse.Load() > l.idle {
				s.remove(k, e)
			}
		}
		s.mu.Unlock()
	}
}

// StartJanitor starts a goroutine that calls [Local.Sweep] every interval.
// The returned stop function stops it and returns once it has exited; it
// may be called more than once. StartJanitor panics if every is not
// positive, as [time.NewTicker] does.
func (l *Local) StartJanitor(every time.Duration) (stop func()) {
	return sharded.StartJanitor("limiter: Local", every, l.Sweep)
}

func (l *Local) shard(key string) *localShard {
	return &l.shards[maphash.String(l.seed, key)&l.mask]
}

// decide is the core of AllowN and AllowNAt: the decision for n tokens of
// key at instant at, in nanoseconds since the epoch.
func (l *Local) decide(at int64, key string, n int) (Decision, error) {
	if uint(n) > uint(l.limit.Burst) {
		return Decision{Limit: l.limit}, checkN(n, l.limit)
	}
	h := maphash.String(l.seed, key)
	slot := &l.hot[h>>(64-hotBits)] // the high bits; shards use the low ones
	e := slot.Load()
	if e == nil || e.key != key || e.dead.Load() {
		s := &l.shards[h&l.mask]
		s.mu.RLock()
		e = s.m[key]
		s.mu.RUnlock()
		if e == nil {
			if n == 0 {
				// An unknown key has a full bucket; a peek need not store it.
				return Decision{Allowed: true, Limit: l.limit, Remaining: l.limit.Burst}, nil
			}
			e = l.insert(s, key, at)
		}
		// Fill only a free slot: replacing on every miss would write the
		// slot on most calls of a many-key workload, and the cache line
		// holding it would bounce between cores.
		if cur := slot.Load(); cur == nil || cur.dead.Load() {
			slot.CompareAndSwap(cur, e)
		}
	}
	// Writing the time of every use would make parallel callers of one key
	// fight over the entry's cache line (and fail each other's CAS below);
	// a use within touch of the recorded one is not recorded.
	if n > 0 && at-e.lastUse.Load() >= l.touch {
		e.lastUse.Store(at)
	}
	cost := int64(n) * l.interval
	for {
		old := e.tat.Load()
		tat := max(old, at)
		ahead := tat + cost - at // how far the bucket would be from full
		if ahead > l.tolerance {
			return Decision{
				Limit:      l.limit,
				Remaining:  int((l.tolerance - (tat - at)) / l.interval),
				RetryAfter: time.Duration(ahead - l.tolerance),
				ResetAfter: time.Duration(tat - at),
			}, nil
		}
		if n == 0 || e.tat.CompareAndSwap(old, tat+cost) {
			return Decision{
				Allowed:    true,
				Limit:      l.limit,
				Remaining:  int((l.tolerance - ahead) / l.interval),
				ResetAfter: time.Duration(ahead),
			}, nil
		}
	}
}

// remove takes e, stored under k, out of s; s.mu must be held for writing.
func (s *localShard) remove(k string, e *localEntry) {
	e.dead.Store(true)
	delete(s.m, k)
}

// insert adds key to s, first evicting from a sample of s's entries.
func (l *Local) insert(s *localShard, key string, at int64) *localEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.m[key]; e != nil {
		return e
	}
	var (
		victim  *localEntry
		oldest  int64
		sampled int
	)
	for k, e := range s.m {
		last := e.lastUse.Load()
		if at-last > l.idle {
			s.remove(k, e)
		} else if victim == nil || last < oldest {
			victim, oldest = e, last
		}
		if sampled++; sampled == evictSample {
			break
		}
	}
	if len(s.m) >= s.cap && victim != nil {
		s.remove(victim.key, victim)
	}

	// Clone so the map does not pin a larger string the key was cut from.
	e := &localEntry{key: strings.Clone(key)}
	e.tat.Store(math.MinInt64 / 2) // a full bucket
	e.lastUse.Store(at)
	s.m[e.key] = e
	return e
}
