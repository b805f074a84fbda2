package queue

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

// TestTokenLayout pins the token format documented on Signer, computed
// here without the package's code, so a change to it cannot go unnoticed
// (tokens in flight during a deploy must still verify).
func TestTokenLayout(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	s, err := NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	room, ticket := "flash-sale", "1234-9f8e7d6c5b4a3921"
	now := time.UnixMilli(1_900_000_000_123)
	tok := s.Issue(room, ticket, now)

	payloadText, macText, ok := strings.Cut(tok, ".")
	if !ok {
		t.Fatalf("no dot in %q", tok)
	}
	payload, err := base64.RawURLEncoding.DecodeString(payloadText)
	if err != nil {
		t.Fatal(err)
	}
	mac, err := base64.RawURLEncoding.DecodeString(macText)
	if err != nil {
		t.Fatal(err)
	}

	want := []byte{1}
	want = binary.BigEndian.AppendUint64(want, 1_900_000_000_123)
	want = binary.BigEndian.AppendUint64(want, 1_900_000_000_123+120_000)
	want = append(want, ticket...)
	if !bytes.Equal(payload, want) {
		t.Errorf("payload %x, want %x", payload, want)
	}

	h := hmac.New(sha256.New, key)
	h.Write([]byte("bulwark/queue admission token v1\x00"))
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(room))))
	h.Write([]byte(room))
	h.Write(payload)
	if !hmac.Equal(mac, h.Sum(nil)) {
		t.Errorf("mac %x is not HMAC-SHA256(domain, len(room), room, payload)", mac)
	}
}

// TestUseTokenRetry: a Use whose reply was lost is sent again by go-redis
// with the same value, and must still count as the first use; a Use with
// another value is a replay.
func TestUseTokenRetry(t *testing.T) {
	client := redistest.Client(t)
	key := redistest.Prefix(t) + "id"
	ctx := context.Background()
	run := func(value string) int {
		t.Helper()
		n, err := useToken.Run(ctx, client, []string{key}, value, 60_000).Int()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if run("first") != 1 {
		t.Fatal("the first Use was not first")
	}
	if run("first") != 1 {
		t.Error("the first Use, sent again, was taken for a replay")
	}
	if run("second") != 0 {
		t.Error("a second Use was taken for the first")
	}
}
