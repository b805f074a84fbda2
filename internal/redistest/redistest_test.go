package redistest

import (
	"context"
	"testing"
	"time"
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
