package redistest

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestMain(m *testing.M) { Main(m) }

func TestAddrAnswers(t *testing.T) {
	c := Client(t)
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestPrefixUnique(t *testing.T) {
	a, b := Prefix(t), Prefix(t)
	if a == b {
		t.Fatalf("two prefixes are equal: %q", a)
	}
}

func TestServerKillAndRestart(t *testing.T) {
	s := StartServer(t)
	c := NewClient(t, s.Addr)
	ctx := context.Background()
	if err := c.Set(ctx, Prefix(t)+"k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Kill()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING succeeded against a killed server")
	}
	s.Start(t)
	deadline := time.Now().Add(2 * time.Second)
	for c.Ping(ctx).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatal("client did not reconnect after restart")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Arguments given to StartServerWith override the defaults and hold across
// a restart: with appendfsync always an acknowledged write survives SIGKILL.
func TestServerWithPersistence(t *testing.T) {
	s := StartServerWith(t, "--appendonly", "yes", "--appendfsync", "always", "--enable-debug-command", "local")
	c := NewClient(t, s.Addr)
	ctx := context.Background()
	key := Prefix(t) + "k"
	if err := c.Set(ctx, key, "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Kill()
	s.Start(t)
	deadline := time.Now().Add(2 * time.Second)
	v, err := c.Get(ctx, key).Result()
	for err != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		v, err = c.Get(ctx, key).Result()
	}
	if err != nil || v != "v" {
		t.Fatalf("after a restart with appendonly: %q, %v; want the value written before SIGKILL", v, err)
	}
	if got := c.ConfigGet(ctx, "appendonly").Val()["appendonly"]; got != "yes" {
		t.Fatalf("appendonly = %q after Start, want the argument given to StartServerWith", got)
	}
	if err := c.Do(ctx, "DEBUG", "SLEEP", "0").Err(); err != nil {
		t.Fatalf("DEBUG with --enable-debug-command local: %v", err)
	}
}

// While a server stalls, a call with a deadline gets no answer; once the
// stall is over, it answers again.
func TestServerStall(t *testing.T) {
	s := StartServerWith(t, "--enable-debug-command", "local")
	c := redis.NewClient(&redis.Options{Addr: s.Addr, ContextTimeoutEnabled: true, MaxRetries: -1})
	defer c.Close()
	const d = 500 * time.Millisecond
	wait := s.Stall(t, d)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	err := c.Ping(ctx).Err()
	cancel()
	began := wait()
	if start.After(began) && err == nil {
		t.Fatal("PING answered during the stall")
	}
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("PING after the stall: %v", err)
	}
	if since := time.Since(began); since < d {
		t.Fatalf("the stall ended %v after it began, want at least %v", since, d)
	}
}
