package queue_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/internal/israce"
	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/queue"
)

const (
	tokenRoom   = "flash-sale"
	tokenTicket = "1234-9f8e7d6c5b4a3921"
)

// tokenT0 is a whole millisecond: tokens carry times to the millisecond.
var tokenT0 = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

func tokenKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func newTestSigner(t testing.TB, key []byte, opts ...queue.SignerOption) *queue.Signer {
	t.Helper()
	s, err := queue.NewSigner(key, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSignerRoundTrip(t *testing.T) {
	s := newTestSigner(t, tokenKey(1))
	if s.TTL() != queue.DefaultTokenTTL {
		t.Fatalf("TTL() = %v, want %v", s.TTL(), queue.DefaultTokenTTL)
	}
	tok := s.Issue(tokenRoom, tokenTicket, tokenT0)
	if len(tok) != 95 {
		t.Errorf("token %q is %d bytes, want 95", tok, len(tok))
	}
	if i := strings.IndexFunc(tok, func(r rune) bool {
		return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}); i >= 0 {
		t.Errorf("token %q has %q, not safe in a URL or cookie", tok, tok[i])
	}
	if again := s.Issue(tokenRoom, tokenTicket, tokenT0); again != tok {
		t.Errorf("Issue is not deterministic: %q then %q", tok, again)
	}
	if later := s.Issue(tokenRoom, tokenTicket, tokenT0.Add(time.Millisecond)); later == tok {
		t.Error("tokens issued a millisecond apart are equal")
	}

	c, err := s.Check(tokenRoom, tok, tokenT0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	want := queue.Claims{Room: tokenRoom, Ticket: tokenTicket, IssuedAt: tokenT0, ExpiresAt: tokenT0.Add(queue.DefaultTokenTTL)}
	if c.Room != want.Room || c.Ticket != want.Ticket || !c.IssuedAt.Equal(want.IssuedAt) || !c.ExpiresAt.Equal(want.ExpiresAt) {
		t.Errorf("Check = %+v, want %+v", c, want)
	}
}

// Rooms and tickets are arbitrary strings: bytes the encoding must not
// confuse with its own separators, invalid UTF-8, the empty string, and
// the longest ticket Issue takes.
func TestSignerArbitraryRoomsAndTickets(t *testing.T) {
	s := newTestSigner(t, tokenKey(1))
	long := strings.Repeat("x", 512)
	for _, tc := range []struct{ room, ticket string }{
		{"", ""},
		{"room.with.dots", "ticket.with.dots"},
		{"spaces and ; commas,", "line\nbreak\r\x00nul"},
		{"\xff\xfe not utf-8", "\xc3\x28"},
		{"ŝaltŝuo 🎟", "bilet-✓"},
		{strings.Repeat("r", 1000), long},
	} {
		tok := s.Issue(tc.room, tc.ticket, tokenT0)
		c, err := s.Check(tc.room, tok, tokenT0)
		if err != nil {
			t.Errorf("room %.20q ticket %.20q: %v", tc.room, tc.ticket, err)
			continue
		}
		if c.Room != tc.room || c.Ticket != tc.ticket {
			t.Errorf("room %.20q ticket %.20q: Check = %.20q %.20q", tc.room, tc.ticket, c.Room, c.Ticket)
		}
	}
	if tok := s.Issue("", long, tokenT0); len(tok) != 750 {
		t.Errorf("longest token is %d bytes, want 750 (the limit Check enforces)", len(tok))
	}
}

func TestSignerIssuePanicsOnLongTicket(t *testing.T) {
	s := newTestSigner(t, tokenKey(1))
	defer func() {
		if recover() == nil {
			t.Error("Issue with a 513-byte ticket did not panic")
		}
	}()
	s.Issue(tokenRoom, strings.Repeat("x", 513), tokenT0)
}

// flipBase64 returns seg with byte i of its decoded form changed.
func flipBase64(t *testing.T, seg string, i int) string {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	b[i] ^= 0x01
	return base64.RawURLEncoding.EncodeToString(b)
}

// nonCanonical changes seg's last character to another that a lenient
// decoder reads as the same bytes (only the unused low bits differ).
func nonCanonical(t *testing.T, seg string) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, seg[len(seg)-1])
	alt := seg[:len(seg)-1] + string(alphabet[i^1])
	a, err1 := base64.RawURLEncoding.DecodeString(seg)
	b, err2 := base64.RawURLEncoding.DecodeString(alt)
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		t.Fatalf("%q and %q do not decode alike", seg, alt)
	}
	return alt
}

