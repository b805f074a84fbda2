package faulttest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/degrade"
	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/limiter"
	"github.com/bulwarkgo/bulwark/queue"
)

const (
	// outage is how long Redis stays down.
	outage = 3 * time.Second
	// recoveryBound is how soon after Redis answers again each component
	// must be back on it. While Redis is down the components try it again
	// at most half a second apart (Buffer.Run, the Fleet's and the degrade
	// store's subscriptions, and the limiters' default WithRetryInterval),
	// so each finds it within half a second, then needs the round trips
	// that show it is back. (The clients' own delay is kept out of this:
	// see newClient.)
	recoveryBound = time.Second
	// retryInterval is the limiters' default WithRetryInterval, which a
	// FailClosed refusal gives as its RetryAfter.
	retryInterval = 500 * time.Millisecond
)

// limitPerSecond is the limiters' limit: 10 a second, bursts of 10.
var limitPerSecond = limiter.PerSecond(10, 10)

// fallbackShare is the FallbackLocal share: while Redis is down that
// limiter allows, by itself, 10 every 2 seconds in bursts of 5.
const fallbackShare = 0.5

// decision is one limiter call under load.
type decision struct {
	d   limiter.Decision
	err error
}

// enqueued is one Enqueue under load.
type enqueued struct {
	key string
	res queue.Enqueued
	err error
}

