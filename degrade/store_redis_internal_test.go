package degrade

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

// freezer is a TCP proxy to Redis that can stop forwarding on the
// connections it has, without closing them: a peer gone silent, as behind
// a dead NAT, which TCP does not notice for minutes.
type freezer struct {
	l      net.Listener
	target string
	frozen atomic.Int64 // connections with a lower number drop what they get
	seq    atomic.Int64
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newFreezer(t *testing.T, target string) *freezer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{l: l, target: target}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(f.close)
	return f
}

func (f *freezer) accept() {
	defer f.wg.Done()
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		r, err := net.Dial("tcp", f.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		n := f.seq.Add(1)
		f.mu.Lock()
		f.conns = append(f.conns, c, r)
		f.mu.Unlock()
		f.wg.Add(2)
		go f.pipe(n, c, r)
		go f.pipe(n, r, c)
	}
}

// pipe copies from src to dst until either closes, dropping what it reads
// once its connection is frozen.
func (f *freezer) pipe(n int64, dst, src net.Conn) {
	defer f.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 4096)
	for {
		k, err := src.Read(buf)
		if err != nil {
			return
		}
		if n <= f.frozen.Load() {
			continue
		}
		if _, err := dst.Write(buf[:k]); err != nil {
			return
		}
	}
}

// freeze silences every connection made so far; later ones work.
func (f *freezer) freeze() { f.frozen.Store(f.seq.Load()) }

func (f *freezer) close() {
	_ = f.l.Close()
	f.mu.Lock()
	for _, c := range f.conns {
		_ = c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func TestRedisStoreReplacesSilentSubscription(t *testing.T) {
	addr := redistest.Addr(t)
	proxy := newFreezer(t, addr)
	client := redis.NewClient(&redis.Options{Addr: proxy.l.Addr().String()})
	t.Cleanup(func() { _ = client.Close() })
	st, err := NewRedisStore(client, WithRedisPrefix(redistest.Prefix(t)))
	if err != nil {
		t.Fatal(err)
	}
	rs := st.(*redisStore)
	rs.pingEvery = 100 * time.Millisecond

	var calls atomic.Int64
	stop := st.Watch(func() { calls.Add(1) })
	defer stop()
	deadline := time.Now().Add(time.Second)
	for calls.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("not subscribed")
		}
		time.Sleep(time.Millisecond)
	}

	proxy.freeze()
	// A change published now never reaches the frozen subscription.
	direct := redistest.NewClient(t, addr)
	if err := direct.Publish(context.Background(), rs.channel, "1").Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for calls.Load() < 2 {
		if time.Since(start) > 2*time.Second {
			t.Fatal("the silent subscription was not replaced")
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("subscribed again %v after the connection went silent (ping every %v)", time.Since(start), rs.pingEvery)
}
