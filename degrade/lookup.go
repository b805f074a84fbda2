package degrade

import (
	"math/bits"
	"unsafe"
)

// lookup finds a feature's decision by name: an open-addressing table
// built once per snapshot. It is the bulk of Enabled's cost, and a
// hand-rolled table over a few dozen names is about three times faster
// than a map, whose general-purpose hashing dominates at this size.
type lookup struct {
	mask  uint64
	slots []lookupSlot
}

type lookupSlot struct {
	name string
	d    *decision
}

func newLookup(byName map[string]*decision) lookup {
	size := 1 << bits.Len(uint(max(2*len(byName), 8)-1))
	t := lookup{mask: uint64(size - 1), slots: make([]lookupSlot, size)}
	for name, d := range byName {
		i := nameHash(name) & t.mask
		for t.slots[i].d != nil {
			i = (i + 1) & t.mask
		}
		t.slots[i] = lookupSlot{name, d}
	}
	return t
}

// get returns the decision for name, or nil.
func (t *lookup) get(name string) *decision {
	i := nameHash(name) & t.mask
	for {
		s := &t.slots[i]
		if s.d == nil {
			return nil
		}
		if s.name == name {
			return s.d
		}
		i = (i + 1) & t.mask
	}
}

// nameHash mixes a name's length with its first and last eight bytes (or
// every byte of a shorter name). Names are chosen by the program, not by
// its users, so a cheap hash serves; the table stays at most half full.
func nameHash(s string) uint64 {
	n := len(s)
	h := uint64(n) * 0x9e3779b97f4a7c15
	if n >= 8 {
		p := unsafe.Pointer(unsafe.StringData(s))
		// Unaligned 8-byte loads within the string's bytes.
		first := *(*uint64)(p)
		last := *(*uint64)(unsafe.Add(p, n-8))
		h ^= first*0xff51afd7ed558ccd ^ last*0xc4ceb9fe1a85ec53
	} else {
		for i := 0; i < n; i++ {
			h = (h ^ uint64(s[i])) * 0x100000001b3
		}
	}
	return h ^ h>>29
}
