package breaker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// Fleet shares the state of breakers across the instances of a service
// through Redis, so that breakers of the same name trip together: when one
// instance opens its breaker, the others open theirs; when the open
// timeout runs out, one instance sends the probe for all; when it succeeds,
// all close.
//
// Redis carries only changes of state, never the calls: a closed breaker's
// calls never touch Redis and cost what they cost without a Fleet. A change is
// published on a channel (the others hear it within milliseconds) and kept
// in a key that expires with the open timeout, which an instance reads when
// it (re)subscribes, so one that joins late or lost its connection learns
// the state. Publishing runs in the Fleet's own goroutine, so a call that
// trips a breaker never waits for Redis.
//
// After a fleet-wide open timeout, the breakers are half-open across the
// fleet: each instance asks Redis for the probe (SET NX with an expiry) and
// only the one that gets it calls the dependency; the others reject with
// [ErrTooManyRequests] until the probe's outcome is published (success
// closes every breaker, failure opens them again) or, should the prober
// die, its claim expires and another takes over.
//
// When Redis cannot be reached, each instance goes on as a local breaker:
// it trips, probes and closes on its own calls, and nothing waits for
// Redis. Its changes are not shared while Redis is down; when Redis comes
// back the Fleet resubscribes, reads the state of its breakers again and
// shares changes from then on.
//
// A Fleet runs one goroutine to receive and one to publish; [Fleet.Close]
// stops them. Create one with [NewFleet] and give it to breakers with
// [WithFleet]. Manual control (ForceOpen, Disable, Reset) stays local to
// the instance.
type Fleet struct {
	client  redis.UniversalClient
	prefix  string
	channel string
	id      string // this instance, to skip its own messages

	mu      sync.Mutex
	members map[string][]weak.Pointer[fleetLink]

	ps     *redis.PubSub
	out    chan fleetMsg
	ctx    context.Context // done when the Fleet is closed
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
	// healthy is false from a failure of the subscription until it is
	// made again; meanwhile probes are not claimed in Redis.
	healthy atomic.Bool
}

// maxResubscribeDelay caps the wait between attempts to subscribe again
// while Redis is down, so that a Fleet is back within half a second of
// Redis' return.
const maxResubscribeDelay = 500 * time.Millisecond

// FleetOption configures a [Fleet].
type FleetOption interface{ applyFleet(*fleetConfig) }

type fleetOptionFunc func(*fleetConfig)

func (f fleetOptionFunc) applyFleet(c *fleetConfig) { f(c) }

type fleetConfig struct {
	prefix string
}

// WithFleetPrefix sets the prefix of the Fleet's keys and channel. The
// default is "bulwark:breaker:". Fleets that should share state must use
// the same prefix; it must not contain '{' or '}'.
func WithFleetPrefix(prefix string) FleetOption {
	return fleetOptionFunc(func(c *fleetConfig) { c.prefix = prefix })
}

// fleetMsg is one change to publish: kind "open" (with how long) or
// "closed", for the breakers called name.
type fleetMsg struct {
	name    string
	open    bool
	ttl     time.Duration
	release bool // give up this instance's claim on the probe
}