func TestSignerCheckRefusesForgeries(t *testing.T) {
	s := newTestSigner(t, tokenKey(1))
	tok := s.Issue(tokenRoom, tokenTicket, tokenT0)
	other := s.Issue(tokenRoom, "5678-0a1b2c3d4e5f6789", tokenT0)
	payload, mac, _ := strings.Cut(tok, ".")
	otherPayload, otherMAC, _ := strings.Cut(other, ".")
	forged := newTestSigner(t, tokenKey(2)).Issue(tokenRoom, tokenTicket, tokenT0)

	cases := map[string]string{
		"empty":                 "",
		"garbage":               "not a token",
		"dot only":              ".",
		"wrong key":             forged,
		"mac of another token":  payload + "." + otherMAC,
		"payload of another":    otherPayload + "." + mac,
		"no mac":                payload + ".",
		"no payload":            "." + mac,
		"no dot":                payload + mac,
		"two dots":              payload + ".." + mac,
		"extra segment":         tok + ".AAAA",
		"appended":              tok + "A",
		"prepended":             "A" + tok,
		"padded":                tok + "=",
		"standard alphabet":     "+/" + tok[2:],
		"space":                 " " + tok,
		"newline in payload":    payload[:10] + "\n" + payload[10:] + "." + mac,
		"CR in payload":         payload[:10] + "\r" + payload[10:] + "." + mac,
		"non-canonical mac":     payload + "." + nonCanonical(t, mac),
		"non-canonical payload": nonCanonical(t, payload) + "." + mac,
		"over-long":             tok + strings.Repeat("A", 1000),
		"over-long valid shape": strings.Repeat("A", 706) + "." + mac,
		"header only":           payload[:22] + "." + mac,
	}
	// Byte 0 is the version.
	for i := range len(tokenTicket) + 17 {
		cases["payload byte "+strconv.Itoa(i)] = flipBase64(t, payload, i) + "." + mac
	}
	for i := range 32 {
		cases["mac byte "+strconv.Itoa(i)] = payload + "." + flipBase64(t, mac, i)
	}
	for n := range len(tok) {
		cases["truncated to "+strconv.Itoa(n)] = tok[:n]
	}
	for name, bad := range cases {
		if bad == tok {
			t.Fatalf("%s: the case is the good token", name)
		}
		c, err := s.Check(tokenRoom, bad, tokenT0)
		if !errors.Is(err, queue.ErrTokenInvalid) {
			t.Errorf("%s: Check(%q) = %v, want ErrTokenInvalid", name, bad, err)
		}
		if c != (queue.Claims{}) {
			t.Errorf("%s: claims %+v returned with an invalid token", name, c)
		}
	}
}

func TestSignerCheckWrongRoom(t *testing.T) {
	s := newTestSigner(t, tokenKey(1))
	for _, tc := range []struct{ issued, checked string }{
		{"flash-sale", "flash-sale-2"},
		{"flash-sale", "Flash-sale"},
		{"flash-sale", ""},
		{"", "x"},
		// The room's length is in the MAC, so moving bytes between room and
		// payload cannot help.
		{"ab", "a"},
	} {
		tok := s.Issue(tc.issued, tokenTicket, tokenT0)
		if _, err := s.Check(tc.checked, tok, tokenT0); !errors.Is(err, queue.ErrTokenInvalid) {
			t.Errorf("token for %q checked for %q: %v, want ErrTokenInvalid", tc.issued, tc.checked, err)
		}
	}
}

