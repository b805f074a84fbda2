package degrade_test

import (
	"context"
	"encoding/json"
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

	"github.com/bulwarkgo/bulwark/degrade"
	"github.com/bulwarkgo/bulwark/internal/redistest"
)

var redisFeatures = []degrade.Feature{
	{Name: "checkout", Level: degrade.Core},
	{Name: "search", Level: degrade.Important},
	{Name: "recommendations", Level: degrade.Optional},
}

var bg = context.Background()

// newRedisStore returns a store on client under prefix.
func newRedisStore(t *testing.T, client redis.UniversalClient, prefix string, opts ...degrade.RedisStoreOption) degrade.Store {
	t.Helper()
	st, err := degrade.NewRedisStore(client, append([]degrade.RedisStoreOption{degrade.WithRedisPrefix(prefix)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// newRedisBoard returns a switchboard of redisFeatures on its own client
// of the Redis at addr, sharing prefix, closed when t ends.
func newRedisBoard(t *testing.T, addr, prefix string, opts ...degrade.Option) *degrade.Switchboard {
	t.Helper()
	st := newRedisStore(t, redistest.NewClient(t, addr), prefix)
	sb, err := degrade.New(redisFeatures, append([]degrade.Option{degrade.WithStore(st)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Close() })
	return sb
}

// waitFor polls cond until it holds or within has passed, and returns how
// long it took.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(100 * time.Microsecond)
	}
	return time.Since(start)
}

func state(m degrade.Mode) degrade.State { return degrade.State{Mode: m} }

func TestRedisStorePropagatesWithin100ms(t *testing.T) {
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	// Re-reads far apart: only pub/sub can be this quick.
	a := newRedisBoard(t, addr, prefix, degrade.WithRefresh(time.Hour))
	b := newRedisBoard(t, addr, prefix, degrade.WithRefresh(time.Hour))
	by := degrade.Change{By: "alice", Reason: "test"}

	// The first change may race b's subscription, whose confirmation
	// makes b re-read: either way b converges.
	if err := a.Set(bg, "recommendations", state(degrade.Off), by); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "b sees the first change", func() bool { return !b.Enabled(bg, "recommendations") })

	const rounds = 30
	var lat []time.Duration
	for i := range rounds {
		from, to := a, b
		if i%2 == 1 {
			from, to = b, a
		}
		// Alternate features and flip each, so every round is a change.
		name := []string{"search", "recommendations"}[i%2]
		want := !to.Enabled(bg, name)
		mode := degrade.Off
		if want {
			mode = degrade.On
		}
		start := time.Now()
		if err := from.Set(bg, name, state(mode), by); err != nil {
			t.Fatal(err)
		}
		waitFor(t, time.Second, "round "+strconv.Itoa(i), func() bool { return to.Enabled(bg, name) == want })
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	t.Logf("propagation from Set to Enabled on the other instance over %d changes: p50 %v, p90 %v, max %v",
		rounds, lat[rounds/2], lat[rounds*9/10], lat[rounds-1])
}

func TestRedisStoreShedAndRestorePropagate(t *testing.T) {
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	a := newRedisBoard(t, addr, prefix, degrade.WithRefresh(time.Hour))
	b := newRedisBoard(t, addr, prefix, degrade.WithRefresh(time.Hour))

	if err := a.Shed(bg, degrade.Important, degrade.Change{By: "bob", Reason: "双十一"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "b sheds", func() bool { return b.Shedding() == degrade.Important })
	for name, want := range map[string]bool{"checkout": true, "search": false, "recommendations": false} {
		if got := b.Enabled(bg, name); got != want {
			t.Errorf("shed: b.Enabled(%s) = %v, want %v", name, got, want)
		}
	}
	if st, _ := b.Status("search"); st.Source != degrade.SourceShed {
		t.Errorf("b: search source = %s, want shed", st.Source)
	}

	if err := b.Restore(bg, degrade.Change{By: "bob", Reason: "over"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "a restores", func() bool { return a.Shedding() == 0 })
	for _, name := range []string{"checkout", "search", "recommendations"} {
		if !a.Enabled(bg, name) {
			t.Errorf("restored: a.Enabled(%s) = false", name)
		}
	}
}

func TestRedisStoreAuditTrail(t *testing.T) {
	client := redistest.Client(t)
	prefix := redistest.Prefix(t)
	st := newRedisStore(t, client, prefix, degrade.WithRedisAuditSize(3))
	sb, err := degrade.New(redisFeatures, degrade.WithStore(st))
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()

	steps := []func() error{
		func() error {
			return sb.Set(bg, "recommendations", state(degrade.Off), degrade.Change{By: "alice", Reason: "reviews DB down"})
		},
		func() error {
			return sb.Set(bg, "recommendations", state(degrade.On), degrade.Change{By: "bob", Reason: "reviews DB back"})
		},
		func() error { return sb.Shed(bg, degrade.Optional, degrade.Change{By: "carol", Reason: "load"}) },
		func() error { return sb.Restore(bg, degrade.Change{By: "dave", Reason: "calm"}) },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}

	got, err := sb.Audit(bg, 10)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range got {
		actions = append(actions, e.By+":"+e.Action)
	}
	// Bounded to 3, newest first: alice's entry is gone.
	if want := []string{"dave:restore", "carol:shed", "bob:set"}; !slices.Equal(actions, want) {
		t.Fatalf("audit = %v, want %v", actions, want)
	}
	if n, err := client.LLen(bg, prefix+"{default}:audit").Result(); err != nil || n != 3 {
		t.Fatalf("audit list holds %d entries (%v), want 3", n, err)
	}

	set := got[2]
	var before, after degrade.Manual
	if err := json.Unmarshal(set.Before, &before); err != nil {
		t.Fatalf("before %s: %v", set.Before, err)
	}
	if err := json.Unmarshal(set.After, &after); err != nil {
		t.Fatalf("after %s: %v", set.After, err)
	}
	if set.Feature != "recommendations" || set.Reason != "reviews DB back" || set.At.IsZero() ||
		before.State.Mode != degrade.Off || before.By != "alice" || after.State.Mode != degrade.On || after.By != "bob" {
		t.Errorf("set entry = %+v (before %+v, after %+v)", set, before, after)
	}
	if shed := got[1]; string(shed.After) != `"optional"` || string(shed.Before) != `"none"` || shed.Reason != "load" {
		t.Errorf("shed entry = %+v, after %s, before %s", shed, shed.After, shed.Before)
	}

	if one, err := sb.Audit(bg, 1); err != nil || len(one) != 1 || one[0].Action != "restore" {
		t.Errorf("Audit(1) = %+v, %v", one, err)
	}
	if none, err := sb.Audit(bg, 0); err != nil || len(none) != 0 {
		t.Errorf("Audit(0) = %+v, %v", none, err)
	}
}

// deaf is a store whose notifications are all lost.
type deaf struct{ degrade.Store }

func (deaf) Watch(func()) func() { return func() {} }

func TestRedisStoreRereadCatchesLostNotifications(t *testing.T) {
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	a := newRedisBoard(t, addr, prefix)
	st := newRedisStore(t, redistest.NewClient(t, addr), prefix)
	b, err := degrade.New(redisFeatures, degrade.WithStore(deaf{st}), degrade.WithRefresh(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	if err := a.Set(bg, "search", state(degrade.Off), degrade.Change{By: "alice"}); err != nil {
		t.Fatal(err)
	}
	d := waitFor(t, 2*time.Second, "b re-reads", func() bool { return !b.Enabled(bg, "search") })
	t.Logf("seen through the re-read alone after %v", d)
}

func TestRedisStoreSurvivesKilledSubscription(t *testing.T) {
	srv := redistest.StartServer(t)
	admin := redistest.NewClient(t, srv.Addr)
	prefix := redistest.Prefix(t)
	a := newRedisBoard(t, srv.Addr, prefix, degrade.WithRefresh(100*time.Millisecond))
	b := newRedisBoard(t, srv.Addr, prefix, degrade.WithRefresh(100*time.Millisecond))

	on := true
	for i := range 10 {
		// Kill every subscriber connection (the server is this test's
		// own) and change the state before they are back.
		if err := admin.Do(bg, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
			t.Fatal(err)
		}
		on = !on
		mode := degrade.Off
		if on {
			mode = degrade.On
		}
		if err := a.Set(bg, "recommendations", state(mode), degrade.Change{By: "alice"}); err != nil {
			t.Fatal(err)
		}
		d := waitFor(t, 2*time.Second, "b converges after round "+strconv.Itoa(i),
			func() bool { return b.Enabled(bg, "recommendations") == on })
		t.Logf("round %d: b converged after %v", i, d)
	}
}

func TestRedisStoreOutageKeepsLastState(t *testing.T) {
	srv := redistest.StartServer(t)
	prefix := redistest.Prefix(t)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(bg)
	a := newRedisBoard(t, srv.Addr, prefix, degrade.WithRefresh(100*time.Millisecond), degrade.WithMeterProvider(mp))
	b := newRedisBoard(t, srv.Addr, prefix, degrade.WithRefresh(100*time.Millisecond))
	by := degrade.Change{By: "alice", Reason: "outage test"}

	if err := a.Set(bg, "recommendations", state(degrade.Off), by); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "b sees the change", func() bool { return !b.Enabled(bg, "recommendations") })

	srv.Kill()
	waitFor(t, 5*time.Second, "a notices the outage", func() bool { return !a.StoreHealthy() })
	waitFor(t, 5*time.Second, "b notices the outage", func() bool { return !b.StoreHealthy() })
	if a.Enabled(bg, "recommendations") || b.Enabled(bg, "recommendations") || !a.Enabled(bg, "search") {
		t.Error("the last known state was not kept")
	}
	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	err := a.Set(ctx, "recommendations", state(degrade.On), by)
	cancel()
	if !errors.Is(err, degrade.ErrUnavailable) {
		t.Fatalf("Set while Redis is down = %v, want ErrUnavailable", err)
	}
	var netErr interface{ Timeout() bool }
	if !errors.As(err, &netErr) {
		t.Errorf("Set's error %v does not wrap the network error", err)
	}
	if a.Enabled(bg, "recommendations") {
		t.Error("a failed Set changed the state")
	}
	if n := sumCounter(t, reader, "bulwark.degrade.store.errors"); n == 0 {
		t.Error("bulwark.degrade.store.errors = 0 during an outage")
	}

	srv.Start(t)
	waitFor(t, 5*time.Second, "a recovers", a.StoreHealthy)
	waitFor(t, 5*time.Second, "b recovers", b.StoreHealthy)
	// The restarted server lost its data (no persistence): what the
	// switchboards knew is newer than the empty store, so they keep it.
	if a.Enabled(bg, "recommendations") || b.Enabled(bg, "recommendations") {
		t.Error("an empty store after a restart overrode the last known state")
	}
	// A change made now is newer than anything they knew.
	if err := a.Set(bg, "search", state(degrade.Off), by); err != nil {
		t.Fatalf("Set after recovery: %v", err)
	}
	waitFor(t, time.Second, "b sees a change made after recovery", func() bool {
		return !b.Enabled(bg, "search") && b.Enabled(bg, "recommendations")
	})
	if !a.Enabled(bg, "recommendations") {
		t.Error("a kept a setting the store no longer holds after a newer change")
	}
}

func sumCounter(t *testing.T, r *sdkmetric.ManualReader, name string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(bg, &rm); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, dp := range s.DataPoints {
					n += dp.Value
				}
			}
		}
	}
	return n
}

func TestRedisStoreConcurrentUpdatesLoseNothing(t *testing.T) {
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	stores := []degrade.Store{
		newRedisStore(t, redistest.NewClient(t, addr), prefix),
		newRedisStore(t, redistest.NewClient(t, addr), prefix),
	}
	const workers, each = 4, 25 // per store
	// Each update adds one to a counter kept in a feature's reason.
	incr := func(cur degrade.Stored) (degrade.Stored, degrade.AuditEntry, error) {
		n, _ := strconv.Atoi(cur.Manual["counter"].Reason)
		n++
		if cur.Manual == nil {
			cur.Manual = map[string]degrade.Manual{}
		}
		cur.Manual["counter"] = degrade.Manual{State: state(degrade.On), Reason: strconv.Itoa(n)}
		return cur, degrade.AuditEntry{Action: "set", Feature: "counter", Reason: strconv.Itoa(n)}, nil
	}
	var wg sync.WaitGroup
	var ok atomic.Int64
	errs := make(chan error, 2*workers*each)
	for _, st := range stores {
		for range workers {
			wg.Go(func() {
				var last uint64
				for range each {
					got, err := st.Update(bg, incr)
					if err != nil {
						errs <- err
						continue
					}
					if got.Version <= last {
						errs <- errors.New("version did not grow: " + strconv.FormatUint(got.Version, 10))
					}
					last = got.Version
					ok.Add(1)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	total := int(ok.Load())
	st, err := stores[0].Load(bg)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Manual["counter"].Reason; got != strconv.Itoa(total) {
		t.Fatalf("counter = %s after %d successful updates: a change was lost", got, total)
	}
	audit, err := stores[1].Audit(bg, 2*total)
	if err != nil {
		t.Fatal(err)
	}
	if len(audit) != total {
		t.Fatalf("audit holds %d entries, want %d", len(audit), total)
	}
	for i, e := range audit {
		if want := strconv.Itoa(total - i); e.Reason != want {
			t.Fatalf("audit[%d] reason = %s, want %s", i, e.Reason, want)
		}
	}
}

func TestRedisStoreUpdateGivesUpWithErrConflict(t *testing.T) {
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	a := newRedisStore(t, redistest.NewClient(t, addr), prefix)
	b := newRedisStore(t, redistest.NewClient(t, addr), prefix)
	bump := func(cur degrade.Stored) (degrade.Stored, degrade.AuditEntry, error) {
		return cur, degrade.AuditEntry{Action: "b"}, nil
	}
	calls := 0
	_, err := a.Update(bg, func(cur degrade.Stored) (degrade.Stored, degrade.AuditEntry, error) {
		calls++
		// Another instance always changes the state meanwhile.
		if _, err := b.Update(bg, bump); err != nil {
			t.Error(err)
		}
		return cur, degrade.AuditEntry{Action: "a"}, nil
	})
	if !errors.Is(err, degrade.ErrConflict) {
		t.Fatalf("Update = %v, want ErrConflict", err)
	}
	if calls < 2 {
		t.Errorf("fn was called %d times: Update did not retry", calls)
	}
	audit, err := a.Audit(bg, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(audit) != calls {
		t.Errorf("audit holds %d entries after %d changes by b", len(audit), calls)
	}
	for _, e := range audit {
		if e.Action != "b" {
			t.Errorf("a change that lost its race was recorded: %+v", e)
		}
	}

	// fn's own error comes back as it is, and nothing is written.
	boom := errors.New("boom")
	if _, err := a.Update(bg, func(degrade.Stored) (degrade.Stored, degrade.AuditEntry, error) {
		return degrade.Stored{}, degrade.AuditEntry{}, boom
	}); err != boom {
		t.Errorf("Update = %v, want fn's error", err)
	}
}

func TestRedisStoreIgnoresStaleVersions(t *testing.T) {
	client := redistest.Client(t)
	prefix := redistest.Prefix(t)
	st := newRedisStore(t, client, prefix)
	channel := prefix + "{default}:changes"

	var calls atomic.Int64
	stop := st.Watch(func() { calls.Add(1) })
	defer stop()
	waitFor(t, time.Second, "subscribed", func() bool { return calls.Load() == 1 })

	got, err := st.Update(bg, func(cur degrade.Stored) (degrade.Stored, degrade.AuditEntry, error) {
		cur.Shed = degrade.Optional
		return cur, degrade.AuditEntry{Action: "shed"}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "notified of the change", func() bool { return calls.Load() == 2 })

	// An older version, or the same, says nothing new.
	for _, v := range []uint64{got.Version - 1, got.Version} {
		if err := client.Publish(bg, channel, strconv.FormatUint(v, 10)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// A message it cannot read might be news: it is passed on.
	if err := client.Publish(bg, channel, "?").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "notified of the unreadable message", func() bool { return calls.Load() >= 3 })
	if n := calls.Load(); n != 3 {
		t.Errorf("%d notifications, want 3: stale versions were passed on", n)
	}
}

func TestRedisStoreWipedStateIsOlder(t *testing.T) {
	client := redistest.Client(t)
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	a := newRedisBoard(t, addr, prefix, degrade.WithRefresh(50*time.Millisecond))
	b := newRedisBoard(t, addr, prefix, degrade.WithRefresh(50*time.Millisecond))
	by := degrade.Change{By: "alice"}

	if err := a.Set(bg, "recommendations", state(degrade.Off), by); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "b sees the change", func() bool { return !b.Enabled(bg, "recommendations") })

	// The state is lost, as with a Redis restarted without persistence:
	// version 0 is older than what the switchboards hold.
	if err := client.Del(bg, prefix+"{default}:state").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // several re-reads
	if a.Enabled(bg, "recommendations") || b.Enabled(bg, "recommendations") || !b.StoreHealthy() {
		t.Fatal("a stale (empty) state replaced a newer one")
	}

	// The next change still gets a newer version than any before it.
	if err := b.Set(bg, "search", state(degrade.Off), by); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "a takes the change made after the loss", func() bool {
		return !a.Enabled(bg, "search") && a.Enabled(bg, "recommendations")
	})
}

func TestRedisStoreWatchSharesOneSubscription(t *testing.T) {
	client := redistest.Client(t)
	prefix := redistest.Prefix(t)
	st := newRedisStore(t, client, prefix)
	channel := prefix + "{default}:changes"
	subscribers := func() int64 {
		n, err := client.PubSubNumSub(bg, channel).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n[channel]
	}

	var c1, c2 atomic.Int64
	stop1 := st.Watch(func() { c1.Add(1) })
	stop2 := st.Watch(func() { c2.Add(1) })
	waitFor(t, time.Second, "subscribed", func() bool { return subscribers() == 1 })
	if _, err := st.Update(bg, func(cur degrade.Stored) (degrade.Stored, degrade.AuditEntry, error) {
		return cur, degrade.AuditEntry{}, nil
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "both watchers notified", func() bool { return c1.Load() > 0 && c2.Load() > 0 })

	stop1()
	stop1() // idempotent
	if n := subscribers(); n != 1 {
		t.Errorf("%d subscribers with one watcher left, want 1", n)
	}
	stop2()
	waitFor(t, time.Second, "unsubscribed", func() bool { return subscribers() == 0 })

	// Watching again starts a new subscription.
	var c3 atomic.Int64
	stop3 := st.Watch(func() { c3.Add(1) })
	defer stop3()
	waitFor(t, time.Second, "subscribed again", func() bool { return c3.Load() > 0 })
}

func TestRedisStoreContextErrors(t *testing.T) {
	st := newRedisStore(t, redistest.Client(t), redistest.Prefix(t))
	cancelled, cancel := context.WithCancel(bg)
	cancel()
	expired, cancel2 := context.WithDeadline(bg, time.Now().Add(-time.Second))
	defer cancel2()
	noop := func(cur degrade.Stored) (degrade.Stored, degrade.AuditEntry, error) {
		t.Error("fn called with a done context")
		return cur, degrade.AuditEntry{}, nil
	}
	for _, c := range []struct {
		ctx  context.Context
		want error
	}{{cancelled, context.Canceled}, {expired, context.DeadlineExceeded}} {
		if _, err := st.Load(c.ctx); !errors.Is(err, c.want) {
			t.Errorf("Load = %v, want %v", err, c.want)
		}
		if _, err := st.Update(c.ctx, noop); !errors.Is(err, c.want) {
			t.Errorf("Update = %v, want %v", err, c.want)
		}
		if _, err := st.Audit(c.ctx, 1); !errors.Is(err, c.want) {
			t.Errorf("Audit = %v, want %v", err, c.want)
		}
	}
}

func TestRedisStoreDeadlineDuringOutage(t *testing.T) {
	srv := redistest.StartServer(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = client.Close() })
	st := newRedisStore(t, client, redistest.Prefix(t))
	// A server that accepts connections but never answers.
	if err := redistest.NewClient(t, srv.Addr).Do(bg, "CLIENT", "PAUSE", "2000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	defer cancel()
	_, err := st.Load(ctx)
	if !errors.Is(err, degrade.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Load past its deadline = %v, want ErrUnavailable and DeadlineExceeded", err)
	}
}

func TestNewRedisStoreRejectsBadConfig(t *testing.T) {
	client := redistest.Client(t)
	for _, c := range []struct {
		name   string
		client redis.UniversalClient
		opts   []degrade.RedisStoreOption
		field  string
	}{
		{"nil client", nil, nil, "client"},
		{"nil option", client, []degrade.RedisStoreOption{nil}, "opts"},
		{"empty name", client, []degrade.RedisStoreOption{degrade.WithRedisName("")}, "WithRedisName"},
		{"brace in name", client, []degrade.RedisStoreOption{degrade.WithRedisName("a}b")}, "WithRedisName"},
		{"brace in prefix", client, []degrade.RedisStoreOption{degrade.WithRedisPrefix("x{")}, "WithRedisPrefix"},
		{"zero audit size", client, []degrade.RedisStoreOption{degrade.WithRedisAuditSize(0)}, "WithRedisAuditSize"},
		{"huge audit size", client, []degrade.RedisStoreOption{degrade.WithRedisAuditSize(2_000_000)}, "WithRedisAuditSize"},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, err := degrade.NewRedisStore(c.client, c.opts...)
			if !errors.Is(err, degrade.ErrInvalidConfig) || !strings.Contains(err.Error(), c.field) || st != nil {
				t.Errorf("NewRedisStore = %v, %v; want ErrInvalidConfig naming %s", st, err, c.field)
			}
		})
	}
}

func TestRedisStoreRejectsBadStates(t *testing.T) {
	st := newRedisStore(t, redistest.Client(t), redistest.Prefix(t))
	for name, fn := range map[string]func(degrade.Stored) degrade.Stored{
		"bad mode": func(s degrade.Stored) degrade.Stored {
			s.Manual = map[string]degrade.Manual{"x": {State: degrade.State{Mode: "sideways"}}}
			return s
		},
		"core shed": func(s degrade.Stored) degrade.Stored { s.Shed = degrade.Core; return s },
	} {
		_, err := st.Update(bg, func(cur degrade.Stored) (degrade.Stored, degrade.AuditEntry, error) {
			return fn(cur), degrade.AuditEntry{}, nil
		})
		if !errors.Is(err, degrade.ErrInvalidConfig) {
			t.Errorf("%s: Update = %v, want ErrInvalidConfig", name, err)
		}
	}
	if got, err := st.Load(bg); err != nil || got.Version != 0 {
		t.Errorf("after rejected updates Load = %+v, %v; want nothing stored", got, err)
	}
}

func TestRedisStoreMalformedState(t *testing.T) {
	client := redistest.Client(t)
	valid := `{"state":{"mode":"off"},"by":"a","at":"2025-01-01T00:00:00Z","reason":"r"}`
	for _, c := range []struct {
		name   string
		fields []string
		field  string
	}{
		{"no version", []string{"feature:x", valid}, `"version"`},
		{"bad version", []string{"version", "v2"}, `"version"`},
		{"bad json", []string{"version", "3", "feature:x", "{"}, `"feature:x"`},
		{"bad mode", []string{"version", "3", "feature:x", `{"state":{"mode":"sideways"}}`}, `"feature:x"`},
		{"core shed", []string{"version", "3", "shed", `{"level":"core"}`}, `"shed"`},
		{"unknown field", []string{"version", "3", "colour", "red"}, `"colour"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			prefix := redistest.Prefix(t)
			if err := client.HSet(bg, prefix+"{default}:state", c.fields).Err(); err != nil {
				t.Fatal(err)
			}
			st := newRedisStore(t, client, prefix)
			_, err := st.Load(bg)
			if err == nil || errors.Is(err, degrade.ErrUnavailable) || !strings.Contains(err.Error(), c.field) {
				t.Fatalf("Load = %v; want an error naming %s", err, c.field)
			}
			t.Log(err)
			_, err = st.Update(bg, func(cur degrade.Stored) (degrade.Stored, degrade.AuditEntry, error) {
				t.Error("fn called on malformed state")
				return cur, degrade.AuditEntry{}, nil
			})
			if err == nil {
				t.Error("Update on malformed state succeeded")
			}
			// A switchboard reports the store as unhealthy and decides from
			// its defaults.
			sb, err := degrade.New(redisFeatures, degrade.WithStore(st))
			if err != nil {
				t.Fatal(err)
			}
			defer sb.Close()
			if sb.StoreHealthy() {
				t.Error("StoreHealthy with malformed state")
			}
		})
	}

	prefix := redistest.Prefix(t)
	if err := client.LPush(bg, prefix+"{default}:audit", "not json").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := newRedisStore(t, client, prefix).Audit(bg, 10); err == nil || !strings.Contains(err.Error(), "audit") {
		t.Errorf("Audit of a malformed entry = %v", err)
	}
}

func TestRedisStoreRoundTrip(t *testing.T) {
	st := newRedisStore(t, redistest.Client(t), redistest.Prefix(t), degrade.WithRedisName("shop"))
	at := time.Date(2025, 11, 11, 0, 0, 0, 0, time.UTC)
	want := degrade.Stored{
		Manual: map[string]degrade.Manual{
			"search": {State: degrade.State{Mode: degrade.Percent, Percent: 12.5,
				Rules:    []degrade.Rule{{When: []degrade.Condition{{Attr: "app_version", Op: "lt", Values: []string{"2.3.0"}}}}},
				Messages: map[string]string{"zh": "搜索暂不可用"}},
				By: "alice", At: at, Reason: "rollout"},
			"recommendations": {State: state(degrade.Off), By: "bob", At: at},
		},
		Shed:   degrade.Important,
		ShedBy: &degrade.Manual{By: "carol", At: at, Reason: "双十一"},
	}
	put, err := st.Update(bg, func(degrade.Stored) (degrade.Stored, degrade.AuditEntry, error) {
		return want, degrade.AuditEntry{Action: "set"}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := st.Load(bg)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version == 0 || got.Version != put.Version {
		t.Errorf("version: Load %d, Update %d", got.Version, put.Version)
	}
	want.Version = got.Version
	gj, _ := json.Marshal(got)
	wj, _ := json.Marshal(want)
	if string(gj) != string(wj) {
		t.Errorf("Load =\n%s\nwant\n%s", gj, wj)
	}

	// Unpinning one feature and restoring deletes their fields.
	if _, err := st.Update(bg, func(cur degrade.Stored) (degrade.Stored, degrade.AuditEntry, error) {
		delete(cur.Manual, "search")
		cur.Shed, cur.ShedBy = 0, nil
		return cur, degrade.AuditEntry{Action: "restore"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	got, err = st.Load(bg)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got.Manual["search"]; ok || got.Shed != 0 || got.ShedBy != nil || len(got.Manual) != 1 {
		t.Errorf("after restore Load = %+v", got)
	}
}
