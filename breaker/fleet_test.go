package breaker_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/internal/redistest"
)

// instance is one service instance: its own Redis client and Fleet.
func newInstance(t *testing.T, addr, prefix string) *breaker.Fleet {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: 1, DialTimeout: 200 * time.Millisecond})
	f, err := breaker.NewFleet(context.Background(), c, breaker.WithFleetPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		c.Close()
	})
	return f
}

// fleetPair returns breakers named "pay" on two instances sharing a Redis,
// tripped by one failure and open for timeout.
func fleetPair(t *testing.T, timeout time.Duration) (a, b *breaker.Breaker[int]) {
	t.Helper()
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	opts := []breaker.Option{breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(timeout)}
	a = breaker.New[int]("pay", append(opts, breaker.WithFleet(newInstance(t, addr, prefix)))...)
	b = breaker.New[int]("pay", append(opts, breaker.WithFleet(newInstance(t, addr, prefix)))...)
	return a, b
}

// waitState polls until b is in state want and returns how long it took.
func waitState(t *testing.T, b *breaker.Breaker[int], want breaker.State, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for b.State() != want {
		if time.Since(start) > limit {
			t.Fatalf("%s still %v after %v, want %v", b.Name(), b.State(), limit, want)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

func TestFleetTripsTogether(t *testing.T) {
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	opts := []breaker.Option{breaker.WithTripPolicy(breaker.ConsecutiveFailures(2)), breaker.WithOpenTimeout(10 * time.Second)}
	a := breaker.New[int]("pay", append(opts, breaker.WithFleet(newInstance(t, addr, prefix)))...)
	b := breaker.New[int]("pay", append(opts, breaker.WithFleet(newInstance(t, addr, prefix)))...)
	other := breaker.New[int]("maps", append(opts, breaker.WithFleet(newInstance(t, addr, prefix)))...)

	run(t, a, fail, 2)
	if a.State() != breaker.StateOpen {
		t.Fatal("a did not trip")
	}
	took := waitState(t, b, breaker.StateOpen, time.Second)
	t.Logf("b opened %v after a", took)
	if took > 100*time.Millisecond {
		t.Errorf("b opened %v after a, want within 100ms", took)
	}
	called := false
	if _, err := b.Execute(context.Background(), func(context.Context) (int, error) { called = true; return 1, nil }); !errors.Is(err, breaker.ErrOpen) || called {
		t.Fatalf("b let a call through: %v, called=%v", err, called)
	}
	if other.State() != breaker.StateClosed {
		t.Fatal("a breaker of another name opened")
	}
}

// After the open timeout one instance sends the probe for the fleet; its
// success closes every instance's breaker.
func TestFleetProbesOnce(t *testing.T) {
	const timeout = 300 * time.Millisecond
	a, b := fleetPair(t, timeout)

	run(t, a, fail, 1)
	waitState(t, b, breaker.StateOpen, time.Second)
	time.Sleep(timeout + 50*time.Millisecond)

	var reached atomic.Int32
	release := make(chan struct{})
	dep := func(context.Context) (int, error) {
		reached.Add(1)
		<-release
		return 1, nil
	}
	var wg sync.WaitGroup
	var rejected atomic.Int32
	for i := range 20 {
		br := a
		if i%2 == 1 {
			br = b
		}
		wg.Go(func() {
			if _, err := br.Execute(context.Background(), dep); err != nil {
				if !errors.Is(err, breaker.ErrOpen) {
					t.Errorf("unexpected error: %v", err)
				}
				rejected.Add(1)
			}
		})
	}
	// Every call but the probe is rejected at once.
	deadline := time.Now().Add(5 * time.Second)
	for rejected.Load() < 19 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := reached.Load(); n != 1 {
		t.Fatalf("%d calls reached the dependency while the fleet was half-open, want 1", n)
	}
	close(release)
	wg.Wait()
	waitState(t, a, breaker.StateClosed, time.Second)
	waitState(t, b, breaker.StateClosed, time.Second)
	if _, err := b.Execute(context.Background(), ok); err != nil {
		t.Fatalf("after the probe: %v", err)
	}
}

// When another instance's probe succeeds, the instance that tripped closes
// too, without probing again.
func TestFleetProbeElsewhereClosesAll(t *testing.T) {
	const timeout = 200 * time.Millisecond
	a, b := fleetPair(t, timeout)
	run(t, a, fail, 1)
	waitState(t, b, breaker.StateOpen, time.Second)
	time.Sleep(timeout + 50*time.Millisecond)
	if v, err := b.Execute(context.Background(), ok); v != 1 || err != nil {
		t.Fatalf("b's probe: %v, %v", v, err)
	}
	waitState(t, a, breaker.StateClosed, time.Second)
	if v, err := a.Execute(context.Background(), ok); v != 1 || err != nil {
		t.Fatalf("a after the fleet closed: %v, %v", v, err)
	}
}

// A breaker created while its fleet is open learns it.
func TestFleetLateJoiner(t *testing.T) {
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	opts := []breaker.Option{breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(10 * time.Second)}
	a := breaker.New[int]("pay", append(opts, breaker.WithFleet(newInstance(t, addr, prefix)))...)
	fleetB := newInstance(t, addr, prefix)
	run(t, a, fail, 1)
	// Give the announcement time to be written before b is made.
	time.Sleep(100 * time.Millisecond)
	b := breaker.New[int]("pay", append(opts, breaker.WithFleet(fleetB))...)
	waitState(t, b, breaker.StateOpen, 2*time.Second)
}

// Without Redis each instance is a local breaker, and nothing waits for
// Redis; when it returns, the fleet trips together again.
func TestFleetWithoutRedis(t *testing.T) {
	srv := redistest.StartServer(t)
	prefix := redistest.Prefix(t)
	const timeout = 200 * time.Millisecond
	opts := []breaker.Option{breaker.WithTripPolicy(breaker.ConsecutiveFailures(2)), breaker.WithOpenTimeout(timeout)}
	a := breaker.New[int]("pay", append(opts, breaker.WithFleet(newInstance(t, srv.Addr, prefix)))...)
	b := breaker.New[int]("pay", append(opts, breaker.WithFleet(newInstance(t, srv.Addr, prefix)))...)

	srv.Kill()
	run(t, a, fail, 2)
	if a.State() != breaker.StateOpen {
		t.Fatal("a did not trip on its own")
	}
	time.Sleep(50 * time.Millisecond)
	if b.State() != breaker.StateClosed {
		t.Fatal("b opened without Redis")
	}
	// a probes on its own once its timeout runs out, and closes.
	time.Sleep(timeout + 20*time.Millisecond)
	start := time.Now()
	if v, err := a.Execute(context.Background(), ok); v != 1 || err != nil {
		t.Fatalf("a's probe without Redis: %v, %v", v, err)
	}
	t.Logf("probe without Redis took %v", time.Since(start))
	waitState(t, a, breaker.StateClosed, time.Second)

	srv.Start(t)
	// Once both have resubscribed, a trip is shared again.
	deadline := time.Now().Add(10 * time.Second)
	for {
		run(t, a, fail, 2)
		if reachesState(b, breaker.StateOpen, 200*time.Millisecond) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the fleet did not trip together after Redis came back")
		}
		// Let a close again before the next try.
		time.Sleep(timeout + 20*time.Millisecond)
		a.Execute(context.Background(), ok)
	}
}

// reachesState polls until b is in state want, for at most limit.
func reachesState(b *breaker.Breaker[int], want breaker.State, limit time.Duration) bool {
	for start := time.Now(); time.Since(start) < limit; time.Sleep(time.Millisecond) {
		if b.State() == want {
			return true
		}
	}
	return false
}

func TestNewFleetValidates(t *testing.T) {
	if _, err := breaker.NewFleet(context.Background(), nil); !errors.Is(err, breaker.ErrInvalidConfig) || !strings.Contains(err.Error(), "client") {
		t.Fatalf("nil client: %v", err)
	}
	c := redistest.Client(t)
	if _, err := breaker.NewFleet(context.Background(), c, breaker.WithFleetPrefix("a{b")); !errors.Is(err, breaker.ErrInvalidConfig) || !strings.Contains(err.Error(), "WithFleetPrefix") {
		t.Fatalf("braces: %v", err)
	}
}

// cancelAfterClaim makes the first probe claim on its client look cut off
// after Redis ran it: the claim is taken, then the caller's context is
// cancelled and the reply reported lost.
type cancelAfterClaim struct {
	cancel context.CancelFunc
	done   atomic.Bool
}

func (h *cancelAfterClaim) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *cancelAfterClaim) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *cancelAfterClaim) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if strings.Contains(strings.ToLower(cmd.Name()), "eval") &&
			strings.Contains(cmd.String(), ":probe") && h.done.CompareAndSwap(false, true) {
			h.cancel()
			return context.Canceled
		}
		return err
	}
}