func TestSignerCheckExpiry(t *testing.T) {
	s := newTestSigner(t, tokenKey(1), queue.WithTokenTTL(30*time.Second))
	if s.TTL() != 30*time.Second {
		t.Fatalf("TTL() = %v", s.TTL())
	}
	tok := s.Issue(tokenRoom, tokenTicket, tokenT0)
	exp := tokenT0.Add(30 * time.Second)
	for _, at := range []time.Time{tokenT0, exp.Add(-time.Nanosecond), tokenT0.Add(-time.Hour)} {
		if _, err := s.Check(tokenRoom, tok, at); err != nil {
			t.Errorf("Check at %v: %v", at.Sub(tokenT0), err)
		}
	}
	for _, at := range []time.Time{exp, exp.Add(time.Millisecond), exp.Add(24 * time.Hour)} {
		c, err := s.Check(tokenRoom, tok, at)
		if !errors.Is(err, queue.ErrTokenExpired) {
			t.Errorf("Check at %v: %v, want ErrTokenExpired", at.Sub(tokenT0), err)
		}
		if c.Ticket != tokenTicket || !c.ExpiresAt.Equal(exp) {
			t.Errorf("Check at %v: claims %+v, want the token's own", at.Sub(tokenT0), c)
		}
	}

	// A time within a millisecond is rounded down: the token never
	// outlives the TTL.
	tok = s.Issue(tokenRoom, tokenTicket, tokenT0.Add(999*time.Microsecond))
	if _, err := s.Check(tokenRoom, tok, tokenT0.Add(30*time.Second)); !errors.Is(err, queue.ErrTokenExpired) {
		t.Errorf("token issued at +999µs still valid at +30s: %v", err)
	}
}