// TestRedisKilledUnderLoad kills Redis with SIGKILL for three seconds
// while every Redis-backed component is under load, then starts it again,
// and checks each against its documentation: what it does while Redis is
// down, and that it is back on Redis within recoveryBound of Redis
// answering again.
//
// The server runs with appendonly yes and appendfsync always, so what it
// acknowledged survives the crash, as NewRedisStore's doc requires for
// "an acknowledged Enqueue survives a crash of Redis". That lets the test
// hold the Buffer to every Enqueue that returned success, before, during
// and after the outage. Without persistence a restart loses the buffer
// (the same doc says so), and only enqueues made after the restart could
// be held to it.
func TestRedisKilledUnderLoad(t *testing.T) {
	srv := redistest.StartServerWith(t, "--appendonly", "yes", "--appendfsync", "always")
	prefix := redistest.Prefix(t)
	observer := redistest.NewClient(t, srv.Addr) // looks at Redis for the test
	var stops []func()                           // of the loads, in the order started
	stopLoads := func() {
		for _, stop := range stops {
			stop()
		}
	}
	defer stopLoads()

	// --- Limiters, one per outage policy, each with its own client.
	type limiterCase struct {
		policy    limiter.OutagePolicy
		prefix    string
		l         *limiter.Redis
		decisions events[decision]
	}
	limiters := []*limiterCase{
		{policy: limiter.FailOpen},
		{policy: limiter.FailClosed},
		{policy: limiter.FallbackLocal(fallbackShare)},
	}
	for i, lc := range limiters {
		lc.prefix = fmt.Sprintf("%slimiter%d:", prefix, i)
		l, err := limiter.NewRedis(newClient(t, srv.Addr), limitPerSecond, limiter.WithPrefix(lc.prefix),
			limiter.WithOutagePolicy(lc.policy))
		if err != nil {
			t.Fatal(err)
		}
		lc.l = l
		stops = append(stops, load(2, 2*time.Millisecond, func() {
			start := time.Now()
			d, err := l.Allow(bg, "hot")
			lc.decisions.add(start, decision{d, err})
		}))
	}

	// --- Breakers: "pay" on instance A under load, the same name on
	// instance B, and pairs of breakers that show after the restart when
	// A hears a change made on B.
	const openTimeout = 300 * time.Millisecond
	fleetA := newFleet(t, srv.Addr, prefix+"breaker:")
	fleetB := newFleet(t, srv.Addr, prefix+"breaker:")
	payOpts := []breaker.Option{breaker.WithTripPolicy(breaker.ConsecutiveFailures(3)), breaker.WithOpenTimeout(openTimeout)}
	payA := breaker.New[int]("pay", append(payOpts, breaker.WithFleet(fleetA))...)
	payB := breaker.New[int]("pay", append(payOpts, breaker.WithFleet(fleetB))...)
	syncOpts := []breaker.Option{breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(time.Minute)}
	var syncA, syncB []*breaker.Breaker[int]
	for i := range 100 {
		name := fmt.Sprintf("sync-%d", i)
		syncA = append(syncA, breaker.New[int](name, append(syncOpts, breaker.WithFleet(fleetA))...))
		syncB = append(syncB, breaker.New[int](name, append(syncOpts, breaker.WithFleet(fleetB))...))
	}
	var payFailing atomic.Bool
	errPayment := errors.New("payment provider failed")
	var payACalls, payBCalls events[error]
	stops = append(stops, load(2, 2*time.Millisecond, func() {
		start := time.Now()
		_, err := payA.Execute(bg, func(context.Context) (int, error) {
			if payFailing.Load() {
				return 0, errPayment
			}
			return 1, nil
		})
		payACalls.add(start, err)
	}))
	stops = append(stops, load(1, 2*time.Millisecond, func() {
		start := time.Now()
		_, err := payB.Execute(bg, func(context.Context) (int, error) { return 1, nil })
		payBCalls.add(start, err)
	}))

	// --- Switchboards: A re-reads its store every 100ms, so it notices
	// the outage at once; B and C re-read it once a minute, so within the
	// test they learn of a change only through the store's subscription
	// (or when it is made again). C is the operator's.
	features := []degrade.Feature{
		{Name: "recommendations", Level: degrade.Optional},
		{Name: "checkout", Level: degrade.Core},
	}
	sbA := newSwitchboard(t, srv.Addr, prefix, features, 100*time.Millisecond)
	sbB := newSwitchboard(t, srv.Addr, prefix, features, time.Minute)
	sbC := newSwitchboard(t, srv.Addr, prefix, features, time.Minute)
	by := degrade.Change{By: "faulttest", Reason: "Redis killed under load"}
	if err := sbC.Set(bg, "recommendations", degrade.State{Mode: degrade.Off}, by); err != nil {
		t.Fatal(err)
	}
	for _, sb := range []*degrade.Switchboard{sbA, sbB} {
		waitFor(t, 2*time.Second, "the switchboards to hear the first change", func() bool { return !sb.Enabled(bg, "recommendations") })
	}
	var switchChecks events[[2]bool] // recommendations on A, on B
	stops = append(stops, load(1, time.Millisecond, func() {
		start := time.Now()
		switchChecks.add(start, [2]bool{sbA.Enabled(bg, "recommendations"), sbB.Enabled(bg, "recommendations")})
	}))

	// --- Room: 20 admissions a second, callers who wait up to 1.5s.
	const roomRate = 20
	room, err := queue.NewRoom("fault", roomRate, queue.WithRedis(newClient(t, srv.Addr)), queue.WithKeyPrefix(prefix),
		queue.WithMaxWait(time.Minute), queue.WithRejectTooLong(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { room.Close() })
	var waits events[error]
	stops = append(stops, load(4, 5*time.Millisecond, func() {
		ctx, cancel := context.WithTimeout(bg, 1500*time.Millisecond)
		defer cancel()
		start := time.Now()
		a, err := room.Wait(ctx)
		waits.add(start, err)
		if err == nil {
			a.Done()
		}
	}))

	// --- Buffer: producers on one client, a consumer on another, sharing
	// the buffer "orders". The consumer's leases are short, so that what
	// it had not acknowledged when Redis died is delivered again soon.
	producer := newBuffer(t, srv.Addr, prefix)
	consumer := newBuffer(t, srv.Addr, prefix, queue.WithConcurrency(4), queue.WithVisibilityTimeout(time.Second),
		queue.WithBufferPollInterval(100*time.Millisecond), queue.WithBackoff(50*time.Millisecond, time.Second))
	var deliveredMu sync.Mutex
	delivered := map[string]int{} // key → deliveries
	var deliveries events[string] // every delivery, by key
	runCtx, stopRun := context.WithCancel(bg)
	runDone := make(chan error, 1)
	go func() {
		runDone <- consumer.Run(runCtx, func(_ context.Context, m queue.Message) error {
			deliveredMu.Lock()
			delivered[m.Key]++
			deliveredMu.Unlock()
			deliveries.add(time.Now(), m.Key)
			return nil
		})
	}()
	defer func() {
		stopRun()
		if err := <-runDone; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	}()
	var enqueues events[enqueued]
	var orderSeq atomic.Int64
	stops = append(stops, load(3, 3*time.Millisecond, func() {
		key := fmt.Sprintf("order-%06d", orderSeq.Add(1))
		ctx, cancel := context.WithTimeout(bg, 5*time.Second)
		defer cancel()
		start := time.Now()
		res, err := producer.Enqueue(ctx, key, []byte(key))
		enqueues.add(start, enqueued{key, res, err})
	}))

	// Everything works before the outage.
	time.Sleep(time.Second)
	for _, lc := range limiters {
		if lc.l.InOutage() {
			t.Fatalf("%v: in outage before Redis was killed", lc.policy)
		}
	}
	if len(waits.snapshot()) == 0 || len(enqueues.snapshot()) == 0 {
		t.Fatal("the room or the buffer did nothing before Redis was killed")
	}

	// ==== Redis dies.
	srv.Kill()
	downFrom := time.Now()
	t.Logf("Redis killed with SIGKILL")

	// queue.Room: "When Redis cannot be reached, Wait, Join, Status, Leave
	// and Done fail with an error matching ErrUnavailable."
	if _, err := room.Join(bg); !errors.Is(err, queue.ErrUnavailable) {
		t.Errorf("Room.Join with Redis down: %v, want ErrUnavailable", err)
	}
	if _, err := room.Status(bg, "1-0123456789abcdef"); !errors.Is(err, queue.ErrUnavailable) {
		t.Errorf("Room.Status with Redis down: %v, want ErrUnavailable", err)
	}
	if err := room.Leave(bg, "1-0123456789abcdef"); !errors.Is(err, queue.ErrUnavailable) {
		t.Errorf("Room.Leave with Redis down: %v, want ErrUnavailable", err)
	}
	if err := room.Done(bg, "1-0123456789abcdef"); !errors.Is(err, queue.ErrUnavailable) {
		t.Errorf("Room.Done with Redis down: %v, want ErrUnavailable", err)
	}
	if _, err := room.Stats(bg); !errors.Is(err, queue.ErrUnavailable) {
		t.Errorf("Room.Stats with Redis down: %v, want ErrUnavailable", err)
	}
	// queue.Buffer: Stats fails with "one matching ErrUnavailable when
	// Redis fails".
	if _, err := producer.Stats(bg); !errors.Is(err, queue.ErrUnavailable) {
		t.Errorf("Buffer.Stats with Redis down: %v, want ErrUnavailable", err)
	}

	// degrade: "while the store cannot be read it keeps deciding from the
	// last state it knew (Switchboard.StoreHealthy)", and a change cannot
	// be stored: "Errors of a Redis call match ErrUnavailable".
	waitFor(t, 2*time.Second, "switchboard A to report its store unhealthy", func() bool { return !sbA.StoreHealthy() })
	t.Logf("degrade: switchboard A reported StoreHealthy false %v after the kill", time.Since(downFrom).Round(time.Millisecond))
	if err := sbA.Set(bg, "recommendations", degrade.State{Mode: degrade.On}, by); !errors.Is(err, degrade.ErrUnavailable) {
		t.Errorf("Switchboard.Set with Redis down: %v, want ErrUnavailable", err)
	}

	// breaker.Fleet: "When Redis cannot be reached, each instance goes on
	// as a local breaker: it trips, probes and closes on its own calls, and
	// nothing waits for Redis. Its changes are not shared while Redis is
	// down."
	payFailing.Store(true)
	took := waitFor(t, 2*time.Second, "breaker A to trip on its own calls", func() bool { return payA.State() == breaker.StateOpen })
	t.Logf("breaker: A tripped %v after its dependency began to fail", took)
	payFailing.Store(false)
	took = waitFor(t, openTimeout+2*time.Second, "breaker A to close on its own probe", func() bool { return payA.State() == breaker.StateClosed })
	t.Logf("breaker: A closed %v after its dependency recovered (open timeout %v)", took, openTimeout)

	// limiter.Redis: decides by its outage policy while Redis is down.
	for _, lc := range limiters {
		if !lc.l.InOutage() {
			t.Errorf("%v: InOutage() = false with Redis down", lc.policy)
		}
	}

	time.Sleep(time.Until(downFrom.Add(outage)))
	downTo := time.Now()
	// ==== Redis comes back, with what it had acknowledged.
	srv.Start(t)
	upAt := time.Now()
	t.Logf("Redis down for %v, answering again", downTo.Sub(downFrom).Round(time.Millisecond))

	// Each component must find Redis again; they are timed together.
	type recovery struct {
		what string
		took time.Duration
	}
	var recMu sync.Mutex
	var recoveries []recovery
	var wg sync.WaitGroup
	recovered := func(what string, cond func() bool) {
		wg.Go(func() {
			for !cond() {
				if time.Since(upAt) > 10*time.Second {
					t.Errorf("%s: not back on Redis 10s after it returned", what)
					return
				}
				time.Sleep(time.Millisecond)
			}
			recMu.Lock()
			recoveries = append(recoveries, recovery{what, time.Since(upAt)})
			recMu.Unlock()
		})
	}
	for _, lc := range limiters {
		// The load calls the limiter all along: once a call has reached
		// Redis, the limiter leaves its outage policy.
		recovered("limiter "+lc.policy.String(), func() bool { return !lc.l.InOutage() })
	}
	// A change made on instance B after the restart is heard on A: B trips
	// one pair after another until A's twin of one of them opens.
	recovered("breaker fleet", func() bool {
		for i, b := range syncB {
			if b.State() == breaker.StateClosed {
				_, _ = b.Execute(bg, func(context.Context) (int, error) { return 0, errPayment })
			}
			deadline := time.Now().Add(25 * time.Millisecond)
			for time.Now().Before(deadline) {
				for _, a := range syncA[:i+1] {
					if a.State() == breaker.StateOpen {
						return true
					}
				}
				time.Sleep(time.Millisecond)
			}
		}
		return false
	})
	// An operator turns "recommendations" back on through switchboard C;
	// B, which re-reads its store only once a minute, must hear it.
	recovered("degrade", func() bool {
		ctx, cancel := context.WithTimeout(bg, 200*time.Millisecond)
		defer cancel()
		if err := sbC.Set(ctx, "recommendations", degrade.State{Mode: degrade.On}, by); err != nil {
			return false
		}
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if sbB.Enabled(bg, "recommendations") {
				return true
			}
		}
		t.Errorf("degrade: switchboard B did not hear a change made through C after the restart")
		return true
	})
	recovered("degrade StoreHealthy", sbA.StoreHealthy)
	recovered("room", func() bool {
		ctx, cancel := context.WithTimeout(bg, 200*time.Millisecond)
		defer cancel()
		tk, err := room.Join(ctx)
		if err != nil {
			return false
		}
		_ = room.Leave(bg, tk.ID)
		return true
	})
	recovered("buffer enqueue", func() bool {
		for _, e := range enqueues.snapshot() {
			if e.v.err == nil && e.start.After(upAt) {
				return true
			}
		}
		return false
	})
	recovered("buffer consumer", func() bool {
		for _, d := range deliveries.snapshot() {
			if d.start.After(upAt) {
				return true
			}
		}
		return false
	})
	wg.Wait()
	slices.SortFunc(recoveries, func(a, b recovery) int { return cmp.Compare(a.took, b.took) })
	for _, r := range recoveries {
		t.Logf("recovery: %-26s back on Redis %4dms after it answered", r.what, r.took.Milliseconds())
		if r.took > recoveryBound {
			t.Errorf("%s: back on Redis %v after it answered, want within %v", r.what, r.took, recoveryBound)
		}
	}

	// A second change reaches B through the re-established subscription:
	// B re-reads its store only once a minute.
	if err := sbC.Set(bg, "recommendations", degrade.State{Mode: degrade.Off}, by); err != nil {
		t.Fatal(err)
	}
	took = waitFor(t, time.Second, "switchboard B to hear a change through its subscription", func() bool { return !sbB.Enabled(bg, "recommendations") })
	t.Logf("degrade: B heard the next change through its subscription in %v", took)

	// Limiters decide through Redis again: a decision on a new key leaves
	// its bucket in Redis under the documented key prefix + "{" + key + "}".
	for _, lc := range limiters {
		d, err := lc.l.Allow(bg, "fresh")
		if err != nil || lc.l.InOutage() {
			t.Errorf("%v after the restart: %+v, %v, in outage %v", lc.policy, d, err, lc.l.InOutage())
		}
		if n, err := observer.Exists(bg, lc.prefix+"{fresh}").Result(); err != nil || n != 1 {
			t.Errorf("%v after the restart: the decision left no bucket in Redis (%d, %v)", lc.policy, n, err)
		}
		if lc.policy == limiter.FailClosed && !d.Allowed {
			t.Errorf("FailClosed after the restart refused a fresh key: %+v", d)
		}
	}

	// Let the loads run on Redis for a while, then stop them.
	time.Sleep(500 * time.Millisecond)
	stopLoads()

	checkLimiters(t, limiters[0].decisions.within(downFrom, downTo), limiters[1].decisions.within(downFrom, downTo),
		limiters[2].decisions.within(downFrom, downTo), downTo.Sub(downFrom))
	checkBreakers(t, &payACalls, &payBCalls, downFrom, downTo)
	for _, ev := range switchChecks.within(downFrom, downTo) {
		if ev.v[0] || ev.v[1] {
			t.Errorf("degrade: a switchboard turned recommendations on while Redis was down (A %v, B %v)", ev.v[0], ev.v[1])
			break
		}
	}
	checkRoom(t, &waits, downFrom, downTo, upAt, roomRate)
	checkBuffer(t, producer, &enqueues, downFrom, downTo, func() map[string]int {
		deliveredMu.Lock()
		defer deliveredMu.Unlock()
		return maps.Clone(delivered)
	})
}

