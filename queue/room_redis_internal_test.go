package queue

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/redis/go-redis/v9"
)

func newTestRedisRoom(t testing.TB, rate float64, opts ...RoomOption) (*Room, *redisRoom) {
	t.Helper()
	opts = append([]RoomOption{WithRedis(redistest.Client(t)), WithKeyPrefix(redistest.Prefix(t))}, opts...)
	r, err := NewRoom("sale", rate, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, r.b.(*redisRoom)
}

func (b *redisRoom) pollerRunning() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.running
}

func TestRedisRoomPollerRunsOnlyWhileNeeded(t *testing.T) {
	r, b := newTestRedisRoom(t, 1e6)
	ctx := t.Context()
	if b.pollerRunning() {
		t.Fatal("poller running before any caller")
	}
	a, err := r.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A held admission is kept alive by the poller.
	if !b.pollerRunning() {
		t.Fatal("poller not running while an admission is held")
	}
	a.Done()
	waitUntil(t, "the poller to stop", func() bool { return !b.pollerRunning() })
	// And it starts again.
	a, err = r.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !b.pollerRunning() {
		t.Fatal("poller not running again")
	}
	a.Done()
	waitUntil(t, "the poller to stop again", func() bool { return !b.pollerRunning() })
}

func TestRedisRoomAdmissionRacingCancelIsKept(t *testing.T) {
	prefix := redistest.Prefix(t)
	opts := []RoomOption{WithRedis(redistest.Client(t)), WithKeyPrefix(prefix), WithMaxActive(1)}
	r, err := NewRoom("sale", 1e6, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	other, err := NewRoom("sale", 1e6, append(opts, WithRedis(redistest.Client(t)))...)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	b := r.b.(*redisRoom)
	ctx := t.Context()

	// Another instance's ticket holds the only slot; this instance's
	// caller waits behind it.
	x, err := other.Join(ctx)
	if err != nil || !x.Admitted {
		t.Fatalf("join: %+v %v", x, err)
	}
	tk, h, err := b.join(ctx, true)
	if err != nil || tk.Admitted {
		t.Fatalf("join: %+v %v, want in line", tk, err)
	}
	// The other instance ends its admission, which admits this caller in
	// Redis; at the same moment the caller's context ends, before this
	// instance's poller may have looked. The admission happened first:
	// the caller gets it, and its slot is not lost.
	if err := other.Done(ctx, x.ID); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	got, h, err := b.await(cctx, tk, h)
	if err != nil || !got.Admitted || got.ID != tk.ID {
		t.Fatalf("await: %+v %v, want the admission", got, err)
	}
	if s, err := r.Stats(ctx); err != nil || s.Active != 1 {
		t.Fatalf("stats: %+v %v, want the admission active", s, err)
	}
	b.release(got.ID, h)
	if s, err := r.Stats(ctx); err != nil || s.Active != 0 {
		t.Fatalf("stats after release: %+v %v", s, err)
	}
	waitUntil(t, "the poller to stop", func() bool { return !b.pollerRunning() })
}

func TestRedisRoomCancelledCallerInLineLeaves(t *testing.T) {
	r, b := newTestRedisRoom(t, 1e6, WithMaxActive(1))
	ctx := t.Context()
	if _, err := r.Join(ctx); err != nil { // takes the only slot
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { _, err := r.Wait(cctx); errc <- err }()
	waitUntil(t, "the caller to join", func() bool { s, _ := r.Stats(ctx); return s.Length == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait: %v, want context.Canceled", err)
	}
	if s, err := r.Stats(ctx); err != nil || s.Length != 0 || s.Active != 1 {
		t.Fatalf("stats: %+v %v, want an empty line", s, err)
	}
	waitUntil(t, "the poller to stop", func() bool { return !b.pollerRunning() })
}

func TestRedisRoomFullRoundRefreshesEveryChunk(t *testing.T) {
	// More callers than one poll call names: a full round pushes back
	// the deadline of every one of them, chunk after chunk.
	const n = 2*pollChunk + 100
	r, b := newTestRedisRoom(t, 1e6, WithMaxActive(1))
	ctx := t.Context()
	if _, err := r.Join(ctx); err != nil { // takes the only slot
		t.Fatal(err)
	}
	ws := make([]*redisWaiter, n)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := g; i < n; i += 8 {
				tk, _, err := b.join(ctx, false) // not registered: no poller
				if err != nil {
					t.Error(err)
					return
				}
				ws[i] = &redisWaiter{id: tk.ID, seq: idSeq(tk.ID), ch: make(chan struct{})}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	slices.SortFunc(ws, func(a, c *redisWaiter) int { return int(a.seq) - int(c.seq) })
	ids := make([]string, n)
	for i, w := range ws {
		ids[i] = w.id
	}
	// The poller is not running: rounds are run by hand.
	b.mu.Lock()
	b.waiters = slices.Clone(ws)
	b.mu.Unlock()
	before, err := b.client.ZMScore(ctx, b.keys[2], ids...).Result()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond)
	if _, err := b.round(true); err != nil {
		t.Fatal(err)
	}
	after, err := b.client.ZMScore(ctx, b.keys[2], ids...).Result()
	if err != nil {
		t.Fatal(err)
	}
	for i := range ids {
		if after[i] <= before[i] {
			t.Fatalf("ticket %d of %d: deadline %v not pushed back from %v", i, n, after[i], before[i])
		}
	}
	b.mu.Lock()
	left := len(b.waiters)
	b.mu.Unlock()
	if left != n {
		t.Fatalf("%d callers left waiting after the round, want %d", left, n)
	}
}

func TestRedisRoomCrashedInstanceLeavesLine(t *testing.T) {
	// An instance that stops refreshing its callers' tickets (a crash,
	// simulated by stopping its poller without Close) gives their places
	// up within a ticket TTL.
	client := redistest.Client(t)
	prefix := redistest.Prefix(t)
	opts := []RoomOption{WithRedis(client), WithKeyPrefix(prefix), WithMaxActive(1),
		WithTicketTTL(100 * time.Millisecond), WithPollInterval(10*time.Millisecond, 50*time.Millisecond)}
	crashed, err := NewRoom("sale", 1e6, opts...)
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewRoom("sale", 1e6, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx := t.Context()
	held, err := crashed.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _, _ = crashed.Wait(waitCtx) }()
	waitUntil(t, "a caller in line", func() bool {
		s, err := other.Stats(ctx)
		return err == nil && s.Length == 1
	})
	b := crashed.b.(*redisRoom)
	b.cancel()
	b.wg.Wait()
	start := time.Now()
	a, err := other.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("admitted after %v, want within about a ticket TTL", d)
	}
	a.Done()
	cancel()
	held.Done()
	_ = crashed.Close()
}

func idSeq(id string) uint64 {
	n, _ := strconv.ParseUint(id[:strings.IndexByte(id, '-')], 10, 64)
	return n
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRedisRoomCounterLostWithoutTheLine(t *testing.T) {
	// Under an eviction policy Redis may drop the counter alone: tickets
	// issued after that must still come after those in line.
	r, b := newTestRedisRoom(t, 1, WithMaxActive(1))
	ctx := t.Context()
	var last Ticket
	for range 3 {
		tk, err := r.Join(ctx)
		if err != nil {
			t.Fatal(err)
		}
		last = tk
	}
	if err := b.client.Del(ctx, b.keys[0]).Err(); err != nil {
		t.Fatal(err)
	}
	tk, err := r.Join(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if idSeq(tk.ID) <= idSeq(last.ID) || tk.Position != 3 {
		t.Fatalf("ticket %+v after %s, want a later number at the back", tk, last.ID)
	}
}

func TestRedisRoomRefusesFromMemoryWhileSurelyFull(t *testing.T) {
	srv := redistest.StartServer(t)
	client := redistest.NewClient(t, srv.Addr)
	r, err := NewRoom("sale", 1, WithRedis(client), WithKeyPrefix(redistest.Prefix(t)),
		WithMaxLength(2), WithRejectTooLong(false))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := t.Context()
	for range 3 { // one admitted at once, two in line
		if _, err := r.Join(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Join(ctx); !errors.Is(err, ErrFull) {
		t.Fatalf("join to a full line: %v", err)
	}
	// For the next second the line cannot have room (one admission a
	// second), so the refusal needs no Redis: with Redis gone it is still
	// ErrFull, not ErrUnavailable.
	srv.Kill()
	if _, err := r.Join(ctx); !errors.Is(err, ErrFull) {
		t.Fatalf("join while surely full, Redis down: %v, want ErrFull", err)
	}
	b := r.b.(*redisRoom)
	b.fullUntil.Store(0)
	if _, err := r.Join(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("join once the refusal is forgotten, Redis down: %v, want ErrUnavailable", err)
	}
}

func TestRedisRoomTicketLostFromRedisIsAStoreFailure(t *testing.T) {
	r, b := newTestRedisRoom(t, 1000, WithMaxActive(1))
	ctx := t.Context()
	a, err := r.Wait(ctx) // holds the only slot
	if err != nil {
		t.Fatal(err)
	}
	defer a.Done()
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		WaitMiddleware(r)(http.NotFoundHandler()).ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	}()
	waitUntil(t, "the caller to join", func() bool { s, _ := r.Stats(ctx); return s.Length == 1 })
	// The line's data is lost (a failover to a replica that lacked it).
	if err := b.client.Del(ctx, b.keys[1], b.keys[2], b.keys[4]).Err(); err != nil {
		t.Fatal(err)
	}
	<-done
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"unavailable"`) {
		t.Fatalf("got %d %s, want 503 unavailable", rec.Code, rec.Body)
	}
}

// lostReply runs the next EVAL/EVALSHA but reports a read timeout, as when
// a reply is lost on the way back.
type lostReply struct{ armed atomic.Bool }

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout (reply lost)" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func (h *lostReply) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *lostReply) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *lostReply) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		name := cmd.Name()
		if err == nil && (name == "eval" || name == "evalsha") && h.armed.CompareAndSwap(true, false) {
			err = timeoutError{}
			cmd.SetErr(err)
		}
		return err
	}
}

func TestRedisRoomJoinWithLostReplyLeavesNoTicket(t *testing.T) {
	client := redistest.Client(t)
	hook := &lostReply{}
	client.AddHook(hook)
	r, err := NewRoom("ghost", 1000, WithRedis(client), WithKeyPrefix(redistest.Prefix(t)), WithMaxActive(1))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := t.Context()
	hook.armed.Store(true)
	if _, err := r.Wait(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Wait with a lost reply: %v, want ErrUnavailable", err)
	}
	// The ticket the script added (and admitted) was taken back: the next
	// caller gets the only slot at once.
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	a, err := r.Wait(wctx)
	if err != nil {
		s, _ := r.Stats(ctx)
		t.Fatalf("second Wait: %v (stats %+v)", err, s)
	}
	a.Done()
}
