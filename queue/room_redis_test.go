package queue_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/queue"
)

// redisRooms returns n instances of one room, each on its own Redis client,
// as n processes of a service would have. They share a key prefix unique to
// the test.
func redisRooms(t *testing.T, n int, rate float64, opts ...queue.RoomOption) []*queue.Room {
	t.Helper()
	addr := redistest.Addr(t)
	prefix := redistest.Prefix(t)
	rooms := make([]*queue.Room, n)
	for i := range rooms {
		c := redistest.NewClient(t, addr)
		r, err := queue.NewRoom("sale", rate, append([]queue.RoomOption{queue.WithRedis(c), queue.WithKeyPrefix(prefix)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close() })
		rooms[i] = r
	}
	return rooms
}

// unlimited is a rate so high that only the active limit holds the line
// back: the next slot is a microsecond away.
const unlimited = 1e6

// redisSeq returns the ticket number in an ID.
func redisSeq(t *testing.T, id string) int {
	t.Helper()
	n, err := strconv.Atoi(id[:strings.IndexByte(id, '-')])
	if err != nil {
		t.Fatalf("ticket %q: %v", id, err)
	}
	return n
}

// waitFor polls cond until it holds or a generous deadline passes.
func redisWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func redisLength(t *testing.T, r *queue.Room) int {
	t.Helper()
	s, err := r.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return s.Length
}

func TestRedisRoomFIFOAcrossInstances(t *testing.T) {
	// With one active slot, each admission waits for the previous one's
	// Done, and each caller records itself before calling Done, so the
	// record is the exact admission order, whatever the timing. Callers
	// join concurrently on two instances; the line must admit them in
	// the order of their ticket numbers, which is the order they joined.
	rooms := redisRooms(t, 2, unlimited, queue.WithMaxActive(1))
	ctx := t.Context()
	holder, err := rooms[0].Join(ctx) // takes the only slot
	if err != nil || !holder.Admitted {
		t.Fatalf("holder: %+v %v", holder, err)
	}
	const n = 24
	var (
		mu      sync.Mutex
		order   []int
		byRoom  [2]int
		active  atomic.Int32
		overlap atomic.Bool
		wg      sync.WaitGroup
	)
	for i := range n {
		wg.Go(func() {
			a, err := rooms[i%2].Wait(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			if active.Add(1) > 1 {
				overlap.Store(true)
			}
			mu.Lock()
			order = append(order, redisSeq(t, a.Ticket))
			byRoom[i%2]++
			mu.Unlock()
			active.Add(-1)
			a.Done()
		})
	}
	redisWaitFor(t, "every caller in line", func() bool { return redisLength(t, rooms[1]) == n })
	if err := rooms[1].Done(ctx, holder.ID); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if overlap.Load() {
		t.Error("more than one caller active with WithMaxActive(1)")
	}
	if len(order) != n || byRoom[0] != n/2 || byRoom[1] != n/2 {
		t.Fatalf("admitted %d (%v per instance), want %d", len(order), byRoom, n)
	}
	if !slices.IsSorted(order) {
		t.Fatalf("admission order %v is not the joining order", order)
	}
}

func TestRedisRoomTicketsFIFOAcrossInstances(t *testing.T) {
	// Tickets taken alternately on two instances are admitted as a
	// prefix of the joining order: polling from the back, a ticket seen
	// admitted means every earlier one is already admitted.
	rooms := redisRooms(t, 2, 200, queue.WithPollInterval(10*time.Millisecond, 100*time.Millisecond))
	ctx := t.Context()
	var ids []string
	for i := range 40 {
		tk, err := rooms[i%2].Join(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tk.ID)
	}
	for k := 1; k < len(ids); k++ {
		if redisSeq(t, ids[k]) <= redisSeq(t, ids[k-1]) {
			t.Fatalf("ticket %s after %s: the instances do not share one counter", ids[k], ids[k-1])
		}
	}
	for round := 0; ; round++ {
		seen := false
		done := 0
		for k := len(ids) - 1; k >= 0; k-- {
			s, err := rooms[k%2].Status(ctx, ids[k])
			if err != nil {
				t.Fatal(err)
			}
			if s.Admitted {
				done++
				seen = true
			} else if seen {
				t.Fatalf("ticket %d admitted while ticket %d, who joined earlier, is at position %d", k+1, k, s.Position)
			}
		}
		if done == len(ids) {
			break
		}
		if round > 200 {
			t.Fatalf("only %d of %d admitted", done, len(ids))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRedisRoomRateAcrossInstances(t *testing.T) {
	// Twice as many callers as the rate admits in the window, spread over
	// two instances. The bounds are generous: the rate's accuracy is
	// measured by the benchmarks, not asserted on a loaded machine.
	const (
		rate   = 100.0
		window = time.Second
	)
	rooms := redisRooms(t, 2, rate)
	n := int(2 * rate * window.Seconds())
	var (
		admitted atomic.Int32
		wg       sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(window)
	for i := range n {
		wg.Go(func() {
			a, err := rooms[i%2].Wait(t.Context())
			if err != nil {
				if !errors.Is(err, queue.ErrClosed) {
					t.Error(err)
				}
				return
			}
			if time.Now().Before(deadline) {
				admitted.Add(1)
			}
			a.Done()
		})
	}
	time.Sleep(time.Until(deadline))
	for _, r := range rooms {
		_ = r.Close()
	}
	wg.Wait()
	want := 1 + rate*window.Seconds()
	if got := float64(admitted.Load()); got < want*0.85 || got > want*1.1 {
		t.Fatalf("admitted %v in %v at %v/s, want about %v", got, window, rate, want)
	}
}

func TestRedisRoomFull(t *testing.T) {
	rooms := redisRooms(t, 2, 1, queue.WithMaxLength(3))
	ctx := t.Context()
	for i := range 4 { // the first is admitted at once
		if _, err := rooms[i%2].Join(ctx); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if _, err := rooms[1].Join(ctx); !errors.Is(err, queue.ErrFull) {
		t.Fatalf("Join on a full line: %v, want ErrFull", err)
	}
	if _, err := rooms[0].Wait(ctx); !errors.Is(err, queue.ErrFull) {
		t.Fatalf("Wait on a full line: %v, want ErrFull", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("refusals took %v, want at once", d)
	}
	if n := redisLength(t, rooms[0]); n != 3 {
		t.Fatalf("length %d after refusals, want 3", n)
	}
}

func TestRedisRoomMaxWait(t *testing.T) {
	rooms := redisRooms(t, 2, 1, queue.WithMaxWait(100*time.Millisecond), queue.WithRejectTooLong(false))
	ctx := t.Context()
	a, err := rooms[0].Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Done()
	start := time.Now()
	if _, err := rooms[1].Wait(ctx); !errors.Is(err, queue.ErrWaitTimeout) {
		t.Fatalf("Wait past the maximum wait: %v, want ErrWaitTimeout", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 2*time.Second {
		t.Fatalf("gave up after %v, want 100ms", d)
	}
	if n := redisLength(t, rooms[0]); n != 0 {
		t.Fatalf("length %d after the timeout, want 0: the ticket must leave", n)
	}
}

func TestRedisRoomRejectsTooLong(t *testing.T) {
	rooms := redisRooms(t, 2, 1, queue.WithMaxWait(500*time.Millisecond))
	ctx := t.Context()
	a, err := rooms[0].Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Done()
	// The next slot is a second away, beyond the maximum wait.
	if _, err := rooms[1].Wait(ctx); !errors.Is(err, queue.ErrWaitTooLong) {
		t.Fatalf("Wait: %v, want ErrWaitTooLong", err)
	}
	if _, err := rooms[1].Join(ctx); !errors.Is(err, queue.ErrWaitTooLong) {
		t.Fatalf("Join: %v, want ErrWaitTooLong", err)
	}
}

func TestRedisRoomCancelledWaiterGivesUpItsPlace(t *testing.T) {
	// At 5/s: the first caller is admitted at once, B is due at 200ms
	// and C at 400ms. B gives up at 100ms, so C takes B's slot.
	rooms := redisRooms(t, 2, 5)
	ctx := t.Context()
	start := time.Now()
	first, err := rooms[0].Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Done()
	bctx, cancelB := context.WithCancel(ctx)
	bErr := make(chan error, 1)
	go func() { _, err := rooms[1].Wait(bctx); bErr <- err }()
	redisWaitFor(t, "B in line", func() bool { return redisLength(t, rooms[0]) == 1 })
	cAt := make(chan time.Duration, 1)
	go func() {
		a, err := rooms[0].Wait(ctx)
		if err != nil {
			t.Error(err)
		}
		a.Done()
		cAt <- time.Since(start)
	}()
	redisWaitFor(t, "C in line", func() bool { return redisLength(t, rooms[0]) == 2 })
	time.Sleep(time.Until(start.Add(100 * time.Millisecond)))
	cancelB()
	if err := <-bErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter got %v", err)
	}
	if at := <-cAt; at < 150*time.Millisecond || at > 350*time.Millisecond {
		t.Fatalf("C admitted at %v, want about 200ms (B's slot), well before 400ms", at)
	}
}

func TestRedisRoomTicketExpiresWhenNotPolled(t *testing.T) {
	rooms := redisRooms(t, 2, unlimited, queue.WithMaxActive(1), queue.WithTicketTTL(200*time.Millisecond),
		queue.WithPollInterval(10*time.Millisecond, 100*time.Millisecond))
	ctx := t.Context()
	holder, err := rooms[0].Wait(ctx) // takes the only slot
	if err != nil {
		t.Fatal(err)
	}
	abandoned, err := rooms[1].Join(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := rooms[0].Join(ctx)
	if err != nil || kept.Position != 2 {
		t.Fatalf("kept: %+v %v", kept, err)
	}
	// The holder outlives its ticket TTL: its instance keeps its
	// admission alive. Only the kept ticket is polled.
	for range 8 {
		time.Sleep(50 * time.Millisecond)
		if _, err := rooms[1].Status(ctx, kept.ID); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := rooms[0].Status(ctx, abandoned.ID); !errors.Is(err, queue.ErrTicketExpired) {
		t.Fatalf("abandoned ticket: %v, want ErrTicketExpired", err)
	}
	s, err := rooms[1].Status(ctx, kept.ID)
	if err != nil || s.Admitted || s.Position != 1 {
		t.Fatalf("kept ticket: %+v %v, want position 1 behind the holder", s, err)
	}
	holder.Done()
	s, err = rooms[0].Status(ctx, kept.ID)
	if err != nil || !s.Admitted {
		t.Fatalf("kept ticket after the slot freed: %+v %v", s, err)
	}
}

func TestRedisRoomAdmissionLapses(t *testing.T) {
	rooms := redisRooms(t, 2, unlimited, queue.WithMaxActive(1), queue.WithTicketTTL(150*time.Millisecond),
		queue.WithAdmissionTTL(400*time.Millisecond), queue.WithPollInterval(10*time.Millisecond, 100*time.Millisecond))
	ctx := t.Context()
	// poll polls id every 30ms, from alternate instances, for d or until
	// it is admitted.
	poll := func(id string, d time.Duration) (queue.Ticket, time.Duration) {
		t.Helper()
		start := time.Now()
		for i := 0; ; i++ {
			s, err := rooms[i%2].Status(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if s.Admitted || time.Since(start) >= d {
				return s, time.Since(start)
			}
			time.Sleep(30 * time.Millisecond)
		}
	}
	unclaimed, _ := rooms[0].Join(ctx) // admitted at once, never polled
	if !unclaimed.Admitted {
		t.Fatalf("first ticket not admitted: %+v", unclaimed)
	}
	b, _ := rooms[1].Join(ctx)
	// b waits while the unclaimed admission lasts its ticket TTL.
	s, waited := poll(b.ID, time.Second)
	if !s.Admitted || waited < 100*time.Millisecond || waited > 500*time.Millisecond {
		t.Fatalf("b after %v: %+v, want admitted once the unclaimed admission lapsed at 150ms", waited, s)
	}
	if _, err := rooms[1].Status(ctx, unclaimed.ID); !errors.Is(err, queue.ErrTicketExpired) {
		t.Fatalf("lapsed admission: %v, want ErrTicketExpired", err)
	}
	// b claimed its admission: it lasts the admission TTL, well past the
	// ticket TTL, then lapses too.
	c, _ := rooms[0].Join(ctx)
	s, waited = poll(c.ID, 2*time.Second)
	if !s.Admitted || waited < 300*time.Millisecond || waited > time.Second {
		t.Fatalf("c after %v: %+v, want admitted once b's admission lapsed at 400ms", waited, s)
	}
	// Done frees the slot at once.
	if err := rooms[0].Done(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	d, _ := rooms[1].Join(ctx)
	if !d.Admitted {
		t.Fatalf("d not admitted after c's Done: %+v", d)
	}
}

func TestRedisRoomMaxActiveAcrossInstances(t *testing.T) {
	const limit = 3
	rooms := redisRooms(t, 2, unlimited, queue.WithMaxActive(limit))
	var (
		active, peak atomic.Int32
		wg           sync.WaitGroup
	)
	for i := range 18 {
		wg.Go(func() {
			a, err := rooms[i%2].Wait(t.Context())
			if err != nil {
				t.Error(err)
				return
			}
			n := active.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(10 * time.Millisecond)
			active.Add(-1)
			a.Done()
		})
	}
	wg.Wait()
	if p := peak.Load(); p > limit || p < 2 {
		t.Fatalf("peak of %d active, want at most %d (and some overlap)", p, limit)
	}
	s, err := rooms[0].Stats(t.Context())
	if err != nil || s.Active != 0 || s.Length != 0 {
		t.Fatalf("stats after every Done: %+v %v", s, err)
	}
}

func TestRedisRoomHeldTicketsOutliveTicketTTL(t *testing.T) {
	// A Wait caller does not poll: its instance keeps its ticket, and
	// then its admission, from expiring.
	rooms := redisRooms(t, 2, unlimited, queue.WithMaxActive(1), queue.WithTicketTTL(100*time.Millisecond),
		queue.WithPollInterval(10*time.Millisecond, 50*time.Millisecond))
	ctx := t.Context()
	first, err := rooms[0].Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		a, err := rooms[1].Wait(ctx)
		a.Done()
		got <- err
	}()
	time.Sleep(350 * time.Millisecond)
	select {
	case err := <-got:
		t.Fatalf("second caller returned %v while the first holds the only slot", err)
	default:
	}
	first.Done()
	if err := <-got; err != nil {
		t.Fatalf("second caller: %v", err)
	}
}

func TestRedisRoomLeave(t *testing.T) {
	rooms := redisRooms(t, 2, unlimited, queue.WithMaxActive(1))
	ctx := t.Context()
	var ts []queue.Ticket
	for i := range 3 {
		tk, err := rooms[i%2].Join(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tk)
	}
	if err := rooms[0].Leave(ctx, ts[1].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := rooms[1].Status(ctx, ts[1].ID); !errors.Is(err, queue.ErrTicketExpired) {
		t.Fatalf("left ticket: %v", err)
	}
	if s, err := rooms[0].Status(ctx, ts[2].ID); err != nil || s.Position != 1 {
		t.Fatalf("ticket behind the one that left: %+v %v", s, err)
	}
	// Leaving an admitted ticket frees its slot.
	if err := rooms[1].Leave(ctx, ts[0].ID); err != nil {
		t.Fatal(err)
	}
	if s, err := rooms[0].Status(ctx, ts[2].ID); err != nil || !s.Admitted {
		t.Fatalf("ticket after the admitted one left: %+v %v", s, err)
	}
	for _, id := range []string{ts[0].ID, "12345-0123456789abcdef", ""} {
		if err := rooms[0].Leave(ctx, id); err != nil {
			t.Fatalf("Leave(%q): %v, want nil", id, err)
		}
		if err := rooms[0].Done(ctx, id); err != nil {
			t.Fatalf("Done(%q): %v, want nil", id, err)
		}
	}
}

func TestRedisRoomWaitTicketIsNotForStatus(t *testing.T) {
	// As in a local room, a Wait caller's ticket cannot be polled, left or
	// ended through the ticket API: its admission belongs to the caller.
	rooms := redisRooms(t, 1, 1, queue.WithMaxActive(1))
	ctx := t.Context()
	a, err := rooms[0].Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Done()
	if _, err := rooms[0].Status(ctx, a.Ticket); !errors.Is(err, queue.ErrTicketExpired) {
		t.Fatalf("Status of a Wait ticket: %v, want ErrTicketExpired", err)
	}
	_ = rooms[0].Done(ctx, a.Ticket)
	if s, _ := rooms[0].Stats(ctx); s.Active != 1 {
		t.Fatalf("Room.Done ended a Wait admission: %+v", s)
	}
}

func TestRedisRoomTokens(t *testing.T) {
	key := make([]byte, 32)
	signer, err := queue.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	rooms := redisRooms(t, 2, unlimited, queue.WithSigner(signer))
	ctx := t.Context()
	tk, err := rooms[0].Join(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s1, err := rooms[0].Status(ctx, tk.ID)
	if err != nil || !s1.Admitted {
		t.Fatalf("ticket: %+v %v", s1, err)
	}
	if c, err := signer.Check("sale", s1.Token, time.Now()); err != nil || c.Ticket != tk.ID {
		t.Fatalf("ticket token: %+v %v", c, err)
	}
	// Polled again, on another instance, the admission carries the same
	// token, so it is redeemed once.
	time.Sleep(2 * time.Millisecond)
	s2, err := rooms[1].Status(ctx, tk.ID)
	if err != nil || s2.Token != s1.Token {
		t.Fatalf("second poll: token %q, want %q (%v)", s2.Token, s1.Token, err)
	}
}

func TestRedisRoomStatsAndETA(t *testing.T) {
	rooms := redisRooms(t, 2, 10, queue.WithPollInterval(10*time.Millisecond, 100*time.Millisecond))
	ctx := t.Context()
	var last queue.Ticket
	for i := range 5 {
		tk, err := rooms[i%2].Join(ctx)
		if err != nil {
			t.Fatal(err)
		}
		last = tk
	}
	// The first was admitted at once; the last is fourth in line, due
	// four intervals on, at the configured rate since the room is new.
	if last.Position != 4 || last.ETA < 300*time.Millisecond || last.ETA > 400*time.Millisecond {
		t.Fatalf("fifth ticket: %+v, want position 4 and ETA about 400ms", last)
	}
	s, err := rooms[1].Stats(ctx)
	if err != nil || s.Length != 4 || s.Active != 1 || s.Outflow < 9 || s.Outflow > 11 {
		t.Fatalf("stats: %+v %v", s, err)
	}
	if s.ETA < 400*time.Millisecond || s.ETA > 500*time.Millisecond {
		t.Fatalf("stats ETA %v, want about 500ms", s.ETA)
	}
}

func TestRedisRoomUnavailable(t *testing.T) {
	srv := redistest.StartServer(t)
	// No retries: each call fails at once while the server is down.
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialerRetries: 1, DialerRetryTimeout: time.Millisecond})
	t.Cleanup(func() { _ = client.Close() })
	r, err := queue.NewRoom("down", 1, queue.WithRedis(client), queue.WithKeyPrefix(redistest.Prefix(t)),
		queue.WithMaxWait(5*time.Second), queue.WithRejectTooLong(false))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := t.Context()
	first, err := r.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Done()
	// A caller in line when Redis goes down keeps waiting; when Redis
	// comes back without its ticket, it learns the ticket is gone.
	waiting := make(chan error, 1)
	go func() { _, err := r.Wait(ctx); waiting <- err }()
	redisWaitFor(t, "a caller in line", func() bool { return redisLength(t, r) == 1 })

	srv.Kill()
	if _, err := r.Join(ctx); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("Join: %v, want ErrUnavailable", err)
	}
	if _, err := r.Wait(ctx); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("Wait: %v, want ErrUnavailable", err)
	}
	if _, err := r.Status(ctx, "1-0123456789abcdef"); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("Status: %v, want ErrUnavailable", err)
	}
	if err := r.Leave(ctx, "1-0123456789abcdef"); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("Leave: %v, want ErrUnavailable", err)
	}
	if err := r.Done(ctx, "1-0123456789abcdef"); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("Done: %v, want ErrUnavailable", err)
	}
	if _, err := r.Stats(ctx); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("Stats: %v, want ErrUnavailable", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.Join(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Join with a cancelled context: %v, want context.Canceled", err)
	}
	select {
	case err := <-waiting:
		t.Fatalf("caller in line returned %v during the outage", err)
	case <-time.After(100 * time.Millisecond):
	}

	srv.Start(t)
	if err := <-waiting; !errors.Is(err, queue.ErrTicketExpired) {
		t.Fatalf("caller whose ticket Redis lost: %v, want ErrTicketExpired", err)
	}
	tk, err := r.Join(ctx)
	if err != nil || !tk.Admitted {
		t.Fatalf("Join after Redis came back: %+v %v", tk, err)
	}
}

func TestRedisRoomCloseWakesWaiters(t *testing.T) {
	rooms := redisRooms(t, 2, 1)
	ctx := t.Context()
	first, err := rooms[0].Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Done()
	errs := make(chan error, 3)
	for range 3 {
		go func() { _, err := rooms[0].Wait(ctx); errs <- err }()
	}
	redisWaitFor(t, "callers in line", func() bool { return redisLength(t, rooms[1]) == 3 })
	if err := rooms[0].Close(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := <-errs; !errors.Is(err, queue.ErrClosed) {
			t.Fatalf("waiter got %v, want ErrClosed", err)
		}
	}
	// Their tickets left the line, so the other instance's callers do
	// not wait behind them.
	if n := redisLength(t, rooms[1]); n != 0 {
		t.Fatalf("length %d after Close, want 0", n)
	}
	if _, err := rooms[0].Wait(ctx); !errors.Is(err, queue.ErrClosed) {
		t.Fatalf("Wait after Close: %v", err)
	}
	if err := rooms[0].Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestRedisRoomMetrics(t *testing.T) {
	// Two instances report to one provider: an expired ticket is counted
	// once (by whichever instance's script dropped it), and a ticket's
	// admission is counted when Status first sees it.
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	addr := redistest.Addr(t)
	prefix := redistest.Prefix(t)
	var rooms [2]*queue.Room
	for i := range rooms {
		r, err := queue.NewRoom("metrics", unlimited, queue.WithRedis(redistest.NewClient(t, addr)), queue.WithKeyPrefix(prefix),
			queue.WithMeterProvider(mp), queue.WithMaxActive(1), queue.WithTicketTTL(100*time.Millisecond),
			queue.WithPollInterval(10*time.Millisecond, 50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		rooms[i] = r
	}
	ctx := t.Context()
	holder, err := rooms[0].Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rooms[1].Join(ctx); err != nil { // expires unpolled
		t.Fatal(err)
	}
	kept, err := rooms[0].Join(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		time.Sleep(40 * time.Millisecond)
		if _, err := rooms[i%2].Status(ctx, kept.ID); err != nil {
			t.Fatal(err)
		}
	}
	holder.Done()
	if s, err := rooms[1].Status(ctx, kept.ID); err != nil || !s.Admitted {
		t.Fatalf("kept: %+v %v", s, err)
	}
	ms := roomMetrics(t, reader)
	if n := roomCount(t, ms, "bulwark.queue.room.rejected", "expired"); n != 1 {
		t.Fatalf("%d expired, want 1", n)
	}
	if n := roomCount(t, ms, "bulwark.queue.room.joined", ""); n != 3 {
		t.Fatalf("%d joined, want 3", n)
	}
	if n := roomCount(t, ms, "bulwark.queue.room.admitted", ""); n != 2 {
		t.Fatalf("%d admitted, want 2 (the Wait caller and the polled ticket)", n)
	}
	var waits uint64
	for _, p := range ms["bulwark.queue.room.wait.duration"].(metricdata.Histogram[float64]).DataPoints {
		waits += p.Count
	}
	if waits != 2 {
		t.Fatalf("%d waits recorded, want 2", waits)
	}
}