// checkLimiters checks the decisions made entirely while Redis was down
// against the documented policies: "Decisions made by the policy have a
// nil error".
func checkLimiters(t *testing.T, open, closed, local []event[decision], down time.Duration) {
	t.Helper()
	count := func(evs []event[decision]) (allowed, refused int) {
		for _, ev := range evs {
			if ev.v.d.Allowed {
				allowed++
			} else {
				refused++
			}
		}
		return
	}
	for name, evs := range map[string][]event[decision]{"FailOpen": open, "FailClosed": closed, "FallbackLocal": local} {
		if len(evs) < 100 {
			t.Errorf("%s: only %d decisions while Redis was down", name, len(evs))
		}
		for _, ev := range evs {
			if ev.v.err != nil {
				t.Errorf("%s: a decision with Redis down returned an error: %v", name, ev.v.err)
				break
			}
		}
	}
	// FailOpen "allows every request while Redis is unreachable".
	a, r := count(open)
	t.Logf("limiter FailOpen with Redis down: %d allowed, %d refused", a, r)
	if r != 0 {
		t.Errorf("FailOpen refused %d requests while Redis was down", r)
	}
	// FailClosed "refuses every request while Redis is unreachable, with
	// RetryAfter set to the retry interval"; a refusal is a Decision whose
	// Err matches ErrLimited.
	a, r = count(closed)
	t.Logf("limiter FailClosed with Redis down: %d allowed, %d refused", a, r)
	if a != 0 {
		t.Errorf("FailClosed allowed %d requests while Redis was down", a)
	}
	for _, ev := range closed {
		if ev.v.d.RetryAfter != retryInterval || !errors.Is(ev.v.d.Err(), limiter.ErrLimited) {
			t.Errorf("FailClosed refusal: %+v (Err %v), want RetryAfter %v and Err matching ErrLimited", ev.v.d, ev.v.d.Err(), retryInterval)
			break
		}
	}
	// FallbackLocal(share) "decides with an in-process token bucket at
	// share of the global limit": here 10 every 2s, bursts of 5. Every
	// allowed decision leaves at most 4 tokens of that bucket, and no more
	// are allowed than it can hold and gain while Redis is down.
	localBurst := int(math.Ceil(float64(limitPerSecond.Burst) * fallbackShare))
	localRate := float64(limitPerSecond.Rate) / limitPerSecond.Period.Seconds() * fallbackShare
	most := localBurst + int(math.Ceil(localRate*down.Seconds())) + 1
	a, r = count(local)
	t.Logf("limiter FallbackLocal(%v) with Redis down %v: %d allowed (at most %d), %d refused", fallbackShare, down.Round(time.Millisecond), a, most, r)
	if a == 0 || r == 0 || a > most {
		t.Errorf("FallbackLocal(%v) with Redis down: %d allowed, %d refused; want some of each, at most %d allowed", fallbackShare, a, r, most)
	}
	for _, ev := range local {
		if ev.v.d.Allowed && ev.v.d.Remaining >= localBurst {
			t.Errorf("FallbackLocal allowed with %d tokens left, more than the local bucket of %d holds", ev.v.d.Remaining, localBurst)
			break
		}
	}
}

