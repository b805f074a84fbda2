package queue

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestLineAgainstModel drives the line and a plain slice with the same
// random operations and compares every position.
func TestLineAgainstModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var l line
	var model []*entry
	for step := range 200_000 {
		switch op := rng.IntN(10); {
		case op < 5 || len(model) == 0:
			e := &entry{}
			l.push(e)
			model = append(model, e)
		case op < 7:
			l.remove(model[0])
			model = model[1:]
		default:
			i := rng.IntN(len(model))
			l.remove(model[i])
			model = slices.Delete(model, i, i+1)
		}
		if l.len() != len(model) {
			t.Fatalf("step %d: len %d, want %d", step, l.len(), len(model))
		}
		if len(model) > 0 && l.front() != model[0] {
			t.Fatalf("step %d: wrong front", step)
		}
		if len(model) == 0 && l.front() != nil {
			t.Fatalf("step %d: front of empty line", step)
		}
		if step%97 == 0 {
			for i, e := range model {
				if got := l.position(e); got != i+1 {
					t.Fatalf("step %d: position %d, want %d", step, got, i+1)
				}
			}
		}
	}
	// Memory stays proportional to the live line.
	if len(l.items) > 2*len(model)+128 {
		t.Errorf("%d slots for %d tickets", len(l.items), len(model))
	}
}

func TestLineDrainsToEmpty(t *testing.T) {
	var l line
	es := make([]*entry, 1000)
	for i := range es {
		es[i] = &entry{}
		l.push(es[i])
	}
	for i := len(es) - 1; i >= 0; i -= 2 {
		l.remove(es[i])
	}
	for i := 0; i < len(es); i += 2 {
		if got := l.position(es[i]); got != i/2+1 {
			t.Fatalf("position %d, want %d", got, i/2+1)
		}
	}
	for i := 0; i < len(es); i += 2 {
		l.remove(es[i])
	}
	if l.len() != 0 || l.front() != nil {
		t.Fatalf("len %d after removing all", l.len())
	}
}

func TestOutflowMeasuresBusyTimeOnly(t *testing.T) {
	o := newOutflow(100)
	now := int64(0)
	// A minute of admissions at 10/s while busy: six time constants,
	// so the configured 100/s it started from is forgotten.
	for range 600 {
		o.observe(now, true)
		o.admitted()
		now += 1e8
	}
	if v := o.value(); v < 8 || v > 12 {
		t.Fatalf("outflow %.2f/s, want about 10", v)
	}
	// A quiet minute does not read as a slow line.
	o.observe(now, false)
	before := o.value()
	now += 60e9
	o.observe(now, true)
	if after := o.value(); after != before {
		t.Fatalf("outflow changed over idle time: %.3f -> %.3f", before, after)
	}
}