func TestSignerKeyRotation(t *testing.T) {
	oldKey, newKey := tokenKey(1), tokenKey(2)
	old := newTestSigner(t, oldKey)
	oldTok := old.Issue(tokenRoom, tokenTicket, tokenT0)

	// Step 1: the new key verifies everywhere before it signs anywhere.
	step1 := newTestSigner(t, oldKey, queue.WithPreviousKeys(newKey))
	// Step 2: the new key signs; the old one still verifies.
	step2 := newTestSigner(t, newKey, queue.WithPreviousKeys(tokenKey(9), oldKey))
	newTok := step2.Issue(tokenRoom, tokenTicket, tokenT0)
	// Step 3: the old key is dropped.
	step3 := newTestSigner(t, newKey)

	for _, tc := range []struct {
		name   string
		s      *queue.Signer
		tok    string
		accept bool
	}{
		{"old token, step 1", step1, oldTok, true},
		{"new token, step 1", step1, newTok, true},
		{"old token, step 2", step2, oldTok, true},
		{"new token, step 2", step2, newTok, true},
		{"old token, step 3", step3, oldTok, false},
		{"new token, step 3", step3, newTok, true},
		{"new token, old signer", old, newTok, false},
	} {
		_, err := tc.s.Check(tokenRoom, tc.tok, tokenT0)
		if tc.accept && err != nil || !tc.accept && !errors.Is(err, queue.ErrTokenInvalid) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	if step1.Issue(tokenRoom, tokenTicket, tokenT0) != oldTok {
		t.Error("a signer signed with a previous key")
	}
}

func TestSignerCopiesKeys(t *testing.T) {
	key, prev := tokenKey(1), tokenKey(2)
	s := newTestSigner(t, key, queue.WithPreviousKeys(prev))
	tok := s.Issue(tokenRoom, tokenTicket, tokenT0)
	prevTok := newTestSigner(t, tokenKey(2)).Issue(tokenRoom, tokenTicket, tokenT0)
	clear(key)
	clear(prev)
	for _, tk := range []string{tok, prevTok} {
		if _, err := s.Check(tokenRoom, tk, tokenT0); err != nil {
			t.Errorf("after the caller cleared its keys: %v", err)
		}
	}
}

func TestNewSignerInvalidConfig(t *testing.T) {
	guard, err := queue.NewMemoryReplayGuard(10)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		key   []byte
		opts  []queue.SignerOption
		field string
	}{
		{"nil key", nil, nil, "key"},
		{"short key", make([]byte, 31), nil, "key"},
		{"zero TTL", tokenKey(1), []queue.SignerOption{queue.WithTokenTTL(0)}, "WithTokenTTL"},
		{"negative TTL", tokenKey(1), []queue.SignerOption{queue.WithTokenTTL(-time.Second)}, "WithTokenTTL"},
		{"sub-millisecond TTL", tokenKey(1), []queue.SignerOption{queue.WithTokenTTL(999 * time.Microsecond)}, "WithTokenTTL"},
		{"short previous key", tokenKey(1), []queue.SignerOption{queue.WithPreviousKeys(tokenKey(2), make([]byte, 16))}, "WithPreviousKeys[1]"},
		{"nil guard", tokenKey(1), []queue.SignerOption{queue.WithReplayGuard(nil)}, "WithReplayGuard"},
		{"nil option", tokenKey(1), []queue.SignerOption{queue.WithReplayGuard(guard), nil}, "opts"},
	} {
		s, err := queue.NewSigner(tc.key, tc.opts...)
		if !errors.Is(err, queue.ErrInvalidConfig) || s != nil {
			t.Errorf("%s: NewSigner = %v, %v; want ErrInvalidConfig", tc.name, s, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: %q does not name %s", tc.name, err, tc.field)
		}
	}

	if g, err := queue.NewMemoryReplayGuard(0); !errors.Is(err, queue.ErrInvalidConfig) || g != nil || !strings.Contains(err.Error(), "maxEntries") {
		t.Errorf("NewMemoryReplayGuard(0) = %v, %v", g, err)
	}
	if g, err := queue.NewRedisReplayGuard(nil, "p:"); !errors.Is(err, queue.ErrInvalidConfig) || g != nil || !strings.Contains(err.Error(), "client") {
		t.Errorf("NewRedisReplayGuard(nil) = %v, %v", g, err)
	}
}

func TestSignerAllocations(t *testing.T) {
	if israce.Enabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	s := newTestSigner(t, tokenKey(1), queue.WithPreviousKeys(tokenKey(2)))
	tok := s.Issue(tokenRoom, tokenTicket, tokenT0)
	prevTok := newTestSigner(t, tokenKey(2)).Issue(tokenRoom, tokenTicket, tokenT0)
	for name, tc := range map[string]struct {
		f    func()
		want float64
	}{
		"Issue":                     {func() { s.Issue(tokenRoom, tokenTicket, tokenT0) }, 1},
		"Check":                     {func() { _, _ = s.Check(tokenRoom, tok, tokenT0) }, 1},
		"Check with a previous key": {func() { _, _ = s.Check(tokenRoom, prevTok, tokenT0) }, 1},
		"Check refusing garbage":    {func() { _, _ = s.Check(tokenRoom, "garbage", tokenT0) }, 0},
		"Check refusing a forgery":  {func() { _, _ = s.Check("other", tok, tokenT0) }, 0},
	} {
		if got := testing.AllocsPerRun(100, tc.f); got > tc.want {
			t.Errorf("%s: %v allocations, want at most %v", name, got, tc.want)
		}
	}
}

// redeemReplayed redeems one token from many goroutines at once and then
// again: exactly one Redeem may succeed.
func redeemReplayed(t *testing.T, s *queue.Signer) {
	t.Helper()
	ctx := context.Background()
	tok := s.Issue(tokenRoom, tokenTicket, time.Now())

	const n = 16
	var ok, replayed atomic.Int32
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			c, err := s.Redeem(ctx, tokenRoom, tok)
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, queue.ErrTokenReplayed):
				replayed.Add(1)
				if c.Ticket != tokenTicket {
					t.Errorf("replayed Redeem returned claims %+v", c)
				}
			default:
				t.Errorf("Redeem: %v", err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 1 || replayed.Load() != n-1 {
		t.Fatalf("%d concurrent Redeems: %d succeeded, %d replayed", n, ok.Load(), replayed.Load())
	}
	if _, err := s.Redeem(ctx, tokenRoom, tok); !errors.Is(err, queue.ErrTokenReplayed) {
		t.Errorf("Redeem after use: %v, want ErrTokenReplayed", err)
	}

	// Another token for the same ticket is spent with the first: one
	// ticket, one request.
	again := s.Issue(tokenRoom, tokenTicket, time.Now().Add(-time.Second))
	if again == tok {
		t.Fatal("two issues at different times gave one token")
	}
	if _, err := s.Redeem(ctx, tokenRoom, again); !errors.Is(err, queue.ErrTokenReplayed) {
		t.Errorf("Redeem of a second token for a used ticket: %v, want ErrTokenReplayed", err)
	}
	// Check does not consume, and does not mind that Redeem did.
	fresh := s.Issue(tokenRoom, tokenTicket+"0", time.Now().Add(-time.Second))
	for range 3 {
		if _, err := s.Check(tokenRoom, fresh, time.Now()); err != nil {
			t.Fatalf("Check: %v", err)
		}
	}
	if _, err := s.Redeem(ctx, tokenRoom, fresh); err != nil {
		t.Errorf("Redeem after Check: %v", err)
	}
	// The same token for another room is another token.
	if _, err := s.Redeem(ctx, "another-sale", s.Issue("another-sale", tokenTicket, time.Now())); err != nil {
		t.Errorf("Redeem of another room's token: %v", err)
	}
}

func TestSignerRedeemReplayMemory(t *testing.T) {
	redeemReplayed(t, newTestSigner(t, tokenKey(1)))
}

func TestSignerRedeemReplayRedis(t *testing.T) {
	client := redistest.Client(t)
	prefix := redistest.Prefix(t)
	g, err := queue.NewRedisReplayGuard(client, prefix)
	if err != nil {
		t.Fatal(err)
	}
	s := newTestSigner(t, tokenKey(1), queue.WithReplayGuard(g))
	redeemReplayed(t, s)

	// Each used token is one key that outlives the token by a minute.
	keys, err := client.Keys(context.Background(), prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 {
		t.Fatalf("keys under %q: %q, want 3", prefix, keys)
	}
	for _, k := range keys {
		ttl, err := client.PTTL(context.Background(), k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl < 2*time.Minute || ttl > 3*time.Minute+time.Second {
			t.Errorf("%s expires in %v, want about the token's 2m plus 1m", k, ttl)
		}
	}

	// A second signer (another instance) sharing the guard sees the use.
	tok := s.Issue(tokenRoom, "9-abc", time.Now())
	if _, err := s.Redeem(context.Background(), tokenRoom, tok); err != nil {
		t.Fatal(err)
	}
	other := newTestSigner(t, tokenKey(1), queue.WithReplayGuard(g))
	if _, err := other.Redeem(context.Background(), tokenRoom, tok); !errors.Is(err, queue.ErrTokenReplayed) {
		t.Errorf("Redeem on another instance: %v, want ErrTokenReplayed", err)
	}
}

// countingGuard is a ReplayGuard that answers with err, or first use
// always, and counts its calls.
type countingGuard struct {
	calls atomic.Int32
	err   error
}

func (g *countingGuard) Use(ctx context.Context, id string, until time.Time) (bool, error) {
	g.calls.Add(1)
	return g.err == nil, g.err
}

func TestSignerRedeemRefusesBadTokensWithoutTheGuard(t *testing.T) {
	g := &countingGuard{}
	s := newTestSigner(t, tokenKey(1), queue.WithReplayGuard(g))
	ctx := context.Background()
	if _, err := s.Redeem(ctx, tokenRoom, "garbage"); !errors.Is(err, queue.ErrTokenInvalid) {
		t.Errorf("garbage: %v", err)
	}
	if _, err := s.Redeem(ctx, "other", s.Issue(tokenRoom, tokenTicket, time.Now())); !errors.Is(err, queue.ErrTokenInvalid) {
		t.Errorf("wrong room: %v", err)
	}
	c, err := s.Redeem(ctx, tokenRoom, s.Issue(tokenRoom, tokenTicket, time.Now().Add(-3*time.Minute)))
	if !errors.Is(err, queue.ErrTokenExpired) || c.Ticket != tokenTicket {
		t.Errorf("expired: %+v, %v", c, err)
	}
	if n := g.calls.Load(); n != 0 {
		t.Errorf("the guard was asked %d times about tokens already refused", n)
	}
}

func TestSignerRedeemFailsClosed(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name  string
		err   error
		cause error
	}{
		{"plain error", boom, boom},
		{"already unavailable", errors.Join(queue.ErrUnavailable, boom), boom},
	} {
		s := newTestSigner(t, tokenKey(1), queue.WithReplayGuard(&countingGuard{err: tc.err}))
		c, err := s.Redeem(context.Background(), tokenRoom, s.Issue(tokenRoom, tokenTicket, time.Now()))
		if !errors.Is(err, queue.ErrUnavailable) || !errors.Is(err, tc.cause) {
			t.Errorf("%s: %v, want ErrUnavailable wrapping the cause", tc.name, err)
		}
		if strings.Count(err.Error(), "unavailable") != 1 {
			t.Errorf("%s: %q wraps ErrUnavailable twice", tc.name, err)
		}
		if c.Ticket != tokenTicket {
			t.Errorf("%s: claims %+v, want the token's", tc.name, c)
		}
	}

	s := newTestSigner(t, tokenKey(1))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tok := s.Issue(tokenRoom, tokenTicket, time.Now())
	if _, err := s.Redeem(ctx, tokenRoom, tok); !errors.Is(err, queue.ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
	// The refused Redeem did not use the token up.
	if _, err := s.Redeem(context.Background(), tokenRoom, tok); err != nil {
		t.Errorf("Redeem after a cancelled one: %v", err)
	}
}

func TestMemoryReplayGuardBoundAndExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		g, err := queue.NewMemoryReplayGuard(3)
		if err != nil {
			t.Fatal(err)
		}
		use := func(id string, until time.Duration) (bool, error) {
			return g.Use(ctx, id, time.Now().Add(until))
		}
		// Out of order of expiry, so forgetting must follow expiry, not
		// arrival.
		for _, e := range []struct {
			id    string
			until time.Duration
		}{{"c", 3 * time.Second}, {"a", time.Second}, {"b", 2 * time.Second}} {
			if first, err := use(e.id, e.until); !first || err != nil {
				t.Fatalf("Use(%s) = %v, %v", e.id, first, err)
			}
		}
		// Full of live tokens: a new one is refused, never admitted by
		// forgetting an old one, and the old ones are still known.
		first, err := use("d", time.Second)
		if first || !errors.Is(err, queue.ErrUnavailable) || errors.Is(err, queue.ErrFull) {
			t.Fatalf("Use on a full guard = %v, %v; want ErrUnavailable (and not ErrFull)", first, err)
		}
		for _, id := range []string{"a", "b", "c"} {
			if first, err := use(id, time.Second); first || err != nil {
				t.Errorf("replay of %s on a full guard = %v, %v", id, first, err)
			}
		}

		time.Sleep(time.Second) // a expires
		if n := g.Len(); n != 2 {
			t.Errorf("Len after a expired = %d, want 2", n)
		}
		if first, err := use("d", 10*time.Second); !first || err != nil {
			t.Errorf("Use(d) after a expired = %v, %v", first, err)
		}
		if first, err := use("b", time.Second); first || err != nil {
			t.Errorf("replay of b = %v, %v", first, err)
		}
		time.Sleep(2 * time.Second) // b and c expire
		if n := g.Len(); n != 1 {
			t.Errorf("Len after b and c expired = %d, want 1", n)
		}
		time.Sleep(10 * time.Second)
		if n := g.Len(); n != 0 {
			t.Errorf("Len after all expired = %d, want 0", n)
		}
	})
}