// checkBreakers checks that the breakers' calls returned at once while
// Redis was down ("nothing waits for Redis"), and that B never saw A's
// trip, which was not shared.
func checkBreakers(t *testing.T, aCalls, bCalls *events[error], downFrom, downTo time.Time) {
	t.Helper()
	// Generous for two shared cores under the race detector: a call that
	// waited for a Redis call would take a dial's timeout or more.
	const prompt = 200 * time.Millisecond
	var slowest time.Duration
	var rejected int
	evs := aCalls.within(downFrom, downTo)
	for _, ev := range evs {
		slowest = max(slowest, ev.end.Sub(ev.start))
		if errors.Is(ev.v, breaker.ErrOpen) {
			rejected++
		}
	}
	t.Logf("breaker A with Redis down: %d calls, %d rejected while open, slowest %v", len(evs), rejected, slowest)
	if slowest > prompt {
		t.Errorf("breaker A: a call with Redis down took %v, want under %v", slowest, prompt)
	}
	if rejected == 0 {
		t.Error("breaker A rejected no call while it was open")
	}
	for _, ev := range bCalls.snapshot() {
		if ev.v != nil {
			t.Errorf("breaker B, whose calls all succeed, returned %v: A's trip during the outage reached it", ev.v)
			break
		}
	}
}