func TestRegressionFleetClaimOfACancelledCallerIsGivenBack(t *testing.T) {
	// A caller that gives up while claiming the probe must not leave the
	// claim behind: every other instance would be refused until it
	// expired, an open timeout with no probe at all.
	const timeout = 2 * time.Second
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	opts := []breaker.Option{breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(timeout)}
	ca := redis.NewClient(&redis.Options{Addr: addr})
	callerCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hook := &cancelAfterClaim{cancel: cancel}
	ca.AddHook(hook)
	fa, err := breaker.NewFleet(context.Background(), ca, breaker.WithFleetPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fa.Close(); ca.Close() })
	a := breaker.New[int]("pay", append(opts, breaker.WithFleet(fa))...)
	b := breaker.New[int]("pay", append(opts, breaker.WithFleet(newInstance(t, addr, prefix)))...)

	run(t, a, fail, 1)
	waitState(t, b, breaker.StateOpen, time.Second)
	time.Sleep(timeout + 100*time.Millisecond)

	called := false
	if _, err := a.Execute(callerCtx, func(context.Context) (int, error) { called = true; return 1, nil }); err == nil || called {
		t.Fatalf("a's cancelled caller: %v, called=%v", err, called)
	}
	if !hook.done.Load() {
		t.Fatal("the claim was not cut off: the test proves nothing")
	}
	// b may probe at once: the claim went back.
	if _, err := b.Execute(context.Background(), ok); err != nil {
		t.Fatalf("b's call right after a's cancelled claim: %v (the claim was left behind)", err)
	}
	waitState(t, a, breaker.StateClosed, time.Second)
}