// The signer's default guard forgets a redeemed token once it has expired,
// and the expired token is still refused.
func TestSignerRedeemMemoryForgetsExpired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, err := queue.NewMemoryReplayGuard(1)
		if err != nil {
			t.Fatal(err)
		}
		s := newTestSigner(t, tokenKey(1), queue.WithReplayGuard(g), queue.WithTokenTTL(time.Minute))
		ctx := context.Background()
		tok := s.Issue(tokenRoom, "1", time.Now())
		if _, err := s.Redeem(ctx, tokenRoom, tok); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Redeem(ctx, tokenRoom, s.Issue(tokenRoom, "2", time.Now())); !errors.Is(err, queue.ErrUnavailable) {
			t.Fatalf("second token on a guard of one: %v, want ErrUnavailable", err)
		}
		time.Sleep(time.Minute)
		if _, err := s.Redeem(ctx, tokenRoom, tok); !errors.Is(err, queue.ErrTokenExpired) {
			t.Errorf("first token after its TTL: %v, want ErrTokenExpired", err)
		}
		if _, err := s.Redeem(ctx, tokenRoom, s.Issue(tokenRoom, "2", time.Now())); err != nil {
			t.Errorf("a new token once the first expired: %v", err)
		}
	})
}

func TestRedisReplayGuardDown(t *testing.T) {
	srv := redistest.StartServer(t)
	client := redistest.NewClient(t, srv.Addr)
	g, err := queue.NewRedisReplayGuard(client, redistest.Prefix(t))
	if err != nil {
		t.Fatal(err)
	}
	s := newTestSigner(t, tokenKey(1), queue.WithReplayGuard(g))
	ctx := context.Background()
	if _, err := s.Redeem(ctx, tokenRoom, s.Issue(tokenRoom, "1", time.Now())); err != nil {
		t.Fatal(err)
	}

	srv.Kill()
	tok := s.Issue(tokenRoom, "2", time.Now())
	c, err := s.Redeem(ctx, tokenRoom, tok)
	if !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("Redeem with Redis down: %v, want ErrUnavailable", err)
	}
	if c.Ticket != "2" {
		t.Errorf("claims %+v, want the token's", c)
	}
	if first, err := g.Use(ctx, "x", time.Now().Add(time.Minute)); first || !errors.Is(err, queue.ErrUnavailable) {
		t.Errorf("Use with Redis down = %v, %v", first, err)
	}

	// Back up: the token refused during the outage was not used up.
	srv.Start(t)
	if _, err := s.Redeem(ctx, tokenRoom, tok); err != nil {
		t.Errorf("Redeem after Redis returned: %v", err)
	}
}

