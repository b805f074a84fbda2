package breaker

import (
	"context"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/bulwarkgo/bulwark/internal/sharded"
)

// Group is a set of circuit breakers, one per key: a host, an endpoint, a
// merchant. A key's breaker is created from the group's template of
// [Option]s (see [WithBreakerOptions]) the first time the key is used, so
// one failing merchant trips only its own breaker while calls for the
// others go on.
//
// The members are named name+"/"+key: that is what [Breaker.Name] and the
// [StateChange] given to a listener report. Keys are kept out of metrics,
// whose number of time series must stay bounded: every member counts its
// calls and transitions under the group's name, and none has a state gauge
// of its own. A listener (see [WithListener]) sees each key's changes.
//
// Memory is bounded without a background goroutine. Keys are spread by hash
// over shards, each with its own map, lock and share of [WithMaxKeys]. When
// a new key arrives, a few members of its shard are sampled: those that
// have been closed and unused for longer than the idle timeout (see
// [WithIdleTimeout]) are dropped, and if the shard is still full the least
// recently used sampled member is dropped too, a closed one if the sample
// has any. A member last seen open or half-open (or forced open) is never
// dropped for being idle, because a new breaker would forget that its
// dependency is down and let a closed breaker's worth of calls through; it
// goes only when memory demands it. A dropped key starts again with a new, closed breaker; a call
// that holds the old one finishes on it. [Group.StartJanitor] adds an
// optional periodic sweep of idle members.
//
// The zero value is not usable; create a Group with [NewGroup]. A Group is
// safe for concurrent use.
type Group[T any] struct {
	// Read on every call; kept together.
	seed   maphash.Seed
	mask   uint64
	shards []groupShard[T]
	epoch  time.Time // carries a monotonic reading
	touch  int64     // uses closer than this to the recorded one are not recorded

	name    string
	opts    []Option     // the template, as given
	metrics *instruments // shared by every member
	idle    int64        // nanoseconds
}

// Defaults of a [Group].
const (
	// DefaultMaxKeys is the number of keys a Group holds unless
	// [WithMaxKeys] says otherwise.
	DefaultMaxKeys = 10_000

	// DefaultIdleTimeout is how long a closed member must go unused before
	// a Group may drop it, unless [WithIdleTimeout] says otherwise.
	DefaultIdleTimeout = 10 * time.Minute
)

const (
	// groupEvictSample is how many members of a shard an insert looks at.
	// Map iteration starts at a random place, so this is a random sample.
	groupEvictSample = 8
)

// GroupOption configures a [Group].
type GroupOption interface{ applyGroup(*groupConfig) }

type groupConfig struct {
	breakerOpts []Option
	maxKeys     int
	idleTimeout time.Duration
}

type groupOptionFunc func(*groupConfig)

func (f groupOptionFunc) applyGroup(c *groupConfig) { f(c) }

// WithBreakerOptions sets the template every member of a [Group] is created
// from: the options given to [New] for each key. Several uses add up, in
// order. The default is no options: [New]'s defaults.
func WithBreakerOptions(opts ...Option) GroupOption {
	opts = append([]Option(nil), opts...)
	return groupOptionFunc(func(c *groupConfig) { c.breakerOpts = append(c.breakerOpts, opts...) })
}

// WithMaxKeys bounds the number of keys a [Group] holds at once; n must be
// at least 1. The default is [DefaultMaxKeys]. The bound is split evenly
// over the group's shards, so a new key may displace an old one a little
// before the total reaches n.
func WithMaxKeys(n int) GroupOption {
	return groupOptionFunc(func(c *groupConfig) { c.maxKeys = n })
}

// WithIdleTimeout sets how long a closed member of a [Group] must go unused
// before the group may drop it; d must be positive. The default is
// [DefaultIdleTimeout]. Uses are recorded to within a millisecond (or d/64
// if less), so a member may be dropped that much early.
func WithIdleTimeout(d time.Duration) GroupOption {
	return groupOptionFunc(func(c *groupConfig) { c.idleTimeout = d })
}

// ValidateGroupOptions reports whether opts are valid for [NewGroup],
// including the breaker options given with [WithBreakerOptions]. Errors match
// [ErrInvalidConfig] and name the bad option.
func ValidateGroupOptions(opts ...GroupOption) error {
	_, err := groupConfigOf(opts)
	return err
}

