package degrade

import (
	"context"
	"slices"
)

// snapshot is the switchboard's state as Enabled reads it: immutable once
// published.
type snapshot struct {
	byName map[string]*decision
	table  lookup      // byName, for Enabled and Check
	list   []*decision // in the order of Switchboard.names, for Switch
	shed   Level
}

// decision is one feature's compiled state.
type decision struct {
	// fixed is 1 or 0 when the answer is the same for every request
	// (on or off, no rules), -1 when it depends on the request.
	fixed     int8
	mode      Mode
	threshold uint64 // Percent: on when the user's hash % 10000 < threshold
	rules     []compiledRule
	salt      string // the feature's name
	seed      uint64 // bucketSeed(salt)
	level     Level
	status    Status

	errDefault *DegradedError
	errs       map[string]*DegradedError // by locale key of the messages
	msgs       map[string]string
}

type compiledRule struct {
	when    []compiledCond
	enabled bool
}

type compiledCond struct {
	attr    int8
	custom  string // the attribute's name, for attrCustom
	op      int8
	values  []string
	version version
}

// Condition operators, compiled.
const (
	opIn int8 = iota
	opNotIn
	opLT
	opLE
	opGT
	opGE
)

var opCodes = map[string]int8{"in": opIn, "not_in": opNotIn, "lt": opLT, "le": opLE, "gt": opGT, "ge": opGE}

// enabled decides for the request in ctx.
func (d *decision) enabled(ctx context.Context) bool {
	if d.fixed >= 0 {
		return d.fixed == 1
	}
	a, _ := ctx.Value(attrsKey{}).(*request)
	for i := range d.rules {
		if d.rules[i].matches(a) {
			return d.rules[i].enabled
		}
	}
	switch d.mode {
	case On:
		return true
	case Percent:
		return a != nil && a.UserID != "" && bucketFrom(d.seed, a.UserID) < d.threshold
	}
	return false
}

func (r *compiledRule) matches(a *request) bool {
	for i := range r.when {
		if !r.when[i].holds(a) {
			return false
		}
	}
	return true
}

func (c *compiledCond) holds(a *request) bool {
	var v string
	var ok bool
	if a != nil {
		v, ok = a.attr(c.attr, c.custom)
	}
	switch c.op {
	case opIn, opNotIn:
		in := false
		if ok {
			for _, x := range c.values {
				if x == v {
					in = true
					break
				}
			}
		}
		return in == (c.op == opIn)
	}
	if !ok {
		return false
	}
	var pv version
	if c.attr == attrAppVersion {
		// Parsed once, by WithAttributes.
		pv, ok = a.version, a.hasVersion
	} else {
		pv, ok = parseVersion(v)
	}
	if !ok {
		return false
	}
	cmp := pv.compare(c.version)
	switch c.op {
	case opLT:
		return cmp < 0
	case opLE:
		return cmp <= 0
	case opGT:
		return cmp > 0
	}
	return cmp >= 0 // opGE
}

// A user's bucket for a feature, one of 10 000, is the same on every
// instance and in every run, so the same user stays on as a percentage
// grows.

// bucketSeed hashes the feature's part of a bucket, once per compile.
func bucketSeed(feature string) uint64 {
	// FNV-1a over the feature, a separator and the user: stable across
	// processes, unlike maphash, and cheap.
	h := uint64(14695981039346656037)
	for i := 0; i < len(feature); i++ {
		h ^= uint64(feature[i])
		h *= 1099511628211
	}
	h ^= 0xff
	h *= 1099511628211
	return h
}

// bucketFrom finishes a bucket from the feature's seed.
func bucketFrom(h uint64, user string) uint64 {
	for i := 0; i < len(user); i++ {
		h ^= uint64(user[i])
		h *= 1099511628211
	}
	// Mix the low bits, which FNV leaves weak, before taking them.
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	return h % 10000
}

// err returns the feature's error for the request's locale.
func (d *decision) err(ctx context.Context) error {
	if len(d.errs) > 0 {
		if a, _ := ctx.Value(attrsKey{}).(*request); a != nil && a.Locale != "" {
			if e := d.errs[a.Locale]; e != nil {
				return e
			}
			for i := 0; i < len(a.Locale); i++ {
				if a.Locale[i] == '-' || a.Locale[i] == '_' {
					if e := d.errs[a.Locale[:i]]; e != nil {
						return e
					}
					break
				}
			}
		}
	}
	return d.errDefault
}