// A token whose expiry passed before Use (a slow caller, or another
// instance's clock) must not make Redis refuse the expiry time.
func TestRedisReplayGuardPastExpiry(t *testing.T) {
	client := redistest.Client(t)
	prefix := redistest.Prefix(t)
	g, err := queue.NewRedisReplayGuard(client, prefix)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if first, err := g.Use(ctx, "old", time.Now().Add(-time.Hour)); !first || err != nil {
		t.Fatalf("Use = %v, %v", first, err)
	}
	ttl, err := client.PTTL(ctx, prefix+"old").Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	if ttl > time.Millisecond {
		t.Errorf("a long-expired token is kept for %v", ttl)
	}
}

// FuzzCheck checks that Check never panics, refuses with the documented
// errors only, and accepts a token only if it is exactly what Issue returns
// for the claims it reports: no altered, re-encoded or forged token passes.
func FuzzCheck(f *testing.F) {
	s := newTestSigner(f, tokenKey(1), queue.WithPreviousKeys(tokenKey(2)))
	retired := newTestSigner(f, tokenKey(2))
	for _, seed := range []struct {
		room, ticket string
		at           time.Time
	}{
		{tokenRoom, tokenTicket, tokenT0},
		{tokenRoom, tokenTicket, tokenT0.Add(-time.Hour)},  // expired
		{tokenRoom, tokenTicket, tokenT0.Add(time.Minute)}, // from a clock ahead
		{"", "", tokenT0}, // empty room and ticket
		{"r.o.o.m", "t.i.c.k.e.t\n\x00\xff", tokenT0},       // separators and bytes
		{tokenRoom, strings.Repeat("9", 512), tokenT0},      // longest ticket
		{tokenRoom, tokenTicket, time.UnixMilli(-1)},        // before 1970
		{tokenRoom, tokenTicket, time.UnixMilli(1<<63 - 1)}, // expiry overflows
	} {
		tok := s.Issue(seed.room, seed.ticket, seed.at)
		f.Add(seed.room, tok)
		f.Add(seed.room+"x", tok)
		f.Add(seed.room, tok[:len(tok)-1]+"A")
		f.Add(seed.room, retired.Issue(seed.room, seed.ticket, seed.at))
	}
	f.Add(tokenRoom, "")
	f.Add(tokenRoom, "garbage.garbage")
	f.Add(tokenRoom, strings.Repeat("A", 23)+"."+strings.Repeat("A", 43))

	f.Fuzz(func(t *testing.T, room, token string) {
		c, err := s.Check(room, token, tokenT0)
		switch {
		case err == nil || errors.Is(err, queue.ErrTokenExpired):
			if c.Room != room {
				t.Fatalf("claims for room %q, checked for %q", c.Room, room)
			}
			if token != s.Issue(room, c.Ticket, c.IssuedAt) && token != retired.Issue(room, c.Ticket, c.IssuedAt) {
				t.Fatalf("accepted %q (%v), which Issue does not return for %+v", token, err, c)
			}
			// Expired exactly when the expiry is not after now, and both
			// signers' tokens last the default TTL.
			if expired := !tokenT0.Before(c.ExpiresAt); expired != (err != nil) {
				t.Fatalf("claims %+v at %v: error %v", c, tokenT0, err)
			}
			if d := c.ExpiresAt.Sub(c.IssuedAt); d != queue.DefaultTokenTTL && c.IssuedAt.UnixMilli() < 1<<62 {
				t.Fatalf("claims %+v last %v, want %v", c, d, queue.DefaultTokenTTL)
			}
		case errors.Is(err, queue.ErrTokenInvalid):
			if c != (queue.Claims{}) {
				t.Fatalf("claims %+v with an invalid token", c)
			}
		default:
			t.Fatalf("Check(%q, %q): unexpected error %v", room, token, err)
		}
	})
}