// NewFleet subscribes to the fleet's channel on client (a single node,
// Sentinel or Cluster client) and returns the Fleet. It fails when the
// subscription cannot be made.
func NewFleet(ctx context.Context, client redis.UniversalClient, opts ...FleetOption) (*Fleet, error) {
	if client == nil {
		return nil, configError("client", "must not be nil", nil)
	}
	c := fleetConfig{prefix: "bulwark:breaker:"}
	for _, o := range opts {
		o.applyFleet(&c)
	}
	if strings.ContainsAny(c.prefix, "{}") {
		return nil, configError("WithFleetPrefix", "must not contain '{' or '}'", strconv.Quote(c.prefix))
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	f := &Fleet{
		client:  client,
		prefix:  c.prefix,
		channel: c.prefix + "changes",
		id:      hex.EncodeToString(id[:]),
		members: map[string][]weak.Pointer[fleetLink]{},
		out:     make(chan fleetMsg, 1024),
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.ps = client.Subscribe(ctx, f.channel)
	// The first reply confirms the subscription.
	if _, err := f.ps.Receive(ctx); err != nil {
		_ = f.ps.Close()
		f.cancel()
		return nil, err
	}
	f.healthy.Store(true)
	f.wg.Add(2)
	go f.receive()
	go f.publish()
	return f, nil
}

// Close stops the Fleet's goroutines and closes its subscription. Breakers
// given the Fleet go on as local breakers.
func (f *Fleet) Close() error {
	f.mu.Lock()
	if !f.closed.CompareAndSwap(false, true) {
		f.mu.Unlock()
		return nil
	}
	f.mu.Unlock()
	f.healthy.Store(false)
	f.cancel()
	err := f.ps.Close()
	f.wg.Wait()
	return err
}

// WithFleet shares the breaker's state with the breakers of the same name
// on the other instances using the same Fleet prefix and Redis.
func WithFleet(f *Fleet) Option {
	return optionFunc(func(c *config) {
		if f == nil {
			c.fail(configError("WithFleet", "must not be nil", nil))
			return
		}
		c.fleet = f
	})
}

func (f *Fleet) key(name string) string      { return f.prefix + "{" + name + "}" }
func (f *Fleet) probeKey(name string) string { return f.prefix + "{" + name + "}:probe" }

// fleetLink is one breaker's tie to its Fleet.
type fleetLink struct {
	fleet *Fleet
	name  string
	// remote is set while the fleet holds the breaker open or half-open:
	// after the open timeout its calls wait for the fleet's probe.
	remote atomic.Bool
	// epoch counts the fleet's episodes as this instance sees them (each
	// open, close and Reset starts one); probing holds epoch+1 of the
	// episode whose probe this instance is sending, 0 when none. An outcome
	// from an earlier episode is dropped, and a probe that never ends holds
	// the slot only for its own episode.
	epoch   atomic.Uint64
	probing atomic.Uint64
	// open and closed apply a change heard from another instance.
	open   func(ttl time.Duration)
	closed func()
}

func (l *fleetLink) newEpoch() {
	l.epoch.Add(1)
	l.probing.Store(0)
}

// takeProbe reserves this instance's probe of the current episode.
func (l *fleetLink) takeProbe() (token uint64, ok bool) {
	token = l.epoch.Load() + 1
	return token, l.probing.CompareAndSwap(0, token)
}

func (f *Fleet) register(l *fleetLink) {
	f.mu.Lock()
	f.members[l.name] = append(f.members[l.name], weak.Make(l))
	f.mu.Unlock()
	// Forget the name once its breakers are gone, so resubscribing does not
	// read the state of breakers that no longer exist.
	runtime.AddCleanup(l, func(name string) { f.links(name) }, l.name)
	// A breaker made while the fleet is open must learn it; New does not
	// wait for Redis, the Fleet reads it in a goroutine of its own.
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed.Load() {
		return
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		ctx, cancel := context.WithTimeout(f.ctx, time.Second)
		defer cancel()
		f.resyncNames(ctx, []string{l.name})
	}()
}

// links returns the live links of name, dropping collected ones.
func (f *Fleet) links(name string) []*fleetLink {
	f.mu.Lock()
	defer f.mu.Unlock()
	ws := f.members[name]
	var out []*fleetLink
	kept := ws[:0]
	for _, w := range ws {
		if l := w.Value(); l != nil {
			out = append(out, l)
			kept = append(kept, w)
		}
	}
	if len(kept) == 0 {
		delete(f.members, name)
	} else {
		f.members[name] = kept
	}
	return out
}

func (f *Fleet) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.members))
	for n := range f.members {
		names = append(names, n)
	}
	return names
}

// announce queues a change for publishing; it never blocks. A change that
// finds the queue full is dropped: the others then rely on their own
// breakers, as when Redis is down.
func (f *Fleet) announce(m fleetMsg) {
	if f.closed.Load() {
		return
	}
	select {
	case f.out <- m:
	default:
	}
}

func (f *Fleet) publish() {
	defer f.wg.Done()
	for {
		select {
		case <-f.ctx.Done():
			return
		case m := <-f.out:
			ctx, cancel := context.WithTimeout(f.ctx, time.Second)
			f.send(ctx, m)
			cancel()
		}
	}
}