func groupConfigOf(opts []GroupOption) (groupConfig, error) {
	c := groupConfig{maxKeys: DefaultMaxKeys, idleTimeout: DefaultIdleTimeout}
	for i, o := range opts {
		if o == nil {
			return c, configError("opts", "must not contain nil, at index", i)
		}
		o.applyGroup(&c)
	}
	if c.maxKeys < 1 {
		return c, configError("WithMaxKeys", "must be at least 1", c.maxKeys)
	}
	if c.idleTimeout <= 0 {
		return c, configError("WithIdleTimeout", "must be positive", c.idleTimeout)
	}
	if err := ValidateOptions(c.breakerOpts...); err != nil {
		return c, fmt.Errorf("WithBreakerOptions: %w", err)
	}
	return c, nil
}

// groupShard is one lock's worth of keys, padded so neighbouring shards'
// locks do not share a cache line.
type groupShard[T any] struct {
	mu  sync.RWMutex
	m   map[string]*member[T]
	cap int
	_   [64 - (unsafe.Sizeof(sync.RWMutex{})+16)%64]byte
}

type member[T any] struct {
	key string
	b   *Breaker[T]
	// lastUse is the last time the key was used, in nanoseconds since the
	// group's epoch. It is written under the shard's read lock, so it is
	// atomic.
	lastUse atomic.Int64
	// tripped is whether the breaker's last state change left it open or
	// half-open. It is kept by a listener rather than asked of the breaker,
	// because asking may move the breaker's state and run listeners, which
	// must not happen under the shard's lock.
	tripped atomic.Bool
}

// NewGroup returns a Group whose members are breakers created by
// New(name+"/"+key, template...), the template being the options given
// with [WithBreakerOptions].
//
// Like [New], NewGroup panics on an empty name or invalid options, with an
// error matching [ErrInvalidConfig] that names the field;
// [ValidateGroupOptions] checks options without panicking.
func NewGroup[T any](name string, opts ...GroupOption) *Group[T] {
	if name == "" {
		// The name stands in for the keys in metrics.
		panic(configError("name", "must not be empty", nil))
	}
	c, err := groupConfigOf(opts)
	if err != nil {
		panic(err)
	}
	// One set of instruments, under the group's name, serves every member:
	// a key in a metric attribute would add time series for every key, and
	// building instruments per member would double the cost of a new key.
	bc, err := newConfig(c.breakerOpts)
	if err != nil {
		panic(err)
	}
	bc.noStateGauge = true
	metrics, _ := newInstruments(&bc, name, nil)

	n := sharded.Count(c.maxKeys)
	g := &Group[T]{
		seed:    maphash.MakeSeed(),
		mask:    uint64(n - 1),
		shards:  make([]groupShard[T], n),
		epoch:   time.Now(),
		touch:   max(1, min(int64(time.Millisecond), int64(c.idleTimeout)/64)),
		name:    name,
		opts:    c.breakerOpts,
		metrics: metrics,
		idle:    int64(c.idleTimeout),
	}
	for i := range g.shards {
		s := &g.shards[i]
		s.cap = sharded.Capacity(c.maxKeys, n, i)
		s.m = make(map[string]*member[T])
	}
	return g
}

// Name returns the group's name, the prefix of its members' names.
func (g *Group[T]) Name() string { return g.name }

// Execute calls fn through key's breaker, creating the breaker if the key
// is new, as [Breaker.Execute] does. If ctx is already done it returns
// ctx.Err() without creating anything.
func (g *Group[T]) Execute(ctx context.Context, key string, fn func(context.Context) (T, error)) (T, error) {
	if err := ctx.Err(); err != nil {
		var zero T
		return zero, err
	}
	return g.use(key).b.Execute(ctx, fn)
}

// Get returns key's breaker, creating it if the key is new, and counts as a
// use of the key: to read its [Breaker.Counts], or to ForceOpen, Disable or
// Reset it by hand. A forced-open breaker is kept like an open one; a
// disabled one is closed, and goes when idle like any other. The breaker
// stays usable after the group drops the key, but is then no longer the
// key's: a later Get returns a new one.
func (g *Group[T]) Get(key string) *Breaker[T] {
	return g.use(key).b
}

