package degrade

import (
	"fmt"
	"slices"
	"time"
)

// Signal is a measure a [Trigger] watches: an error rate, a latency
// percentile, a queue's length. Value must be cheap and safe to call from
// the trigger loop's goroutine.
type Signal interface {
	Value() float64
}

// SignalFunc adapts a function to [Signal].
type SignalFunc func() float64

// Value calls f.
func (f SignalFunc) Value() float64 { return f() }

// Readier is anything that says whether it would let a call through, such
// as a breaker.Breaker (its Ready method is true unless it is open).
type Readier interface {
	Ready() bool
}

// NotReady is a signal that is 1 while r is not ready (a breaker is open)
// and 0 otherwise: a trigger with Above 0.5 fires while the breaker stays
// open.
func NotReady(r Readier) Signal {
	return SignalFunc(func() float64 {
		if r.Ready() {
			return 0
		}
		return 1
	})
}

// Trigger turns features off by itself while a signal says the service is
// in trouble, and back on when it has recovered. It fires when the signal
// has stayed above Above for For, and recovers when it has stayed at or
// below Below for RecoverFor; Below at most Above gives hysteresis, so a
// signal hovering at the threshold does not flip features back and forth.
//
// Triggers act on the switchboard that runs them, from the signal this
// instance sees; they are not stored. An operator's setting for a feature
// ([Switchboard.Set]) wins over a trigger until it is unpinned.
type Trigger struct {
	// Name identifies the trigger in statuses, events and metrics.
	Name   string
	Signal Signal
	// Above and For: fire when Signal stays above Above for For.
	Above float64
	For   time.Duration
	// Below and RecoverFor: recover when Signal stays at or below Below
	// for RecoverFor.
	Below      float64
	RecoverFor time.Duration
	// Off names the features the trigger turns off.
	Off []string
	// Shed, if set, is a level the trigger sheds (Optional or
	// Important), as [Switchboard.Shed] does, on this instance only.
	Shed Level
}

func (t *Trigger) validate() error {
	switch {
	case t.Name == "":
		return configError("Name", "must not be empty", `""`)
	case t.Signal == nil:
		return configError("Signal", "must not be nil", nil)
	case t.Below > t.Above:
		return configError("Below", fmt.Sprintf("must be at most Above (%v)", t.Above), t.Below)
	case t.For < 0 || t.RecoverFor < 0:
		return configError("For", "must not be negative", [2]time.Duration{t.For, t.RecoverFor})
	case len(t.Off) == 0 && t.Shed == 0:
		return configError("Off", "must name a feature, or Shed a level", "nothing")
	case t.Shed != 0 && t.Shed != Optional && t.Shed != Important:
		return configError("Shed", "must be Optional or Important", t.Shed)
	}
	return nil
}

// WithTrigger adds a trigger; the switchboard evaluates its triggers every
// evaluation interval ([WithEvaluationInterval]) in one goroutine, which
// Close stops. Features a trigger names must exist.
func WithTrigger(t Trigger) Option {
	return optionFunc(func(c *config) {
		t.Off = slices.Clone(t.Off)
		c.triggers = append(c.triggers, t)
	})
}

// WithEvaluationInterval sets how often triggers read their signals. The
// default is 1 second.
func WithEvaluationInterval(d time.Duration) Option {
	return optionFunc(func(c *config) { c.every = d })
}

// triggerState is one trigger's progress.
type triggerState struct {
	t       *Trigger
	fired   bool
	since   time.Time // when the signal last crossed to the side that counts
	counted bool      // since is set
}

// runTriggers evaluates the triggers every interval until Close.
func (s *Switchboard) runTriggers() {
	defer s.wg.Done()
	states := make([]triggerState, len(s.cfg.triggers))
	for i := range s.cfg.triggers {
		states[i].t = &s.cfg.triggers[i]
	}
	tick := time.NewTicker(s.cfg.every)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		now := time.Now()
		for i := range states {
			s.evaluate(&states[i], now)
		}
	}
}

// evaluate moves one trigger on by the signal's value now.
func (s *Switchboard) evaluate(ts *triggerState, now time.Time) {
	t := ts.t
	v := t.Signal.Value()
	// The side that counts: above the threshold while not fired, at or
	// below the recovery threshold while fired.
	crossing := (!ts.fired && v > t.Above) || (ts.fired && v <= t.Below)
	if !crossing {
		ts.counted = false
		return
	}
	if !ts.counted {
		ts.counted, ts.since = true, now
	}
	hold := t.For
	if ts.fired {
		hold = t.RecoverFor
	}
	if now.Sub(ts.since) < hold {
		return
	}
	ts.fired = !ts.fired
	ts.counted = false
	s.setTripped(t, ts.fired)
	s.tel.triggered(t.Name, ts.fired)
}

// setTripped records that t fired (or recovered) and rebuilds.
func (s *Switchboard) setTripped(t *Trigger, fired bool) {
	s.mu.Lock()
	for _, f := range t.Off {
		names := s.tripped[f]
		i, found := slices.BinarySearch(names, t.Name)
		switch {
		case fired && !found:
			names = slices.Insert(names, i, t.Name)
		case !fired && found:
			names = slices.Delete(names, i, i+1)
		}
		if len(names) == 0 {
			delete(s.tripped, f)
		} else {
			s.tripped[f] = names
		}
	}
	if t.Shed != 0 {
		if fired {
			s.shedBy[t.Name] = t.Shed
		} else {
			delete(s.shedBy, t.Name)
		}
	}
	s.publish(s.rebuild(nil))
	s.mu.Unlock()
}