// checkRoom checks the room's waits: every call made entirely while Redis
// was down failed with ErrUnavailable; callers in line when it died kept
// waiting until they were admitted after the restart or their own deadline
// ended ("callers already waiting keep waiting until their own deadline");
// no admission was invented: none came while Redis was down, and over the
// whole test the room admitted no faster than its rate; and callers who came
// after the restart were admitted again.
func checkRoom(t *testing.T, waits *events[error], downFrom, downTo, upAt time.Time, rate float64) {
	t.Helper()
	during := waits.within(downFrom, downTo)
	unavailable := 0
	for _, ev := range during {
		if errors.Is(ev.v, queue.ErrUnavailable) {
			unavailable++
		} else {
			t.Errorf("room: a Wait made while Redis was down returned %v, want ErrUnavailable", ev.v)
		}
	}
	all := waits.snapshot()
	var admitted, admittedAfter, deadline, lost int
	var first, last time.Time
	// An admission the poller saw just before the kill may reach its
	// caller a moment after it.
	const grace = 500 * time.Millisecond
	for _, ev := range all {
		if first.IsZero() || ev.start.Before(first) {
			first = ev.start
		}
		switch {
		case ev.v == nil:
			admitted++
			if ev.start.After(upAt) {
				admittedAfter++
			}
			if ev.end.After(last) {
				last = ev.end
			}
			if ev.end.After(downFrom.Add(grace)) && ev.end.Before(downTo) {
				t.Errorf("room: a caller was admitted %v after Redis died, before it came back", ev.end.Sub(downFrom))
			}
		case errors.Is(ev.v, context.DeadlineExceeded):
			deadline++
		case errors.Is(ev.v, queue.ErrUnavailable):
			lost++
		default:
			t.Errorf("room: Wait returned %v", ev.v)
		}
	}
	t.Logf("room: %d waits, %d admitted, %d ended by their deadline, %d ErrUnavailable (%d made entirely while Redis was down)",
		len(all), admitted, deadline, lost, unavailable)
	if len(during) == 0 {
		t.Error("room: no Wait was made while Redis was down")
	}
	if admittedAfter == 0 {
		t.Error("room: no caller who came after the restart was admitted")
	}
	// The line admits at its rate; after an idle spell the first arrival
	// is admitted at once.
	if most := int(rate*last.Sub(first).Seconds()) + 2; admitted > most {
		t.Errorf("room: %d admissions in %v, more than the rate of %v a second allows (%d)", admitted, last.Sub(first), rate, most)
	}
}