// State returns the state of key's breaker. An unknown key is
// [StateClosed], as a new breaker would be; State neither creates the key
// nor counts as a use of it.
func (g *Group[T]) State(key string) State {
	s := g.shard(key)
	s.mu.RLock()
	m := s.m[key]
	s.mu.RUnlock()
	if m == nil {
		return StateClosed
	}
	return m.b.State()
}

// Len reports how many keys the group holds.
func (g *Group[T]) Len() int {
	n := 0
	for i := range g.shards {
		s := &g.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}

// Sweep drops every closed member that has been unused for longer than the
// idle timeout. Inserts already drop idle members as they go; Sweep returns
// the memory of keys that went quiet when no new keys arrive.
func (g *Group[T]) Sweep() {
	at := g.now()
	for i := range g.shards {
		s := &g.shards[i]
		s.mu.Lock()
		for k, m := range s.m {
			if g.idleAt(m, at) {
				delete(s.m, k)
			}
		}
		s.mu.Unlock()
	}
}

// StartJanitor starts a goroutine that calls [Group.Sweep] every interval.
// The returned stop function stops it and returns once it has exited; it
// may be called more than once. StartJanitor panics if every is not
// positive, as [time.NewTicker] does.
func (g *Group[T]) StartJanitor(every time.Duration) (stop func()) {
	return sharded.StartJanitor("breaker: Group", every, g.Sweep)
}

// now is the time in nanoseconds since the group's epoch. time.Since on a
// time with a monotonic reading reads only the monotonic clock.
func (g *Group[T]) now() int64 { return int64(time.Since(g.epoch)) }

func (g *Group[T]) shard(key string) *groupShard[T] {
	return &g.shards[maphash.String(g.seed, key)&g.mask]
}

// idleAt reports whether m may be dropped for idleness at instant at.
func (g *Group[T]) idleAt(m *member[T], at int64) bool {
	return at-m.lastUse.Load() > g.idle && !m.tripped.Load()
}

// use returns key's member, creating it if need be, and records the use.
func (g *Group[T]) use(key string) *member[T] {
	at := g.now()
	s := g.shard(key)
	s.mu.RLock()
	m := s.m[key]
	s.mu.RUnlock()
	if m == nil {
		return g.insert(s, key, at)
	}
	// Writing the time of every use would make parallel callers of one key
	// fight over the member's cache line; a use within touch of the
	// recorded one is not recorded.
	if at-m.lastUse.Load() >= g.touch {
		m.lastUse.Store(at)
	}
	return m
}

// insert adds key to s, first dropping members from a sample of s.
func (g *Group[T]) insert(s *groupShard[T], key string, at int64) *member[T] {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.m[key]; m != nil {
		return m
	}
	// The victim, should the shard be full: the least recently used of
	// the sample, closed members first.
	var (
		victim        *member[T]
		victimLast    int64
		victimTripped bool
		sampled       int
	)
	for k, m := range s.m {
		last, tripped := m.lastUse.Load(), m.tripped.Load()
		switch {
		case at-last > g.idle && !tripped:
			delete(s.m, k)
		case victim == nil,
			victimTripped && !tripped,
			victimTripped == tripped && last < victimLast:
			victim, victimLast, victimTripped = m, last, tripped
		}
		if sampled++; sampled == groupEvictSample {
			break
		}
	}
	if len(s.m) >= s.cap && victim != nil {
		delete(s.m, victim.key)
	}

	// Clone so the map does not pin a larger string the key was cut from.
	m := &member[T]{key: strings.Clone(key)}
	m.lastUse.Store(at)
	opts := make([]Option, len(g.opts), len(g.opts)+2)
	copy(opts, g.opts)
	opts = append(opts, asMemberOf(g.metrics),
		WithListener(func(c StateChange) { m.tripped.Store(c.To != StateClosed) }))
	m.b = New[T](g.name+"/"+m.key, opts...)
	s.m[m.key] = m
	return m
}

// asMemberOf makes a breaker report through its group's instruments,
// under the group's name, without a state gauge of its own.
func asMemberOf(metrics *instruments) Option {
	return optionFunc(func(c *config) { c.shared = metrics })
}