// send writes the state key and publishes the change. Errors are dropped:
// without Redis each instance is its own breaker.
func (f *Fleet) send(ctx context.Context, m fleetMsg) {
	if m.release {
		_ = releaseProbe.Run(ctx, f.client, []string{f.probeKey(m.name)}, f.id).Err()
		return
	}
	kind, ttl := "closed", time.Minute
	if m.open {
		kind, ttl = "open", m.ttl
	}
	payload := kind + "|" + strconv.FormatInt(ttl.Milliseconds(), 10) + "|" + f.id + "|" + m.name
	_, _ = f.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, f.key(m.name), kind, max(ttl, time.Millisecond))
		if !m.open {
			p.Del(ctx, f.probeKey(m.name))
		}
		p.Publish(ctx, f.channel, payload)
		return nil
	})
}

func (f *Fleet) receive() {
	defer f.wg.Done()
	ctx := f.ctx
	backoff := 10 * time.Millisecond
	for {
		msg, err := f.ps.ReceiveTimeout(ctx, 5*time.Second)
		if f.closed.Load() {
			return
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Quiet channel: check the connection is alive.
				if f.ps.Ping(ctx) != nil {
					f.healthy.Store(false)
				}
				continue
			}
			f.healthy.Store(false)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxResubscribeDelay)
			continue
		}
		backoff = 10 * time.Millisecond
		switch m := msg.(type) {
		case *redis.Subscription:
			// Subscribed again after losing the connection: changes may
			// have been missed.
			if m.Kind == "subscribe" {
				f.healthy.Store(true)
				rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
				f.resyncNames(rctx, f.names())
				rcancel()
			}
		case *redis.Message:
			f.heard(m.Payload)
		}
	}
}

// heard applies a change published by another instance.
func (f *Fleet) heard(payload string) {
	parts := strings.SplitN(payload, "|", 4)
	if len(parts) != 4 || parts[2] == f.id {
		return
	}
	ms, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return
	}
	for _, l := range f.links(parts[3]) {
		switch parts[0] {
		case "open":
			l.open(time.Duration(ms) * time.Millisecond)
		case "closed":
			l.closed()
		}
	}
}

// resyncNames reads the fleet's state of names and applies it.
func (f *Fleet) resyncNames(ctx context.Context, names []string) {
	for len(names) > 0 {
		chunk := names[:min(len(names), 256)]
		names = names[len(chunk):]
		vals := make([]*redis.StringCmd, len(chunk))
		ttls := make([]*redis.DurationCmd, len(chunk))
		_, err := f.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, n := range chunk {
				vals[i] = p.Get(ctx, f.key(n))
				ttls[i] = p.PTTL(ctx, f.key(n))
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return
		}
		for i, n := range chunk {
			switch vals[i].Val() {
			case "open":
				if ttl := ttls[i].Val(); ttl > 0 {
					for _, l := range f.links(n) {
						l.open(ttl)
					}
				}
			case "closed":
				for _, l := range f.links(n) {
					if l.remote.Load() {
						l.closed()
					}
				}
			}
		}
	}
}

// claimProbe takes a probe's claim when no instance holds it, or keeps it
// when this instance does. KEYS: the claim. ARGV: instance, ttl ms.
var claimProbe = redis.NewScript(`
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`)

// releaseProbe gives up a claim if this instance holds it.
var releaseProbe = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// claimProbe asks the fleet for the right to send the probe of name. When
// the Fleet is closed, the subscription is known to be down, or Redis
// cannot answer, the instance probes on its own without waiting; a caller
// whose context ends while asking does not probe.
func (f *Fleet) claimProbe(ctx context.Context, name string, ttl time.Duration) bool {
	if f.closed.Load() || !f.healthy.Load() {
		return true
	}
	rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	won, err := claimProbe.Run(rctx, f.client, []string{f.probeKey(name)}, f.id, max(ttl.Milliseconds(), 1)).Int()
	if err != nil {
		if ctx.Err() == nil {
			return true // Redis failed, not the caller
		}
		// The script may have run before the caller gave up: give the
		// claim back, or every instance would wait for a probe nobody
		// sends until the claim expires. At once, while this instance
		// still holds its probe slot, so no call of its own can have
		// claimed again meanwhile.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 200*time.Millisecond)
		defer cancel()
		_ = releaseProbe.Run(rctx, f.client, []string{f.probeKey(name)}, f.id).Err()
		return false
	}
	return won == 1
}

