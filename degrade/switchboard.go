package degrade

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
)

// Switchboard holds a service's features and decides, per request, whether
// each is on. [Switchboard.Enabled] is the hot path: it reads an immutable
// snapshot through one atomic load, takes no lock and allocates nothing.
// Every change (an operator's, a trigger's, one read from the store)
// builds a new snapshot and swaps it in.
//
// A feature's state comes from, strongest first: an operator's setting for
// that feature ([Switchboard.Set], until [Switchboard.Unpin]); an
// operator's shed of its level ([Switchboard.Shed]); a trigger holding it
// off ([WithTrigger]); its default ([Feature.Off]).
//
// Close a Switchboard to stop its background work.
type Switchboard struct {
	features map[string]*Feature
	names    []string // in the order given to New
	store    Store
	cfg      config

	snap atomic.Pointer[snapshot]

	mu      sync.Mutex
	stored  Stored              // as last read from or written to the store
	tripped map[string][]string // feature → the triggers holding it off, sorted
	shedBy  map[string]Level    // trigger → level it sheds
	storeOK bool

	listenMu  sync.Mutex
	listeners map[int]func(Event)
	nextID    int
	events    chan Event

	unknown      sync.Map // names reported once
	unknownCount atomic.Int64
	tel          *telemetry

	stopWatch func()
	stop      chan struct{}
	wake      chan struct{}
	wg        sync.WaitGroup
	closed    atomic.Bool
}

// Event is a change of a feature's effective state, delivered to
// listeners ([Switchboard.Subscribe]).
type Event struct {
	Feature string
	Before  Status
	After   Status
}

