package degrade

import "context"

// Switch is one feature of a [Switchboard], found once: its Enabled and
// Check skip looking the feature up by name, so a hot path that asks about
// the same feature on every request pays only for the decision. Make
// Switches at start-up and keep them; a Switch is a small value, safe for
// concurrent use, and follows every change of the switchboard.
type Switch struct {
	sb   *Switchboard
	i    int // index in the snapshot's list; -1 for an unknown name
	name string
}

// Switch returns the switch of the named feature. A name that is not a
// feature gives a switch that is always on, reported once as Enabled
// reports unknown names.
func (s *Switchboard) Switch(name string) Switch {
	for i, n := range s.names {
		if n == name {
			return Switch{s, i, name}
		}
	}
	s.reportUnknown(name)
	return Switch{s, -1, name}
}

// Name returns the feature's name.
func (w Switch) Name() string { return w.name }

// Enabled is [Switchboard.Enabled] for the switch's feature.
func (w Switch) Enabled(ctx context.Context) bool {
	if w.i < 0 {
		return true
	}
	d := w.sb.snap.Load().list[w.i]
	on := d.enabled(ctx)
	if w.sb.tel.checks != nil {
		w.sb.tel.check(d, on)
	}
	return on
}

// Check is [Switchboard.Check] for the switch's feature.
func (w Switch) Check(ctx context.Context) error {
	if w.i < 0 {
		return nil
	}
	d := w.sb.snap.Load().list[w.i]
	on := d.enabled(ctx)
	if w.sb.tel.checks != nil {
		w.sb.tel.check(d, on)
	}
	if on {
		return nil
	}
	return d.err(ctx)
}
