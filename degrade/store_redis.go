package degrade

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// The Redis store keeps one switchboard group under three names sharing the
// hash tag {name}, so the update script's keys are in one Cluster slot:
//
//	<prefix>{<name>}:state    a hash: "version", "shed" and "feature:<feature>"
//	<prefix>{<name>}:audit    a list of JSON audit entries, newest first
//	<prefix>{<name>}:changes  the pub/sub channel; each message is a new version
//
// The state is a hash of small JSON documents rather than one document so
// that an operator can read a feature with HGET, a change rewrites only the
// fields it touches, and a malformed field names its feature. The version
// field makes the hash as atomic as one document: every write is a script
// that first checks it.
//
// A version is the Redis time of the change in microseconds, or one more
// than the previous version if that is greater. So versions grow with every
// change even across a Redis that lost its data (restarted without
// persistence): a switchboard that kept the state it knew from before
// ignores the empty store as older, and takes the first change made after
// the loss as newer.

// redisUpdate writes a change if the state is still at the version it was
// read at. KEYS: state, audit. ARGV: expected version ("0" when none),
// channel, audit entry, audit size, the number n of fields to set, n
// field-value pairs, then the fields to delete. It returns 0 on a version
// mismatch and otherwise the new version, as a string.
var redisUpdate = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], 'version') or '0'
if cur ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local v = string.format('%.0f', math.max(tonumber(cur) + 1, t[1] * 1000000 + t[2]))
local n = tonumber(ARGV[5])
for i = 6, 5 + 2 * n, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
for i = 6 + 2 * n, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
redis.call('HSET', KEYS[1], 'version', v)
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
redis.call('PUBLISH', ARGV[2], v)
return v
`)

// Hash fields of the state.
const (
	fieldVersion = "version"
	fieldShed    = "shed"
	fieldFeature = "feature:" // + the feature's name
)

const (
	// redisUpdateAttempts bounds how often Update starts again after
	// losing a race to another change before it returns ErrConflict.
	redisUpdateAttempts = 20
	// redisPingEvery is how long the subscription may stay quiet before
	// it is checked with a PING; a PING unanswered for as long again means
	// the connection is dead even if TCP has not noticed, and it is
	// replaced.
	redisPingEvery = 5 * time.Second
	// maxResubscribeDelay caps the wait between attempts to subscribe
	// again while Redis is down, so that a switchboard hears changes
	// again within half a second of Redis' return.
	maxResubscribeDelay = 500 * time.Millisecond
)

// RedisStoreOption configures [NewRedisStore].
type RedisStoreOption interface{ applyRedisStore(*redisStoreConfig) }

type redisStoreOptionFunc func(*redisStoreConfig)

func (f redisStoreOptionFunc) applyRedisStore(c *redisStoreConfig) { f(c) }

type redisStoreConfig struct {
	name      string
	prefix    string
	auditSize int
}

// WithRedisName sets the name of the group of switchboards that share
// state: every instance of a service uses the same name, and services
// sharing a Redis use different names. The default is "default". It must
// not be empty or contain '{' or '}'.
func WithRedisName(name string) RedisStoreOption {
	return redisStoreOptionFunc(func(c *redisStoreConfig) { c.name = name })
}

// WithRedisPrefix sets the prefix of the store's keys and channel. The
// default is "bulwark:degrade:". It must not contain '{' or '}'.
func WithRedisPrefix(prefix string) RedisStoreOption {
	return redisStoreOptionFunc(func(c *redisStoreConfig) { c.prefix = prefix })
}

// WithRedisAuditSize sets how many entries of the audit trail are kept, the
// newest. The default is 1000; it must be between 1 and 1,000,000.
func WithRedisAuditSize(n int) RedisStoreOption {
	return redisStoreOptionFunc(func(c *redisStoreConfig) { c.auditSize = n })
}

// redisStore is the Redis implementation of Store.
type redisStore struct {
	client    redis.UniversalClient
	keys      []string // state, audit
	channel   string
	auditSize string
	pingEvery time.Duration

	mu       sync.Mutex
	watchers map[int]func()
	nextID   int
	sub      *redisSub // nil while nobody watches
}

// NewRedisStore returns a [Store] kept in the Redis behind client (a single
// node, Sentinel or Cluster client), shared by every switchboard using the
// same Redis, prefix and name. Its errors match [ErrInvalidConfig] and name
// the bad argument.
//
// It uses the hash <prefix>{<name>}:state (fields "version", "shed" and
// "feature:<feature>", each a JSON document but the version), the list
// <prefix>{<name>}:audit and the channel <prefix>{<name>}:changes.
//
// Update reads the state, calls fn without holding anything, and writes
// the result with a script that first checks that the version is still the
// one read; if another change came in meanwhile, it starts again from that
// change (up to 20 times, then [ErrConflict]). The same script appends the
// audit entry, trims the trail and publishes the new version.
//
// Watch shares one subscription, in one goroutine, among all its callers;
// it starts with the first Watch and ends when the last one stops. It calls
// back on every change published and on every (re)subscription, because
// messages sent while the connection was broken are lost. A switchboard
// also re-reads the store every [WithRefresh] in case a notification went
// missing, and keeps the last state it read while Redis cannot be reached.
//
// Errors of a Redis call match [ErrUnavailable] and wrap the cause; a call
// whose context ended with its deadline also matches
// [context.DeadlineExceeded], and one whose caller cancelled it matches only
// [context.Canceled]. State that is not what this package wrote is an error
// naming the key and field.
//
// Redis holds the only copy of the state: without persistence, a restart
// of Redis forgets the operators' settings. Switchboards then keep what
// they knew until the next change is made.
func NewRedisStore(client redis.UniversalClient, opts ...RedisStoreOption) (Store, error) {
	if client == nil {
		return nil, configError("client", "must not be nil", nil)
	}
	c := redisStoreConfig{name: "default", prefix: "bulwark:degrade:", auditSize: defaultAuditSize}
	for i, o := range opts {
		if o == nil {
			return nil, configError("opts", "must not contain nil, at index", i)
		}
		o.applyRedisStore(&c)
	}
	switch {
	case c.name == "":
		return nil, configError("WithRedisName", "must not be empty", `""`)
	case strings.ContainsAny(c.name, "{}"):
		return nil, configError("WithRedisName", "must not contain '{' or '}'", strconv.Quote(c.name))
	case strings.ContainsAny(c.prefix, "{}"):
		return nil, configError("WithRedisPrefix", "must not contain '{' or '}'", strconv.Quote(c.prefix))
	case c.auditSize < 1 || c.auditSize > 1_000_000:
		return nil, configError("WithRedisAuditSize", "must be between 1 and 1,000,000", c.auditSize)
	}
	base := c.prefix + "{" + c.name + "}:"
	return &redisStore{
		client:    client,
		keys:      []string{base + "state", base + "audit"},
		channel:   base + "changes",
		auditSize: strconv.Itoa(c.auditSize),
		pingEvery: redisPingEvery,
		watchers:  make(map[int]func()),
	}, nil
}

// fail turns the error of a Redis call into the error a caller sees.
func (s *redisStore) fail(ctx context.Context, op string, err error) error {
	ctxErr := ctx.Err()
	if d, ok := ctx.Deadline(); ok && ctxErr == nil && !time.Now().Before(d) {
		// The connection's deadline, set from the context's, went off
		// before the context's own timer.
		ctxErr = context.DeadlineExceeded
	}
	switch {
	case ctxErr == nil:
	case errors.Is(ctxErr, context.Canceled):
		// The caller gave up: that says nothing about Redis.
		return fmt.Errorf("degrade: redis store: %s: %w", op, ctxErr)
	case !errors.Is(err, ctxErr):
		err = fmt.Errorf("%w: %w", ctxErr, err)
	}
	return unavailable(op, err)
}

// malformed reports state in Redis that this package cannot read.
func (s *redisStore) malformed(key, field string, err error) error {
	return fmt.Errorf("degrade: redis store: malformed %s field %q: %w", key, field, err)
}

func (s *redisStore) Load(ctx context.Context) (Stored, error) {
	if err := ctx.Err(); err != nil {
		return Stored{}, err
	}
	_, st, err := s.read(ctx)
	return st, err
}

// read returns the state hash as stored, and decoded.
func (s *redisStore) read(ctx context.Context) (map[string]string, Stored, error) {
	raw, err := s.client.HGetAll(ctx, s.keys[0]).Result()
	if err != nil {
		return nil, Stored{}, s.fail(ctx, "read "+s.keys[0], err)
	}
	st, err := s.decode(raw)
	return raw, st, err
}

// redisShed is the "shed" field.
type redisShed struct {
	Level  Level     `json:"level"`
	By     string    `json:"by,omitempty"`
	At     time.Time `json:"at,omitzero"`
	Reason string    `json:"reason,omitempty"`
}

func (s *redisStore) decode(raw map[string]string) (Stored, error) {
	var st Stored
	if len(raw) == 0 {
		return st, nil // never written
	}
	v, ok := raw[fieldVersion]
	if !ok {
		return Stored{}, s.malformed(s.keys[0], fieldVersion, errors.New("missing"))
	}
	var err error
	if st.Version, err = strconv.ParseUint(v, 10, 64); err != nil {
		return Stored{}, s.malformed(s.keys[0], fieldVersion, err)
	}
	for field, val := range raw {
		switch name, feature := strings.CutPrefix(field, fieldFeature); {
		case field == fieldVersion:
		case field == fieldShed:
			var sh redisShed
			if err := json.Unmarshal([]byte(val), &sh); err != nil {
				return Stored{}, s.malformed(s.keys[0], field, err)
			}
			if sh.Level != 0 && sh.Level != Optional && sh.Level != Important {
				return Stored{}, s.malformed(s.keys[0], field, configError("level", "must be none, optional or important", sh.Level))
			}
			st.Shed = sh.Level
			if sh.By != "" || sh.Reason != "" || !sh.At.IsZero() {
				st.ShedBy = &Manual{By: sh.By, At: sh.At, Reason: sh.Reason}
			}
		case feature && name != "":
			var m Manual
			if err := json.Unmarshal([]byte(val), &m); err != nil {
				return Stored{}, s.malformed(s.keys[0], field, err)
			}
			if err := m.State.validate(name); err != nil {
				return Stored{}, s.malformed(s.keys[0], field, err)
			}
			if st.Manual == nil {
				st.Manual = make(map[string]Manual)
			}
			st.Manual[name] = m
		default:
			return Stored{}, s.malformed(s.keys[0], field, errors.New("unknown field"))
		}
	}
	return st, nil
}

func (s *redisStore) Update(ctx context.Context, fn func(Stored) (Stored, AuditEntry, error)) (Stored, error) {
	if err := ctx.Err(); err != nil {
		return Stored{}, err
	}
	for attempt := 1; ; attempt++ {
		raw, cur, err := s.read(ctx)
		if err != nil {
			return Stored{}, err
		}
		next, entry, err := fn(cur)
		if err != nil {
			return Stored{}, err
		}
		args, err := s.updateArgs(cur.Version, raw, next, entry)
		if err != nil {
			return Stored{}, err
		}
		reply, err := redisUpdate.Run(ctx, s.client, s.keys, args...).Result()
		if err != nil {
			return Stored{}, s.fail(ctx, "update "+s.keys[0], err)
		}
		if v, ok := reply.(string); ok {
			if next.Version, err = strconv.ParseUint(v, 10, 64); err != nil {
				return Stored{}, s.fail(ctx, "update "+s.keys[0], fmt.Errorf("script replied %q", v))
			}
			return next, nil
		}
		if attempt == redisUpdateAttempts {
			return Stored{}, fmt.Errorf("%w: %d attempts in a row lost to other changes", ErrConflict, attempt)
		}
		// Lost a race: let the winners finish before reading again.
		wait := time.Duration(rand.Int64N(int64(min(time.Millisecond<<attempt, 32*time.Millisecond))))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return Stored{}, ctx.Err()
		case <-t.C:
		}
	}
}

// updateArgs returns the script's ARGV writing next over the state raw, read
// at version. Only fields that change are written. next is checked first,
// so nothing Load would reject is ever stored.
func (s *redisStore) updateArgs(version uint64, raw map[string]string, next Stored, entry AuditEntry) ([]any, error) {
	audit, err := json.Marshal(entry)
	if err != nil {
		return nil, fmt.Errorf("degrade: redis store: audit entry: %w", err)
	}
	var sets, dels []any
	for name, m := range next.Manual {
		if name == "" {
			return nil, configError("feature name", "must not be empty", `""`)
		}
		if err := m.State.validate(name); err != nil {
			return nil, err
		}
		b, err := json.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("degrade: redis store: %s: %w", name, err)
		}
		if f := fieldFeature + name; raw[f] != string(b) {
			sets = append(sets, f, string(b))
		}
	}
	for f := range raw {
		if name, ok := strings.CutPrefix(f, fieldFeature); ok {
			if _, keep := next.Manual[name]; !keep {
				dels = append(dels, f)
			}
		}
	}
	switch {
	case next.Shed != 0 && next.Shed != Optional && next.Shed != Important:
		return nil, configError("Shed", "must be Optional or Important (core features are never shed)", next.Shed)
	case next.Shed != 0 || next.ShedBy != nil:
		sh := redisShed{Level: next.Shed}
		if next.ShedBy != nil {
			sh.By, sh.At, sh.Reason = next.ShedBy.By, next.ShedBy.At, next.ShedBy.Reason
		}
		b, err := json.Marshal(sh)
		if err != nil {
			return nil, fmt.Errorf("degrade: redis store: shed: %w", err)
		}
		if raw[fieldShed] != string(b) {
			sets = append(sets, fieldShed, string(b))
		}
	default:
		if _, ok := raw[fieldShed]; ok {
			dels = append(dels, fieldShed)
		}
	}
	args := make([]any, 0, 5+len(sets)+len(dels))
	args = append(args, strconv.FormatUint(version, 10), s.channel, string(audit), s.auditSize, len(sets)/2)
	args = append(args, sets...)
	return append(args, dels...), nil
}

func (s *redisStore) Audit(ctx context.Context, n int) ([]AuditEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if n <= 0 {
		return []AuditEntry{}, nil
	}
	raw, err := s.client.LRange(ctx, s.keys[1], 0, int64(n)-1).Result()
	if err != nil {
		return nil, s.fail(ctx, "read "+s.keys[1], err)
	}
	out := make([]AuditEntry, len(raw))
	for i, r := range raw {
		if err := json.Unmarshal([]byte(r), &out[i]); err != nil {
			return nil, fmt.Errorf("degrade: redis store: malformed %s entry %d: %w", s.keys[1], i, err)
		}
	}
	return out, nil
}

// Watch calls changed on every change published on the store's channel
// and every time the subscription is made or made again. The first Watch
// starts the subscription's goroutine; the stop of the last one ends it and
// waits for it, so stop must not be called from changed. A call of changed
// already under way when stop is called may still finish after it.
func (s *redisStore) Watch(changed func()) (stop func()) {
	s.mu.Lock()
	id := s.nextID
	s.nextID++
	s.watchers[id] = changed
	if s.sub == nil {
		s.sub = s.subscribe()
	}
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.watchers, id)
			var last *redisSub
			if len(s.watchers) == 0 {
				last, s.sub = s.sub, nil
			}
			s.mu.Unlock()
			if last != nil {
				last.stop()
			}
		})
	}
}

// notify calls every watcher, outside the lock.
func (s *redisStore) notify() {
	s.mu.Lock()
	ws := make([]func(), 0, len(s.watchers))
	for _, w := range s.watchers {
		ws = append(ws, w)
	}
	s.mu.Unlock()
	for _, w := range ws {
		w()
	}
}

// redisSub is the store's subscription while somebody watches.
type redisSub struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	ps     *redis.PubSub
	closed bool
}

func (s *redisStore) subscribe() *redisSub {
	ctx, cancel := context.WithCancel(context.Background())
	// Without channels Subscribe makes no call: the goroutine subscribes,
	// so Watch never waits for Redis.
	sub := &redisSub{cancel: cancel, done: make(chan struct{}), ps: s.client.Subscribe(ctx)}
	go s.listen(ctx, sub)
	return sub
}

func (sub *redisSub) stop() {
	sub.cancel() // ends a dial under way
	sub.mu.Lock()
	sub.closed = true
	_ = sub.ps.Close() // ends a read under way
	sub.mu.Unlock()
	<-sub.done
}

// renew replaces the subscription's connection by a new one, or returns nil
// once the subscription is stopped.
func (s *redisStore) renew(ctx context.Context, sub *redisSub) *redis.PubSub {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.closed {
		return nil
	}
	_ = sub.ps.Close()
	sub.ps = s.client.Subscribe(ctx)
	return sub.ps
}

// listen receives the store's channel until the subscription is stopped.
// go-redis reconnects and subscribes again by itself after an error; the
// confirmation of each subscription arrives as a *redis.Subscription.
func (s *redisStore) listen(ctx context.Context, sub *redisSub) {
	defer close(sub.done)
	sub.mu.Lock()
	ps := sub.ps
	sub.mu.Unlock()
	// An error here is kept by go-redis, which subscribes again on the
	// next Receive.
	_ = ps.Subscribe(ctx, s.channel)
	var seen uint64 // newest version heard since the last subscription
	pinged := false // a PING is unanswered
	failed := false // the last receive failed
	backoff := 10 * time.Millisecond
	for {
		msg, err := ps.ReceiveTimeout(ctx, s.pingEvery)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				if pinged {
					// Quiet for a whole interval after a PING: the
					// connection is dead though TCP has not said so.
					if ps = s.renew(ctx, sub); ps == nil {
						return
					}
					_ = ps.Subscribe(ctx, s.channel)
					pinged = false
					continue
				}
				// A failed PING reconnects by itself.
				pinged = ps.Ping(ctx) == nil
				continue
			}
			pinged = false
			// go-redis has already dialled again after a broken
			// connection: wait only when that failed too.
			if failed {
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, maxResubscribeDelay)
			}
			failed = true
			continue
		}
		pinged, failed = false, false
		backoff = 10 * time.Millisecond
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				// Changes published while unsubscribed were lost.
				seen = 0
				s.notify()
			}
		case *redis.Message:
			v, err := strconv.ParseUint(m.Payload, 10, 64)
			if err != nil || v > seen {
				seen = max(seen, v)
				s.notify()
			}
		}
	}
}