// New returns a switchboard of features. Names must be unique and levels
// set; the error names the bad feature and field. New reads the store
// once, waiting at most 2 seconds: if it cannot, the switchboard starts
// from the defaults and keeps trying in the background.
func New(features []Feature, opts ...Option) (*Switchboard, error) {
	c := defaultConfig()
	for _, o := range opts {
		o.apply(&c)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	s := &Switchboard{
		features:  make(map[string]*Feature, len(features)),
		store:     c.store,
		cfg:       c,
		tripped:   make(map[string][]string),
		shedBy:    make(map[string]Level),
		listeners: make(map[int]func(Event)),
		events:    make(chan Event, 256),
		stop:      make(chan struct{}),
		wake:      make(chan struct{}, 1),
		storeOK:   true,
	}
	for i, f := range features {
		switch {
		case f.Name == "":
			return nil, configError(fmt.Sprintf("features[%d].Name", i), "must not be empty", `""`)
		case f.Level < Optional || f.Level > Core:
			return nil, configError(f.Name+": Level", "must be Optional, Important or Core", int8(f.Level))
		case s.features[f.Name] != nil:
			return nil, configError(f.Name+": Name", "is given twice", f.Name)
		}
		f.Messages = maps.Clone(f.Messages)
		s.features[f.Name] = &f
		s.names = append(s.names, f.Name)
	}
	triggerNames := make(map[string]bool, len(c.triggers))
	for _, t := range c.triggers {
		if triggerNames[t.Name] {
			return nil, configError("WithTrigger "+t.Name+": Name", "is given twice", t.Name)
		}
		triggerNames[t.Name] = true
		for _, f := range t.Off {
			if s.features[f] == nil {
				return nil, configError("WithTrigger "+t.Name+": Off", "names an unknown feature", f)
			}
		}
	}
	if s.store == nil {
		s.store = NewMemoryStore(0)
	}
	s.tel = newTelemetry(&c, s)
	s.rebuild(nil)

	ctx, cancel := context.WithTimeout(context.Background(), c.loadTimeout)
	st, err := s.store.Load(ctx)
	cancel()
	if err == nil {
		s.mu.Lock()
		s.stored = st
		s.rebuild(nil)
		s.mu.Unlock()
	} else {
		// Start from the defaults and keep trying in the background.
		s.storeOK = false
		s.tel.storeError()
	}
	s.stopWatch = s.store.Watch(func() {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	})
	s.wg.Add(2)
	go s.sync()
	go s.deliver()
	if len(c.triggers) > 0 {
		s.wg.Add(1)
		go s.runTriggers()
	}
	return s, nil
}

// Enabled reports whether the feature is on for the request described by
// the [Attributes] in ctx. It takes no lock and allocates nothing.
//
// A name that is not one of the switchboard's features is on, so a typo
// never turns a feature off; it is reported once per name through
// otel.Handle and the bulwark.degrade.unknown counter.
func (s *Switchboard) Enabled(ctx context.Context, name string) bool {
	d := s.snap.Load().table.get(name)
	if d == nil {
		s.reportUnknown(name)
		return true
	}
	on := d.enabled(ctx)
	if s.tel.checks != nil {
		s.tel.check(d, on)
	}
	return on
}

// Check returns nil if the feature is on for the request, and otherwise a
// [*DegradedError] (matching [ErrDegraded]) with the feature's message in
// the request's locale. The error is shared: do not modify it.
func (s *Switchboard) Check(ctx context.Context, name string) error {
	d := s.snap.Load().table.get(name)
	if d == nil {
		s.reportUnknown(name)
		return nil
	}
	on := d.enabled(ctx)
	if s.tel.checks != nil {
		s.tel.check(d, on)
	}
	if on {
		return nil
	}
	return d.err(ctx)
}

func (s *Switchboard) reportUnknown(name string) {
	// Load first: LoadOrStore would box the name on every call.
	if _, seen := s.unknown.Load(name); seen {
		return
	}
	if s.unknownCount.Add(1) > maxUnknown {
		// Names from somewhere unbounded (a request?): count them, but
		// stop remembering them.
		s.tel.unknownFeature()
		return
	}
	if _, seen := s.unknown.LoadOrStore(name, struct{}{}); !seen {
		s.tel.unknownFeature()
		otel.Handle(fmt.Errorf("%w: %q is not a feature of this switchboard; it is treated as on", ErrUnknownFeature, name))
	}
}

// maxUnknown bounds the unknown names a switchboard remembers; beyond it
// each check of an unknown name is counted, not remembered.
const maxUnknown = 1000

// Set makes an operator's setting for a feature, which wins over shedding,
// triggers and the default until [Switchboard.Unpin]. It is stored, so
// every switchboard on the same store follows it.
func (s *Switchboard) Set(ctx context.Context, name string, st State, c Change) error {
	if s.features[name] == nil {
		return fmt.Errorf("%w: %q", ErrUnknownFeature, name)
	}
	if err := st.validate(name); err != nil {
		return err
	}
	st = st.clone()
	return s.update(ctx, func(cur Stored) (Stored, AuditEntry, error) {
		before, _ := json.Marshal(cur.Manual[name])
		if _, ok := cur.Manual[name]; !ok {
			before = nil
		}
		m := Manual{State: st, By: c.By, At: time.Now(), Reason: c.Reason}
		after, _ := json.Marshal(m)
		if cur.Manual == nil {
			cur.Manual = make(map[string]Manual)
		}
		cur.Manual[name] = m
		return cur, s.audit("set", name, c, before, after), nil
	})
}

// Unpin removes an operator's setting for a feature, which goes back to
// shedding, triggers and its default.
func (s *Switchboard) Unpin(ctx context.Context, name string, c Change) error {
	if s.features[name] == nil {
		return fmt.Errorf("%w: %q", ErrUnknownFeature, name)
	}
	return s.update(ctx, func(cur Stored) (Stored, AuditEntry, error) {
		m, ok := cur.Manual[name]
		var before []byte
		if ok {
			before, _ = json.Marshal(m)
		}
		delete(cur.Manual, name)
		return cur, s.audit("unpin", name, c, before, nil), nil
	})
}

// Shed turns off every feature at or below level (大促模式: Important
// sheds important and optional features), except those an operator set
// by hand. Core cannot be shed. It is stored, so the whole fleet sheds.
func (s *Switchboard) Shed(ctx context.Context, level Level, c Change) error {
	if level != Optional && level != Important {
		return configError("level", "must be Optional or Important (core features are never shed)", level)
	}
	return s.update(ctx, func(cur Stored) (Stored, AuditEntry, error) {
		before, _ := json.Marshal(cur.Shed)
		cur.Shed = level
		cur.ShedBy = &Manual{By: c.By, At: time.Now(), Reason: c.Reason}
		after, _ := json.Marshal(level)
		return cur, s.audit("shed", "", c, before, after), nil
	})
}

// Restore ends an operator's shed.
func (s *Switchboard) Restore(ctx context.Context, c Change) error {
	return s.update(ctx, func(cur Stored) (Stored, AuditEntry, error) {
		before, _ := json.Marshal(cur.Shed)
		cur.Shed = 0
		cur.ShedBy = nil
		after, _ := json.Marshal(Level(0))
		return cur, s.audit("restore", "", c, before, after), nil
	})
}

func (s *Switchboard) audit(action, feature string, c Change, before, after []byte) AuditEntry {
	return AuditEntry{At: time.Now(), By: c.By, Action: action, Feature: feature,
		Before: before, After: after, Reason: c.Reason}
}

// update writes a change through the store and applies it here at once.
func (s *Switchboard) update(ctx context.Context, fn func(Stored) (Stored, AuditEntry, error)) error {
	if s.closed.Load() {
		return ErrClosed
	}
	st, err := s.store.Update(ctx, func(cur Stored) (Stored, AuditEntry, error) {
		return fn(cur.clone())
	})
	if err != nil {
		return err
	}
	s.apply(st)
	return nil
}

// apply makes st the stored state unless it is older than what this
// switchboard has.
func (s *Switchboard) apply(st Stored) {
	s.mu.Lock()
	if st.Version < s.stored.Version {
		s.mu.Unlock()
		return
	}
	s.stored = st
	// Queued under the lock, so listeners see changes in the order the
	// snapshots were made; queuing never blocks and calls no user code.
	s.publish(s.rebuild(nil))
	s.mu.Unlock()
}

// Audit returns up to n entries of the audit trail, newest first.
func (s *Switchboard) Audit(ctx context.Context, n int) ([]AuditEntry, error) {
	return s.store.Audit(ctx, n)
}

// Features returns every feature's status, in the order given to New.
func (s *Switchboard) Features() []Status {
	snap := s.snap.Load()
	out := make([]Status, 0, len(s.names))
	for _, n := range s.names {
		st := snap.byName[n].status
		st.State = st.State.clone()
		out = append(out, st)
	}
	return out
}

// Status returns a feature's status.
func (s *Switchboard) Status(name string) (Status, error) {
	d := s.snap.Load().byName[name]
	if d == nil {
		return Status{}, fmt.Errorf("%w: %q", ErrUnknownFeature, name)
	}
	st := d.status
	st.State = st.State.clone()
	return st, nil
}

// Shedding returns the level shed by an operator or a trigger, 0 if none.
func (s *Switchboard) Shedding() Level { return s.snap.Load().shed }

// StoreHealthy reports whether the last read of the store succeeded. While
// it fails the switchboard decides from the last state it read.
func (s *Switchboard) StoreHealthy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.storeOK
}

