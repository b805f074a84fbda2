package queue_test

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/queue"
)

// Ways FuzzTokenTamper changes a good token, by its op argument modulo
// tamperOps.
const (
	tamperTruncate = iota // cut it at pos
	tamperFlip            // flip one bit of the byte at pos
	tamperReplace         // set the byte at pos to val
	tamperInsert          // insert val at pos
	tamperAppend          // append other
	tamperSplice          // another ticket's payload with this MAC, and the reverse
	tamperForge           // the same claims signed with a key the signer never had
	tamperReencode        // the same bytes in padded or standard base64
	tamperOps
)

// FuzzTokenTamper issues a token for a fuzzed room and ticket at a fuzzed
// age, then changes it one way or another. The token issued verifies, for
// its room only, with exactly its claims, and is expired exactly when its
// expiry is not after now; every changed token, forged token or token of
// another room is refused with ErrTokenInvalid and no claims, by Check
// and by Redeem, without asking the replay guard. Redeem admits the token
// issued once, then refuses it and any other token of the same ticket with
// ErrTokenReplayed, and refuses an expired one with ErrTokenExpired.
func FuzzTokenTamper(f *testing.F) {
	for _, s := range []struct {
		room, ticket, other string
		ageMS               int64
		op                  uint8
		pos                 uint16
		val                 byte
	}{
		{tokenRoom, tokenTicket, "x", 0, tamperTruncate, 94, 0},                  // MAC one short
		{tokenRoom, tokenTicket, "x", 0, tamperTruncate, 31, 0},                  // no MAC
		{tokenRoom, tokenTicket, "x", 1000, tamperFlip, 3, 7},                    // in the times
		{tokenRoom, tokenTicket, "x", 1000, tamperFlip, 94, 5},                   // last character
		{tokenRoom, tokenTicket, "x", 0, tamperReplace, 93, '+'},                 // standard alphabet
		{tokenRoom, tokenTicket, "x", 0, tamperReplace, 94, '\n'},                // line break
		{tokenRoom, tokenTicket, "x", 0, tamperInsert, 30, '='},                  // padding
		{tokenRoom, tokenTicket, "\u00a0", 0, tamperAppend, 0, 0},                // trailing space
		{tokenRoom, tokenTicket, "1234-9f8e7d6c5b4a3922", 0, tamperSplice, 0, 0}, // another ticket
		{tokenRoom, "", "a", 0, tamperSplice, 0, 0},                              // empty ticket
		{tokenRoom, tokenTicket, "", 0, tamperForge, 0, 0},                       // unknown key
		{tokenRoom, tokenTicket, "", 0, tamperReencode, 0, 0},                    // other alphabets
		{tokenRoom, tokenTicket, tokenRoom + "2", 120_000, tamperFlip, 0, 0},     // just expired
		{tokenRoom, tokenTicket, "flash-sal", 119_999, tamperFlip, 0, 0},         // about to expire
		{tokenRoom, tokenTicket, "", -60_000, tamperTruncate, 1, 0},              // from a clock ahead
		{"", "", "", 0, tamperReplace, 0, 'A'},                                   // shortest token
		{"r.o.o.m", strings.Repeat("9", 512), "r.o.o.m\x00", 0, tamperReencode, 0, 0},
		{"\xff\xfe", "line\nbreak\r\x00", "\xff", 0, tamperInsert, 700, '.'},
		{tokenRoom, strings.Repeat("x", 600), tokenTicket, 0, tamperSplice, 0, 0}, // cut to 512
		{tokenRoom, tokenTicket, "", 1 << 62, tamperFlip, 17, 1},                  // far past
	} {
		f.Add(s.room, s.ticket, s.other, s.ageMS, s.op, s.pos, s.val)
	}
	forger := newTestSigner(f, tokenKey(9))
	f.Fuzz(func(t *testing.T, room, ticket, other string, ageMS int64, op uint8, pos uint16, val byte) {
		if len(ticket) > 512 {
			ticket = ticket[:512]
		}
		// Ages within ten years either way.
		const tenYears = 10 * 365 * 24 * 3600 * 1000
		ageMS %= tenYears
		guard := &countingGuard{}
		s := newTestSigner(t, tokenKey(1), queue.WithPreviousKeys(tokenKey(2)), queue.WithReplayGuard(guard))
		now := tokenT0
		iat := now.Add(-time.Duration(ageMS) * time.Millisecond)
		tok := s.Issue(room, ticket, iat)

		// The token issued verifies with its claims, for its room.
		c, err := s.Check(room, tok, now)
		want := queue.Claims{Room: room, Ticket: ticket, IssuedAt: iat, ExpiresAt: iat.Add(queue.DefaultTokenTTL)}
		if c.Room != want.Room || c.Ticket != want.Ticket || !c.IssuedAt.Equal(want.IssuedAt) || !c.ExpiresAt.Equal(want.ExpiresAt) {
			t.Fatalf("Check of a token just issued = %+v, want %+v", c, want)
		}
		switch expired := !now.Before(want.ExpiresAt); {
		case expired && !errors.Is(err, queue.ErrTokenExpired):
			t.Fatalf("token expiring at %v, checked at %v: %v, want ErrTokenExpired", want.ExpiresAt, now, err)
		case !expired && err != nil:
			t.Fatalf("token expiring at %v, checked at %v: %v", want.ExpiresAt, now, err)
		}
		if other != room {
			refused(t, s, other, tok, now, "another room's token")
		}

		// Changed tokens, by the op.
		var bad []string
		switch int(op) % tamperOps {
		case tamperTruncate:
			bad = append(bad, tok[:int(pos)%(len(tok)+1)])
		case tamperFlip:
			b := []byte(tok)
			b[int(pos)%len(b)] ^= 1 << (val % 8)
			bad = append(bad, string(b))
		case tamperReplace:
			b := []byte(tok)
			b[int(pos)%len(b)] = val
			bad = append(bad, string(b))
		case tamperInsert:
			i := int(pos) % (len(tok) + 1)
			bad = append(bad, tok[:i]+string([]byte{val})+tok[i:])
		case tamperAppend:
			bad = append(bad, tok+other)
		case tamperSplice:
			if other == ticket {
				other += "x"
			}
			if len(other) > 512 {
				other = other[:512]
			}
			tok2 := s.Issue(room, other, iat)
			p1, m1, _ := strings.Cut(tok, ".")
			p2, m2, _ := strings.Cut(tok2, ".")
			bad = append(bad, p1+"."+m2, p2+"."+m1)
		case tamperForge:
			bad = append(bad, forger.Issue(room, ticket, iat))
		case tamperReencode:
			p, m, _ := strings.Cut(tok, ".")
			for _, enc := range []*base64.Encoding{base64.URLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
				pb, err1 := base64.RawURLEncoding.DecodeString(p)
				mb, err2 := base64.RawURLEncoding.DecodeString(m)
				if err1 != nil || err2 != nil {
					t.Fatalf("token %q does not decode: %v, %v", tok, err1, err2)
				}
				bad = append(bad, enc.EncodeToString(pb)+"."+enc.EncodeToString(mb))
			}
		}
		for _, b := range bad {
			if b != tok {
				refused(t, s, room, b, now, "a changed token")
			}
		}
		if n := guard.calls.Load(); n != 0 {
			t.Fatalf("the replay guard was asked %d times about tokens refused", n)
		}

		// Redeem, at the real time: the token issued once, then neither it
		// nor another token of its ticket.
		rs := newTestSigner(t, tokenKey(1), queue.WithPreviousKeys(tokenKey(2)))
		ctx := context.Background()
		live := rs.Issue(room, ticket, time.Now())
		for _, b := range bad {
			if b != tok {
				if c, err := rs.Redeem(ctx, room, b); !errors.Is(err, queue.ErrTokenInvalid) || c != (queue.Claims{}) {
					t.Fatalf("Redeem of a changed token %q = %+v, %v; want ErrTokenInvalid", b, c, err)
				}
			}
		}
		if other != room {
			if _, err := rs.Redeem(ctx, other, live); !errors.Is(err, queue.ErrTokenInvalid) {
				t.Fatalf("Redeem for room %q of a token for %q: %v, want ErrTokenInvalid", other, room, err)
			}
		}
		if c, err := rs.Redeem(ctx, room, live); err != nil || c.Ticket != ticket || c.Room != room {
			t.Fatalf("Redeem of a token just issued = %+v, %v", c, err)
		}
		if _, err := rs.Redeem(ctx, room, live); !errors.Is(err, queue.ErrTokenReplayed) {
			t.Fatalf("second Redeem: %v, want ErrTokenReplayed", err)
		}
		if _, err := rs.Redeem(ctx, room, rs.Issue(room, ticket, time.Now().Add(-time.Second))); !errors.Is(err, queue.ErrTokenReplayed) {
			t.Fatalf("Redeem of another token for a used ticket: %v, want ErrTokenReplayed", err)
		}
		oldTicket := ticket[:min(len(ticket), 500)] + "-old"
		old := rs.Issue(room, oldTicket, time.Now().Add(-queue.DefaultTokenTTL-time.Second))
		if c, err := rs.Redeem(ctx, room, old); !errors.Is(err, queue.ErrTokenExpired) || c.Ticket != oldTicket {
			t.Fatalf("Redeem of an expired token = %+v, %v; want ErrTokenExpired", c, err)
		}
	})
}

// refused checks that s refuses token for room as invalid, with no
// claims.
func refused(t *testing.T, s *queue.Signer, room, token string, now time.Time, what string) {
	t.Helper()
	c, err := s.Check(room, token, now)
	if !errors.Is(err, queue.ErrTokenInvalid) || errors.Is(err, queue.ErrTokenExpired) || c != (queue.Claims{}) {
		t.Fatalf("Check of %s %q for room %q = %+v, %v; want ErrTokenInvalid", what, token, room, c, err)
	}
}
