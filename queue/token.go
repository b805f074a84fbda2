package queue

import (
	"container/heap"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of admission tokens.
const (
	// DefaultTokenTTL is how long an admission token stays valid unless
	// [WithTokenTTL] says otherwise: long enough to load the protected page
	// after admission, short enough that a token passed around is of little
	// use.
	DefaultTokenTTL = 2 * time.Minute

	// DefaultReplayGuardEntries is the bound of the [MemoryReplayGuard] a
	// [Signer] makes when no [WithReplayGuard] is given: with 2-minute
	// tokens it keeps up with about 800 redemptions a second, in some 10 MB.
	DefaultReplayGuardEntries = 100_000
)

// Token layout. A token is base64url(payload) "." base64url(mac), without
// padding. The payload is a version byte, the issue and expiry times in
// Unix milliseconds (8 bytes each, big-endian), then the ticket's bytes.
// The MAC is HMAC-SHA256 over tokenDomain, the room name's length (8 bytes)
// and bytes, and the payload, so a token for one room never verifies for
// another and no other use of the same key can produce one.
const (
	tokenVersion   = 1
	macLen         = sha256.Size
	tokenHeaderLen = 1 + 8 + 8
	minKeyLen      = 32

	// maxTicketLen bounds what Issue accepts, so every token fits a cookie
	// with room to spare and Check can refuse anything longer unread.
	maxTicketLen  = 512
	maxPayloadLen = tokenHeaderLen + maxTicketLen
	macTextLen    = (macLen*8 + 5) / 6
	minTokenLen   = (tokenHeaderLen*8+5)/6 + 1 + macTextLen
	maxTokenLen   = (maxPayloadLen*8+5)/6 + 1 + macTextLen

	// tokenIDLen is how much of a hash of the room and ticket names an
	// admission to a ReplayGuard: 128 bits cannot collide by chance.
	tokenIDLen = 16
)

var (
	tokenDomain  = []byte("bulwark/queue admission token v1\x00")
	replayDomain = []byte("bulwark/queue admission v1\x00")
)

// tokenB64 is strict so each byte string has exactly one encoding; with
// CR and LF refused separately (the decoder skips them), a token is
// accepted only as the very string Issue returned.
var tokenB64 = base64.RawURLEncoding.Strict()

// Reasons a token is invalid, made once so refusing garbage costs nothing.
var (
	errTokenMalformed = fmt.Errorf("%w: malformed", ErrTokenInvalid)
	errTokenSignature = fmt.Errorf("%w: signature does not match (altered, forged, another room's, or signed with a retired key)", ErrTokenInvalid)
)

// SignerOption configures a [Signer].
type SignerOption interface{ applySigner(*signerConfig) }

type signerConfig struct {
	ttl      time.Duration
	previous [][]byte
	guard    ReplayGuard
	guardSet bool // so WithReplayGuard(nil) is refused, not defaulted
}

type signerOptionFunc func(*signerConfig)

func (f signerOptionFunc) applySigner(c *signerConfig) { f(c) }

// WithTokenTTL sets how long a token is valid after it is issued; d must be
// at least a millisecond, and is rounded down to one, the precision tokens
// carry. The default is [DefaultTokenTTL].
func WithTokenTTL(d time.Duration) SignerOption {
	return signerOptionFunc(func(c *signerConfig) { c.ttl = d })
}

// WithPreviousKeys sets keys that verify tokens but never sign them, for
// rotating the key without refusing tokens already handed out. Each must be
// at least 32 bytes. A later WithPreviousKeys replaces an earlier one. The
// default is none. See [Signer] for the order of a rotation.
func WithPreviousKeys(keys ...[]byte) SignerOption {
	return signerOptionFunc(func(c *signerConfig) { c.previous = keys })
}

// WithReplayGuard sets where [Signer.Redeem] records used tokens. The
// default is a [MemoryReplayGuard] of [DefaultReplayGuardEntries], which
// only sees its own process: with more than one instance behind the load
// balancer, use a [RedisReplayGuard] shared by all of them, or a token can
// be redeemed once per instance.
func WithReplayGuard(g ReplayGuard) SignerOption {
	return signerOptionFunc(func(c *signerConfig) { c.guard, c.guardSet = g, true })
}

// Claims is what a valid admission token says.
type Claims struct {
	// Room is the room the token was checked against, which the signature
	// covers: it is not carried in the token.
	Room string
	// Ticket is the ticket the token admits.
	Ticket string
	// IssuedAt and ExpiresAt bound the token's life, to the millisecond.
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// Signer issues and verifies admission tokens: proof, handed to a user at
// the front of a room's line, that the user may make one request to the
// protected endpoint.
//
// A token is base64url(payload) "." base64url(mac) with no padding, so it
// travels unchanged in a header, a cookie or a URL: about 67 bytes plus 4/3
// of the ticket's length (95 for a ticket like "1234-9f8e7d6c5b4a3921").
// The payload holds a version, the issue and expiry times and the ticket;
// the MAC is HMAC-SHA256 over a fixed domain string, the room name and the
// payload. The room is not in the token, only in the MAC, so a token is
// good for the room it was issued for only. Nothing in a token is secret:
// it is signed, not encrypted. There is no nonce: the same room, ticket,
// millisecond and TTL give the same token, which also lets a test tell
// whether a token came from Issue. A [ReplayGuard] knows an admission by a
// hash of its room and ticket, so every token issued for one ticket is
// spent together: one ticket, one request.
//
// Verification tries the current key, then each previous key. To rotate
// keys across a fleet without refusing good tokens: first give every
// instance the new key as a previous key; once all have it, make it the
// current key with the old one as previous; once every old token has
// expired (the TTL), drop the old key.
//
// The zero value is not usable; create a Signer with [NewSigner]. A Signer
// is safe for concurrent use.
type Signer struct {
	keys    [][]byte // keys[0] signs; every one verifies
	ttl     time.Duration
	ttlMS   int64
	guard   ReplayGuard
	scratch sync.Pool // *tokenScratch
}

// tokenScratch is the working memory of one Issue or Check, pooled so they
// allocate nothing but the strings they return.
type tokenScratch struct {
	macs    []hash.Hash // macs[i] is keyed with keys[i]; made on first use
	ids     hash.Hash   // SHA-256, for replay ids; made on first use
	text    [maxTokenLen]byte
	payload [maxPayloadLen]byte
	sum     [macLen]byte
	got     [macLen]byte
}

// NewSigner returns a Signer that signs with key, which must be at least 32
// bytes (the size of an HMAC-SHA256 output: a shorter key weakens it) and
// should come from crypto/rand. The key is copied.
//
// Errors match [ErrInvalidConfig] and name the bad field or option.
func NewSigner(key []byte, opts ...SignerOption) (*Signer, error) {
	if len(key) < minKeyLen {
		return nil, configError("key", "must be at least 32 bytes, length", len(key))
	}
	c := signerConfig{ttl: DefaultTokenTTL}
	for i, o := range opts {
		if o == nil {
			return nil, configError("opts", "must not contain nil, at index", i)
		}
		o.applySigner(&c)
	}
	if c.ttl < time.Millisecond {
		return nil, configError("WithTokenTTL", "must be at least 1ms", c.ttl)
	}
	keys := make([][]byte, 0, 1+len(c.previous))
	keys = append(keys, append([]byte(nil), key...))
	for i, k := range c.previous {
		if len(k) < minKeyLen {
			return nil, configError(fmt.Sprintf("WithPreviousKeys[%d]", i), "must be at least 32 bytes, length", len(k))
		}
		keys = append(keys, append([]byte(nil), k...))
	}
	if c.guardSet && c.guard == nil {
		return nil, configError("WithReplayGuard", "must not be nil", nil)
	}
	if c.guard == nil {
		g, err := NewMemoryReplayGuard(DefaultReplayGuardEntries)
		if err != nil {
			return nil, err
		}
		c.guard = g
	}
	s := &Signer{keys: keys, ttl: c.ttl.Truncate(time.Millisecond), ttlMS: c.ttl.Milliseconds(), guard: c.guard}
	s.scratch.New = func() any { return &tokenScratch{macs: make([]hash.Hash, len(keys))} }
	return s, nil
}

// TTL returns how long the Signer's tokens are valid after they are issued,
// for a cookie's Max-Age or a client's retry logic.
func (s *Signer) TTL() time.Duration { return s.ttl }

// Issue returns a token admitting ticket to room, valid from now for the
// Signer's TTL. It allocates only the returned string.
//
// Issue panics if ticket is longer than 512 bytes: tickets are made by the
// room, so a longer one is a bug, and its token would not fit a cookie.
func (s *Signer) Issue(room, ticket string, now time.Time) string {
	if len(ticket) > maxTicketLen {
		panic(fmt.Sprintf("queue: Signer.Issue: ticket of %d bytes, at most %d allowed", len(ticket), maxTicketLen))
	}
	sc := s.scratch.Get().(*tokenScratch)
	iat := now.UnixMilli()
	p := append(sc.payload[:0], tokenVersion)
	p = binary.BigEndian.AppendUint64(p, uint64(iat))
	p = binary.BigEndian.AppendUint64(p, uint64(iat+s.ttlMS))
	p = append(p, ticket...)
	mac := s.mac(sc, 0, room, p)
	n := tokenB64.EncodedLen(len(p))
	tokenB64.Encode(sc.text[:n], p)
	sc.text[n] = '.'
	tokenB64.Encode(sc.text[n+1:], mac)
	token := string(sc.text[:n+1+macTextLen])
	s.scratch.Put(sc)
	return token
}

// Check verifies token for room at now: its signature (with the current or
// a previous key), its room, and its expiry. It does not consume the token;
// use [Signer.Redeem] at the endpoint a token admits to.
//
// The error matches [ErrTokenInvalid] for a token that is malformed,
// altered, forged, another room's, or signed with a key the Signer no longer
// has (these cannot be told apart, by design), and [ErrTokenExpired] for a
// good token whose ExpiresAt is not after now; in that case the claims are
// returned too, for logging. A token issued "in the future" by an instance
// whose clock is ahead is accepted.
//
// Check allocates only the claims' Ticket, and refuses a token over 750
// bytes without decoding it.
func (s *Signer) Check(room, token string, now time.Time) (Claims, error) {
	c, _, err := s.verify(room, token, now)
	return c, err
}

// Redeem checks token for room at the current time, as [Signer.Check] does,
// then records it with the Signer's [ReplayGuard], so each ticket admits
// one request: a second Redeem of the same token, or of another token for
// the same ticket, fails with [ErrTokenReplayed].
//
// Redeem fails closed. If the guard cannot record the token (Redis is
// unreachable, the memory guard is full, ctx is done) the error matches
// [ErrUnavailable] and wraps the cause, and the token is refused, because
// admitting it unrecorded would let it be replayed. Whenever the signature
// was good (ErrTokenExpired, ErrTokenReplayed, ErrUnavailable, or success)
// the claims are returned.
//
// A token is used up once Redeem succeeds, even if the request it admitted
// then fails, and may be used up by a Redeem whose answer from Redis was
// lost to a timeout.
func (s *Signer) Redeem(ctx context.Context, room, token string) (Claims, error) {
	c, id, err := s.verify(room, token, time.Now())
	if err != nil {
		return c, err
	}
	var idText [(tokenIDLen*8 + 5) / 6]byte
	tokenB64.Encode(idText[:], id[:])
	first, err := s.guard.Use(ctx, string(idText[:]), c.ExpiresAt)
	if err != nil {
		if !errors.Is(err, ErrUnavailable) {
			err = unavailable("replay guard", err)
		}
		return c, err
	}
	if !first {
		return c, ErrTokenReplayed
	}
	return c, nil
}

// verify is Check, also returning the token's id for a ReplayGuard.
func (s *Signer) verify(room, token string, now time.Time) (Claims, [tokenIDLen]byte, error) {
	var id [tokenIDLen]byte
	if len(token) < minTokenLen || len(token) > maxTokenLen {
		return Claims{}, id, errTokenMalformed
	}
	dot := len(token) - macTextLen - 1
	if token[dot] != '.' || strings.ContainsAny(token, "\r\n") {
		return Claims{}, id, errTokenMalformed
	}
	sc := s.scratch.Get().(*tokenScratch)
	defer s.scratch.Put(sc)
	// Decode from the scratch copy: converting token to []byte would
	// allocate.
	text := sc.text[:copy(sc.text[:], token)]
	if n, err := tokenB64.Decode(sc.got[:], text[dot+1:]); err != nil || n != macLen {
		return Claims{}, id, errTokenMalformed
	}
	n, err := tokenB64.Decode(sc.payload[:], text[:dot])
	if err != nil || n < tokenHeaderLen || sc.payload[0] != tokenVersion {
		return Claims{}, id, errTokenMalformed
	}
	p := sc.payload[:n]
	good := false
	for k := range s.keys {
		if hmac.Equal(s.mac(sc, k, room, p), sc.got[:]) {
			good = true
			break
		}
	}
	if !good {
		return Claims{}, id, errTokenSignature
	}
	c := Claims{
		Room:      room,
		Ticket:    string(p[tokenHeaderLen:]),
		IssuedAt:  time.UnixMilli(int64(binary.BigEndian.Uint64(p[1:9]))),
		ExpiresAt: time.UnixMilli(int64(binary.BigEndian.Uint64(p[9:17]))),
	}
	// The replay id names the admission, not the token: the room may hand
	// a ticket's holder more than one token (a token per poll), and all of
	// them together still admit one request.
	copy(id[:], s.replayID(sc, room, p[tokenHeaderLen:]))
	if !now.Before(c.ExpiresAt) {
		return c, id, ErrTokenExpired
	}
	return c, id, nil
}

// replayID returns a hash of room and ticket, in sc.sum.
func (s *Signer) replayID(sc *tokenScratch, room string, ticket []byte) []byte {
	h := sc.ids
	if h == nil {
		h = sha256.New()
		sc.ids = h
	} else {
		h.Reset()
	}
	h.Write(replayDomain)
	binary.BigEndian.PutUint64(sc.sum[:8], uint64(len(room)))
	h.Write(sc.sum[:8])
	for len(room) > 0 {
		n := copy(sc.sum[:], room)
		h.Write(sc.sum[:n])
		room = room[n:]
	}
	h.Write(ticket)
	return h.Sum(sc.sum[:0])
}

// mac returns the MAC of room and payload with keys[k], in sc.sum.
func (s *Signer) mac(sc *tokenScratch, k int, room string, payload []byte) []byte {
	h := sc.macs[k]
	if h == nil {
		h = hmac.New(sha256.New, s.keys[k])
		sc.macs[k] = h
	} else {
		h.Reset()
	}
	h.Write(tokenDomain)
	// The room's length comes first so no room and payload can be read as
	// another room and payload. The room goes through sc.sum in pieces,
	// because converting it to []byte would allocate.
	binary.BigEndian.PutUint64(sc.sum[:8], uint64(len(room)))
	h.Write(sc.sum[:8])
	for len(room) > 0 {
		n := copy(sc.sum[:], room)
		h.Write(sc.sum[:n])
		room = room[n:]
	}
	h.Write(payload)
	return h.Sum(sc.sum[:0])
}

// ReplayGuard remembers which admission tokens were used, so that
// [Signer.Redeem] admits each token once.
//
// Use records id and reports whether this is its first use. id is a short
// string of base64url characters naming one token; until is when the token
// expires, and the guard must remember id at least that long (after that
// the token is refused as expired anyway, so it may forget it). Among
// concurrent calls with one id, at most one may report first. When Use
// cannot tell, it must return an error, never first == true: Redeem then
// refuses the token.
type ReplayGuard interface {
	Use(ctx context.Context, id string, until time.Time) (first bool, err error)
}

var (
	_ ReplayGuard = (*MemoryReplayGuard)(nil)
	_ ReplayGuard = (*RedisReplayGuard)(nil)
)

// MemoryReplayGuard is a [ReplayGuard] in this process's memory, for a
// service of one instance (or a test). With several instances, each has its
// own, and a token can be redeemed once on each: use a [RedisReplayGuard].
//
// It holds at most a fixed number of tokens. Each Use first forgets the
// tokens that have expired (kept in order of expiry, so this costs
// O(log n) per token); if the guard is still full, Use refuses with an
// error matching [ErrUnavailable] rather than forget a live token, which
// would let that token be used again. (Not [ErrFull]: that tells a user the
// line is full, and this user is already through it; Redeem fails closed as
// for a Redis outage, and a retry succeeds once tokens expire.) Size it for the
// redemptions of one TTL: peak redemptions a second × TTL in seconds.
// Each entry costs about 100 bytes.
//
// The zero value is not usable; create one with [NewMemoryReplayGuard]. A
// MemoryReplayGuard is safe for concurrent use.
type MemoryReplayGuard struct {
	max int

	mu   sync.Mutex
	used map[string]struct{}
	// byExpiry holds the same ids as used, as a min-heap on expiry.
	byExpiry usedHeap
}

// NewMemoryReplayGuard returns a MemoryReplayGuard that holds at most
// maxEntries unexpired tokens; maxEntries must be at least 1. Memory grows
// with use, up to the bound.
//
// Errors match [ErrInvalidConfig] and name the bad field.
func NewMemoryReplayGuard(maxEntries int) (*MemoryReplayGuard, error) {
	if maxEntries < 1 {
		return nil, configError("maxEntries", "must be at least 1", maxEntries)
	}
	return &MemoryReplayGuard{max: maxEntries, used: make(map[string]struct{})}, nil
}

// Use records id until until and reports whether this was its first use.
// It fails only when ctx is done or when the guard holds as many unexpired
// tokens as it may (see [MemoryReplayGuard]).
func (g *MemoryReplayGuard) Use(ctx context.Context, id string, until time.Time) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	now := time.Now().UnixNano()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.forgetExpired(now)
	if _, ok := g.used[id]; ok {
		return false, nil
	}
	if len(g.used) >= g.max {
		return false, fmt.Errorf("%w: memory replay guard full: holds %d unexpired tokens", ErrUnavailable, len(g.used))
	}
	g.used[id] = struct{}{}
	heap.Push(&g.byExpiry, usedEntry{until: until.UnixNano(), id: id})
	return true, nil
}

// Len returns how many unexpired tokens the guard remembers.
func (g *MemoryReplayGuard) Len() int {
	now := time.Now().UnixNano()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.forgetExpired(now)
	return len(g.used)
}

func (g *MemoryReplayGuard) forgetExpired(now int64) {
	for len(g.byExpiry) > 0 && g.byExpiry[0].until <= now {
		e := heap.Pop(&g.byExpiry).(usedEntry)
		delete(g.used, e.id)
	}
}

type usedEntry struct {
	until int64 // Unix nanoseconds
	id    string
}

// usedHeap is a min-heap of entries on until, for container/heap.
type usedHeap []usedEntry

func (h usedHeap) Len() int           { return len(h) }
func (h usedHeap) Less(i, j int) bool { return h[i].until < h[j].until }
func (h usedHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *usedHeap) Push(x any)        { *h = append(*h, x.(usedEntry)) }
func (h *usedHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = usedEntry{} // let the id be collected
	*h = old[:len(old)-1]
	return e
}

// redisReplaySkew is how long a RedisReplayGuard keeps a token past its
// expiry, so an instance whose clock is up to this much behind, and so
// still finds the token unexpired, also still finds it used.
const redisReplaySkew = time.Minute

// useToken records a token as used unless it already is. Each Use sends a
// fresh random value, and finding its own value counts as a first use: when
// a reply is lost and go-redis sends the script again, the retry must not
// see the first attempt's write as a replay and refuse the user's only
// token.
//
// KEYS[1]: the token's key. ARGV: this Use's value, milliseconds to keep it.
var useToken = redis.NewScript(`
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if held == ARGV[1] then
  return 1
end
return 0
`)

// RedisReplayGuard is a [ReplayGuard] in Redis, shared by every instance of
// a service, so a token is redeemed once across the fleet. Each used token
// is one small string key, prefix + id, that expires a minute after the
// token does (a margin for clocks that disagree). One atomic script call per
// Use; being one key, it works on Redis Cluster too.
//
// It fails closed: while Redis is unreachable Use returns an error matching
// [ErrUnavailable], so [Signer.Redeem] refuses every token. Admitting tokens
// that could not be recorded would let each be used again and again, and
// the endpoint the room protects would be open to anyone holding one token.
// A Redis that loses its data (a restart without persistence, a failover to
// a replica the write had not reached) forgets the tokens used so far, and
// those can be redeemed once more until they expire.
//
// Deadlines: go-redis bounds socket reads by the context's deadline only
// when the client has ContextTimeoutEnabled; otherwise by its ReadTimeout.
// While Redis is down each Use waits out the client's own dial retries
// (over a second with go-redis' defaults); lower MaxRetries and DialTimeout
// for the guard's client to refuse sooner.
//
// The zero value is not usable; create one with [NewRedisReplayGuard]. A
// RedisReplayGuard is safe for concurrent use.
type RedisReplayGuard struct {
	client redis.UniversalClient
	prefix string
}

// NewRedisReplayGuard returns a RedisReplayGuard that keeps its keys in
// client under prefix, such as "bulwark:queue:used:". client may be a single
// node, a Sentinel failover client or a Cluster client.
//
// Errors match [ErrInvalidConfig] and name the bad field.
func NewRedisReplayGuard(client redis.UniversalClient, prefix string) (*RedisReplayGuard, error) {
	if client == nil {
		return nil, configError("client", "must not be nil", nil)
	}
	return &RedisReplayGuard{client: client, prefix: prefix}, nil
}

// Use records id until until (plus a minute) and reports whether this was
// its first use. Any failure to reach Redis, including ctx ending, returns
// an error matching [ErrUnavailable] that wraps the cause.
func (g *RedisReplayGuard) Use(ctx context.Context, id string, until time.Time) (bool, error) {
	keep := max((time.Until(until) + redisReplaySkew).Milliseconds(), 1)
	n, err := useToken.Run(ctx, g.client, []string{g.prefix + id}, rand.Text(), keep).Int()
	if err != nil {
		return false, unavailable("replay guard", err)
	}
	return n == 1, nil
}