// Subscribe calls f for every change of a feature's effective state, in
// order, from one goroutine and never under a lock. It returns a function
// that stops the calls. f must not call Close, which waits for it.
func (s *Switchboard) Subscribe(f func(Event)) (stop func()) {
	s.listenMu.Lock()
	id := s.nextID
	s.nextID++
	s.listeners[id] = f
	s.listenMu.Unlock()
	return func() {
		s.listenMu.Lock()
		delete(s.listeners, id)
		s.listenMu.Unlock()
	}
}

// publish queues events for the listeners. A full queue drops the oldest
// consumers' view: the switchboard never blocks on a slow listener.
func (s *Switchboard) publish(events []Event) {
	for _, e := range events {
		select {
		case s.events <- e:
		default:
			s.tel.eventDropped()
		}
	}
}

// deliver runs the listeners.
func (s *Switchboard) deliver() {
	defer s.wg.Done()
	for {
		select {
		case <-s.stop:
			return
		case e := <-s.events:
			s.listenMu.Lock()
			ls := make([]func(Event), 0, len(s.listeners))
			for _, l := range s.listeners {
				ls = append(ls, l)
			}
			s.listenMu.Unlock()
			for _, l := range ls {
				l(e)
			}
		}
	}
}

// sync re-reads the store when it says it changed, and every refresh
// interval with jitter, because notifications can be lost.
func (s *Switchboard) sync() {
	defer s.wg.Done()
	timer := time.NewTimer(s.jittered())
	defer timer.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-s.wake:
		case <-timer.C:
			timer.Reset(s.jittered())
		}
		s.reload()
	}
}

