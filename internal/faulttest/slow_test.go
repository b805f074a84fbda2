package faulttest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/limiter"
	"github.com/bulwarkgo/bulwark/queue"
)

// slowTimeout is the callers' deadline while Redis stalls, and slowMargin
// how long after it a call may return: generous for two shared, busy cores
// under the race detector, and far shorter than the stall (a call that
// waited for Redis would return after it).
const slowTimeout, slowMargin = 100 * time.Millisecond, 500 * time.Millisecond

// slowClient is a client whose socket reads are bounded by the caller's
// deadline. limiter.Redis documents it: "go-redis bounds socket reads by
// the context's deadline only when the client has ContextTimeoutEnabled;
// otherwise by its ReadTimeout" (three seconds by default, longer than
// the stall).
func slowClient(t *testing.T, addr string) *redis.Client {
	return newClient(t, addr, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
}

// Redis stalls for two seconds (DEBUG SLEEP) while callers with a 100ms
// deadline use it. What the docs promise:
//
//   - limiter.Redis: errors are returned only when no decision could be
//     made, among them "the caller's context is done (the context's own
//     error)", and "a call whose own context ends is not counted as a Redis
//     failure". So Allow returns context.DeadlineExceeded, and the limiter
//     does not go into its outage policy (FailClosed here, which would
//     refuse every call for the retry interval after the stall).
//   - queue.Room: Wait returns "ctx's error when ctx ends first", and
//     ErrUnavailable is for "when Redis cannot be reached"; Join's docs
//     say it fails as Wait does. So both return context.DeadlineExceeded:
//     Redis was reachable, the caller gave up.
//
// Each returns by its deadline plus slowMargin, alone and with several
// callers at once (the limiter's concurrent decisions share script calls).
// When the stall ends, each decides through Redis again at once.
func TestSlowRedis(t *testing.T) {
	srv := redistest.StartServerWith(t, "--enable-debug-command", "local")
	prefix := redistest.Prefix(t)
	lim, err := limiter.NewRedis(slowClient(t, srv.Addr), limiter.PerSecond(100, 100),
		limiter.WithPrefix(prefix+"limiter:"), limiter.WithOutagePolicy(limiter.FailClosed))
	if err != nil {
		t.Fatal(err)
	}
	room, err := queue.NewRoom("slow", 1, queue.WithRedis(slowClient(t, srv.Addr)), queue.WithKeyPrefix(prefix),
		queue.WithRejectTooLong(false), queue.WithTicketTTL(2*time.Second), queue.WithAdmissionTTL(5*time.Second),
		queue.WithPollInterval(100*time.Millisecond, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { room.Close() })
	// Warm up: scripts loaded, connections open.
	if d, err := lim.Allow(bg, "k"); err != nil || !d.Allowed {
		t.Fatalf("Allow before the stall: %+v, %v", d, err)
	}
	if a, err := room.Wait(bg); err != nil {
		t.Fatal(err)
	} else {
		a.Done()
	}

	calls := []struct {
		name    string
		callers int
		call    func(context.Context) error
	}{
		{"limiter.Redis.Allow", 1, func(ctx context.Context) error { _, err := lim.Allow(ctx, "k"); return err }},
		{"limiter.Redis.Allow", 8, func(ctx context.Context) error { _, err := lim.Allow(ctx, "k"); return err }},
		{"queue.Room.Join", 1, func(ctx context.Context) error {
			tk, err := room.Join(ctx)
			if err == nil { // the stall had not begun: give the place back
				_ = room.Leave(bg, tk.ID)
			}
			return err
		}},
		{"queue.Room.Wait", 1, func(ctx context.Context) error {
			a, err := room.Wait(ctx)
			a.Done() // a no-op unless the stall had not begun
			return err
		}},
		{"queue.Room.Join", 4, func(ctx context.Context) error {
			tk, err := room.Join(ctx)
			if err == nil { // the stall had not begun: give the place back
				_ = room.Leave(bg, tk.ID)
			}
			return err
		}},
	}
	type result struct {
		name       string
		callers    int
		start, end time.Time
		err        error
	}
	var results []result
	for attempt := 1; ; attempt++ {
		results = results[:0]
		var mu sync.Mutex
		wait := srv.Stall(t, 2*time.Second)
		for _, c := range calls {
			var wg sync.WaitGroup
			for range c.callers {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(bg, slowTimeout)
					defer cancel()
					start := time.Now()
					err := c.call(ctx)
					r := result{c.name, c.callers, start, time.Now(), err}
					mu.Lock()
					results = append(results, r)
					mu.Unlock()
				})
			}
			wg.Wait()
		}
		inOutage := lim.InOutage()
		began := wait()
		ended := began.Add(2 * time.Second)
		covered := true
		for _, r := range results {
			covered = covered && r.start.After(began) && r.end.Before(ended)
		}
		if covered {
			if inOutage {
				t.Error("the limiter counted callers' deadlines as a Redis outage")
			}
			break
		}
		if attempt == 3 {
			t.Fatal("three stalls in a row did not cover every call: the machine is too busy for this test")
		}
		t.Logf("the stall did not cover every call (the probe met a busy machine, not the stall): again")
		time.Sleep(time.Second) // a limiter that met Redis' answer at once is out of any outage
	}
	slowest := map[string]time.Duration{}
	for _, r := range results {
		took := r.end.Sub(r.start)
		key := fmt.Sprintf("%s, %d callers", r.name, r.callers)
		slowest[key] = max(slowest[key], took)
		if !errors.Is(r.err, context.DeadlineExceeded) {
			t.Errorf("%s on a stalled Redis: %v, want context.DeadlineExceeded", key, r.err)
		}
		if took > slowTimeout+slowMargin {
			t.Errorf("%s with a %v deadline returned after %v", key, slowTimeout, took)
		}
	}
	for _, c := range calls {
		key := fmt.Sprintf("%s, %d callers", c.name, c.callers)
		t.Logf("%s, %v deadline: slowest returned after %v", key, slowTimeout, slowest[key].Round(100*time.Microsecond))
	}

	// The stall is over: both decide through Redis again. FailClosed
	// would refuse, so an allowed decision came from Redis.
	if d, err := lim.Allow(bg, "after"); err != nil || !d.Allowed || lim.InOutage() {
		t.Errorf("Allow after the stall: %+v, %v, in outage %v", d, err, lim.InOutage())
	}
	tk, err := room.Join(bg)
	if err != nil {
		t.Fatalf("Join after the stall: %v", err)
	}
	if err := room.Leave(bg, tk.ID); err != nil {
		t.Fatal(err)
	}
	// Redis ran the joins late, after their callers had gone. The room
	// takes such tickets back, best effort, with a timeout of its own of a
	// second that this stall outlasts; what it could not take back lapses,
	// since nobody polls it: a ticket in line within the ticket TTL (2s
	// here), an admission within the admission TTL (5s). Either way the
	// room ends up empty.
	took := waitFor(t, 10*time.Second, "the lost joins' tickets to go", func() bool {
		s, err := room.Stats(bg)
		return err == nil && s.Length == 0 && s.Active == 0
	})
	t.Logf("the lost joins' tickets were gone %v after the stall", took.Round(100*time.Microsecond))
}