// rebuild compiles a new snapshot from the stored state and the triggers
// and publishes it, returning the changes of effective state. s.mu is held
// (or s is not yet shared).
func (s *Switchboard) rebuild(_ []Event) []Event {
	old := s.snap.Load()
	// The level shed here is the highest of the operator's and the
	// triggers'; shedTrigger names the trigger shedding the most (the
	// first by name among equals), for the statuses it decides.
	shed := s.stored.Shed
	var shedTrigger string
	var trigShed Level
	for name, l := range s.shedBy {
		if l > trigShed || l == trigShed && name < shedTrigger {
			trigShed, shedTrigger = l, name
		}
	}
	shed = max(shed, trigShed)
	snap := &snapshot{byName: make(map[string]*decision, len(s.names)), shed: shed}
	var events []Event
	for _, name := range s.names {
		f := s.features[name]
		st := State{Mode: On}
		if f.Off {
			st.Mode = Off
		}
		status := Status{Feature: *f, Name: name, Level: f.Level, Source: SourceDefault}
		if ts := s.tripped[name]; len(ts) > 0 {
			status.Trigger = ts[0]
		}
		switch m, manual := s.stored.Manual[name]; {
		case manual:
			st = m.State
			status.Source = SourceManual
			status.Changed = m.At
		case shed != 0 && f.Level <= shed:
			st = State{Mode: Off}
			status.Source = SourceShed
			if f.Level > s.stored.Shed {
				// Only a trigger's shed reaches this level.
				status.Source, status.Trigger = SourceTrigger, shedTrigger
			}
		case status.Trigger != "":
			st = State{Mode: Off}
			status.Source = SourceTrigger
		}
		status.State = st
		d := s.compile(f, st)
		d.status = status
		snap.byName[name] = d
		snap.list = append(snap.list, d)
		if old != nil {
			if prev := old.byName[name]; prev != nil && !sameStatus(prev.status, status) {
				events = append(events, Event{Feature: name, Before: prev.status, After: status})
			}
		}
	}
	snap.table = newLookup(snap.byName)
	s.snap.Store(snap)
	return events
}

func sameStatus(a, b Status) bool {
	if a.Source != b.Source || a.Trigger != b.Trigger || a.State.Mode != b.State.Mode ||
		a.State.Percent != b.State.Percent || len(a.State.Rules) != len(b.State.Rules) || !a.Changed.Equal(b.Changed) {
		return false
	}
	return true
}

// compile turns a feature's state into a decision.
func (s *Switchboard) compile(f *Feature, st State) *decision {
	d := &decision{mode: st.Mode, salt: f.Name, seed: bucketSeed(f.Name), level: f.Level, fixed: -1}
	if len(st.Rules) == 0 {
		switch st.Mode {
		case On:
			d.fixed = 1
		case Off:
			d.fixed = 0
		}
	}
	if st.Mode == Percent {
		d.threshold = uint64(st.Percent*100 + 0.5)
	}
	for _, r := range st.Rules {
		cr := compiledRule{enabled: r.Enabled}
		for _, c := range r.When {
			cc := compiledCond{attr: attrNames[c.Attr], custom: c.Attr, op: opCodes[c.Op], values: slices.Clone(c.Values)}
			if len(c.Values) > 0 {
				cc.version, _ = parseVersion(c.Values[0])
			}
			cr.when = append(cr.when, cc)
		}
		d.rules = append(d.rules, cr)
	}
	// Messages: the state's, else the feature's, else the default; one
	// error per locale, made once here so Check allocates nothing.
	msgs := st.Messages
	if len(msgs) == 0 {
		msgs = f.Messages
	}
	if len(msgs) == 0 {
		msgs = s.cfg.messages
	}
	d.msgs = msgs
	def, _ := message(msgs, "")
	if def == "" {
		def, _ = message(s.cfg.messages, "")
	}
	d.errDefault = &DegradedError{Feature: f.Name, Level: f.Level, Message: def}
	for loc, m := range msgs {
		if loc != "" {
			if d.errs == nil {
				d.errs = make(map[string]*DegradedError, len(msgs))
			}
			d.errs[loc] = &DegradedError{Feature: f.Name, Level: f.Level, Message: m}
		}
	}
	return d
}