func (s *Switchboard) jittered() time.Duration {
	r := s.cfg.refresh
	return r/2 + rand.N(r)
}

// reload reads the store and applies what it holds.
func (s *Switchboard) reload() {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.loadTimeout)
	st, err := s.store.Load(ctx)
	cancel()
	s.mu.Lock()
	was := s.storeOK
	s.storeOK = err == nil
	s.mu.Unlock()
	if err != nil {
		s.tel.storeError()
		if was {
			otel.Handle(fmt.Errorf("degrade: keeping the last known state: %w", err))
		}
		return
	}
	s.apply(st)
}

// Close stops the switchboard's background work and waits for it, so it
// must not be called from a listener ([Switchboard.Subscribe]) or a
// trigger's Signal. Enabled and Check keep answering from the last state;
// changes fail with ErrClosed.
func (s *Switchboard) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	s.stopWatch()
	close(s.stop)
	s.wg.Wait()
	s.tel.unregister()
	return nil
}

// config holds a switchboard's options.
type config struct {
	store       Store
	refresh     time.Duration
	loadTimeout time.Duration
	messages    map[string]string
	triggers    []Trigger
	every       time.Duration
	checks      bool
	meter       metric.MeterProvider
}

func defaultConfig() config {
	return config{
		refresh:     5 * time.Second,
		loadTimeout: 2 * time.Second,
		every:       time.Second,
		messages: map[string]string{
			"zh": "当前系统繁忙，部分功能暂不可用",
			"en": "The service is busy; some features are unavailable for now.",
			"":   "当前系统繁忙，部分功能暂不可用",
		},
	}
}

func (c *config) validate() error {
	switch {
	case c.refresh < 10*time.Millisecond:
		return configError("WithRefresh", "must be at least 10ms", c.refresh)
	case c.every < time.Millisecond:
		return configError("WithEvaluationInterval", "must be at least 1ms", c.every)
	}
	for i, t := range c.triggers {
		if err := t.validate(); err != nil {
			return fmt.Errorf("WithTrigger %d (%q): %w", i, t.Name, err)
		}
	}
	return nil
}

// Option configures a [Switchboard].
type Option interface{ apply(*config) }

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithStore sets where operators' settings are kept and shared. The
// default is a store in this process ([NewMemoryStore]).
func WithStore(st Store) Option { return optionFunc(func(c *config) { c.store = st }) }

// WithRefresh sets how often, on average, the switchboard re-reads its
// store in case a change notification was lost; each wait is drawn from
// [d/2, 3d/2). The default is 5 seconds.
func WithRefresh(d time.Duration) Option { return optionFunc(func(c *config) { c.refresh = d }) }

// WithDefaultMessage sets the message, by locale, for features that have
// none. The default is "当前系统繁忙，部分功能暂不可用" ("zh", and for any
// other locale) and an English sentence for "en".
func WithDefaultMessage(byLocale map[string]string) Option {
	return optionFunc(func(c *config) { c.messages = maps.Clone(byLocale) })
}

// WithCheckMetrics counts every Enabled and Check by feature and result in
// bulwark.degrade.checks. It is off by default: counting costs an atomic
// addition per check, more than the check itself.
func WithCheckMetrics(on bool) Option { return optionFunc(func(c *config) { c.checks = on }) }

// WithMeterProvider sets where the switchboard's metrics go. The default,
// also for nil, is the global provider at construction time.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(c *config) { c.meter = mp })
}