// checkBuffer accounts for every Enqueue made under load. Each returned
// success or an error matching ErrUnavailable ("when Redis fails, in which
// case the message may or may not be stored, so retry with the same
// key"); none made entirely while Redis was down succeeded. Every key whose
// Enqueue succeeded is delivered. Then, as the doc advises, each failed
// key is enqueued again with the same key: it is either stored now or found
// a duplicate of a message that was stored, and is delivered either way.
// Nothing is delivered that was not enqueued.
func checkBuffer(t *testing.T, b *queue.Buffer, enqueues *events[enqueued], downFrom, downTo time.Time, delivered func() map[string]int) {
	t.Helper()
	all := enqueues.snapshot()
	attempted := map[string]bool{}
	var stored, failed []string
	for _, ev := range all {
		attempted[ev.v.key] = true
		switch {
		case ev.v.err == nil && !ev.v.res.Duplicate:
			stored = append(stored, ev.v.key)
			if !ev.start.Before(downFrom) && !ev.end.After(downTo) {
				t.Errorf("buffer: Enqueue of %s succeeded while Redis was down", ev.v.key)
			}
		case ev.v.err == nil:
			t.Errorf("buffer: the first Enqueue of %s was a duplicate", ev.v.key)
		case errors.Is(ev.v.err, queue.ErrUnavailable):
			failed = append(failed, ev.v.key)
		default:
			t.Errorf("buffer: Enqueue of %s returned %v, want success or ErrUnavailable", ev.v.key, ev.v.err)
		}
	}
	during := len(enqueues.within(downFrom, downTo))
	t.Logf("buffer: %d enqueues: %d stored, %d failed with ErrUnavailable (%d made entirely while Redis was down)",
		len(all), len(stored), len(failed), during)
	if during == 0 || len(failed) < during {
		t.Errorf("buffer: %d enqueues made while Redis was down, %d failed", during, len(failed))
	}
	waitFor(t, 15*time.Second, "every stored order to be delivered", func() bool {
		got := delivered()
		for _, k := range stored {
			if got[k] == 0 {
				return false
			}
		}
		return true
	})
	var again, duplicates int
	for _, k := range failed {
		var err error
		for range 3 { // Redis is up: a failure here is not the outage's
			var res queue.Enqueued
			if res, err = b.Enqueue(bg, k, []byte(k)); err == nil {
				if res.Duplicate {
					duplicates++
				} else {
					again++
				}
				break
			}
		}
		if err != nil {
			t.Errorf("buffer: enqueueing %s again after the restart: %v", k, err)
		}
	}
	t.Logf("buffer: the %d failed enqueues, retried with their keys: %d stored now, %d had been stored (duplicates)", len(failed), again, duplicates)
	waitFor(t, 15*time.Second, "every order to be delivered", func() bool {
		got := delivered()
		for k := range attempted {
			if got[k] == 0 {
				return false
			}
		}
		return true
	})
	got := delivered()
	var repeated int
	for k, n := range got {
		if !attempted[k] {
			t.Errorf("buffer: delivered %q, which was never enqueued", k)
		}
		if n > 1 {
			repeated++
		}
	}
	// Delivery is at least once: an acknowledgement lost with Redis means
	// another delivery.
	t.Logf("buffer: all %d orders delivered, %d of them more than once", len(attempted), repeated)
	waitFor(t, 5*time.Second, "the buffer to be empty", func() bool {
		st, err := b.Stats(bg)
		return err == nil && st.Depth == 0 && st.Pending == 0 && st.Dead == 0
	})
}

// newFleet returns a breaker Fleet on its own client, closed when t ends.
func newFleet(t *testing.T, addr, prefix string) *breaker.Fleet {
	t.Helper()
	f, err := breaker.NewFleet(bg, newClient(t, addr), breaker.WithFleetPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// newSwitchboard returns a switchboard on a Redis store with its own
// client, closed when t ends.
func newSwitchboard(t *testing.T, addr, prefix string, features []degrade.Feature, refresh time.Duration) *degrade.Switchboard {
	t.Helper()
	st, err := degrade.NewRedisStore(newClient(t, addr), degrade.WithRedisPrefix(prefix+"degrade:"))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := degrade.New(features, degrade.WithStore(st), degrade.WithRefresh(refresh))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Close() })
	return sb
}

// newBuffer returns a Buffer on the Redis store "orders" with its own
// client, closed when t ends.
func newBuffer(t *testing.T, addr, prefix string, opts ...queue.BufferOption) *queue.Buffer {
	t.Helper()
	st, err := queue.NewRedisStore(newClient(t, addr), "orders", queue.WithKeyPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	b, err := queue.NewBuffer(st, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}