// A caller already standing in line when Redis stalls: its deadline ends
// the wait, and Wait must return the context's error (Room.Wait: "ctx's
// error when ctx ends first"). Before returning, the room asks Redis
// whether the ticket was admitted after all (an admission "that came at the
// same moment as the end of ctx ... is returned rather than wasted"), but
// waits for the answer only briefly: on a stalled Redis the caller gets its
// deadline's error on time, and an admission that comes later goes back.
func TestSlowRedisWaiterInLine(t *testing.T) {
	srv := redistest.StartServerWith(t, "--enable-debug-command", "local")
	room, err := queue.NewRoom("slow-line", 1, queue.WithRedis(slowClient(t, srv.Addr)),
		queue.WithKeyPrefix(redistest.Prefix(t)), queue.WithRejectTooLong(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { room.Close() })
	first, err := room.Wait(bg)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Done()

	const timeout = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(bg, timeout)
	defer cancel()
	type result struct {
		err  error
		took time.Duration
	}
	res := make(chan result, 1)
	start := time.Now()
	go func() { _, err := room.Wait(ctx); res <- result{err, time.Since(start)} }()
	waitFor(t, time.Second, "the caller in line", func() bool {
		s, err := room.Stats(bg)
		return err == nil && s.Length == 1
	})
	wait := srv.Stall(t, 1500*time.Millisecond)
	r := <-res
	if began := wait(); start.Add(timeout).Before(began) {
		t.Skip("the caller's deadline came before the stall (the probe met a busy machine, not the stall)")
	}
	t.Logf("Wait in line with a %v deadline, Redis stalled: %v after %v", timeout, r.err, r.took)
	if !errors.Is(r.err, context.DeadlineExceeded) {
		t.Errorf("Wait in line on a stalled Redis: %v, want context.DeadlineExceeded", r.err)
	}
	if r.took > timeout+slowMargin {
		t.Errorf("a Wait caller in line when Redis stalls returned %v after its %v deadline", r.took-timeout, timeout)
	}
}