// joinFleet ties b to f: its own trips are announced, and changes heard
// from the fleet are applied to it.
func (b *Breaker[T]) joinFleet(f *Fleet) {
	l := &fleetLink{fleet: f, name: b.name}
	l.open = func(ttl time.Duration) {
		b.fleetChange(func() {
			l.newEpoch()
			l.remote.Store(true)
			b.holdOpen(int64(ttl))
		})
	}
	l.closed = func() {
		b.fleetChange(func() {
			l.newEpoch()
			l.remote.Store(false)
			b.openUntil.Store(0)
			b.closeLocally()
		})
	}
	b.shared = l
	b.events.listeners = append(b.events.listeners, func(c StateChange) {
		if c.local && c.To == StateOpen {
			l.newEpoch()
			l.remote.Store(true)
			f.announce(fleetMsg{name: b.name, open: true, ttl: time.Duration(b.timeout.Load())})
		}
	})
	f.register(l)
}

// closeLocally closes this instance's own gobreaker once the fleet's probe
// succeeded, so that a breaker it tripped itself (or one that needs
// several probes) does not wait for probes of its own.
func (b *Breaker[T]) closeLocally() {
	if b.cb.Load().State() != gobreaker.StateClosed {
		b.cb.Store(b.newGobreaker())
		b.seq.Add(1)
		b.probes.Store(0)
		b.trip.reset()
	}
}

// fleetChange applies a change of fleet state and tells the listeners.
func (b *Breaker[T]) fleetChange(apply func()) {
	from := b.peekState()
	apply()
	if to := b.peekState(); to != from {
		b.events.push(StateChange{Name: b.name, From: from, To: to, At: time.Now()})
	}
	b.events.deliver()
}

// probeFleet handles a call while the fleet's breaker is half-open: one
// instance, the one that claims the probe in Redis, makes the call; its
// outcome closes or reopens every instance's breaker.
func (b *Breaker[T]) probeFleet(ctx context.Context, fn func(context.Context) (T, error)) (T, error) {
	token, err := b.claimFleetProbe(ctx)
	if err != nil {
		var zero T
		return zero, err
	}
	settled := false
	defer func() {
		if !settled { // fn panicked
			b.probed(token, int(Ignored))
		}
	}()
	v, err, out := b.run(ctx, fn)
	settled = true
	b.probed(token, out)
	return v, err
}

// probed shares the outcome of the fleet's probe of the episode token
// belongs to: success closes every instance's breaker, failure opens them
// again. An outcome that says nothing (the caller cancelled, the local
// breaker rejected the call) gives the claim up for the next call; one
// from an earlier episode is dropped.
func (b *Breaker[T]) probed(token uint64, out int) {
	l := b.shared
	defer l.probing.CompareAndSwap(token, 0)
	if l.epoch.Load()+1 != token {
		return
	}
	timeout := time.Duration(b.timeout.Load())
	switch out {
	case int(Success):
		b.fleetChange(func() {
			l.newEpoch()
			l.remote.Store(false)
			b.closeLocally()
		})
		l.fleet.announce(fleetMsg{name: b.name})
	case int(Failure):
		b.fleetChange(func() {
			l.newEpoch()
			b.holdOpen(int64(timeout))
		})
		l.fleet.announce(fleetMsg{name: b.name, open: true, ttl: timeout})
	default:
		l.fleet.announce(fleetMsg{name: b.name, release: true})
	}
}

// claimFleetProbe takes this instance's probe slot and the fleet's claim,
// or rejects the call as a half-open breaker does.
func (b *Breaker[T]) claimFleetProbe(ctx context.Context) (token uint64, err error) {
	l := b.shared
	token, ok := l.takeProbe()
	if ok && !l.fleet.claimProbe(ctx, b.name, time.Duration(b.timeout.Load())) {
		l.probing.CompareAndSwap(token, 0)
		ok = false
	}
	if !ok {
		b.metrics.call(ctx, outcomeRejected)
		return 0, b.rejectHalfOpen
	}
	return token, nil
}

// allowFleetProbe is Allow while the fleet's breaker is half-open.
func (b *Breaker[T]) allowFleetProbe(ctx context.Context) (func(error), error) {
	token, err := b.claimFleetProbe(ctx)
	if err != nil {
		return nil, err
	}
	var start time.Time
	if b.slow > 0 {
		start = time.Now()
	}
	var once sync.Once
	return func(err error) {
		once.Do(func() {
			out, _ := b.outcome(ctx, err, start)
			b.metrics.call(ctx, int(out))
			b.probed(token, int(out))
		})
	}, nil
}
