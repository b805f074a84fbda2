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
		// Names usually reach here as the same string constant the
		// feature was declared with (the linker keeps one copy), so
		// comparing where the bytes are settles most lookups.
		if len(s.name) == len(name) && (unsafe.StringData(s.name) == unsafe.StringData(name) || s.name == name) {
			return s.d
		}
		i = (i + 1) & t.mask
	}
}

// nameHash mixes a name's length with its first, last and (for long
// names) middle bytes, read in at most three loads whatever the length. Names are chosen by the program, not by
// its users, so a cheap hash serves; the table stays at most half full.
func nameHash(s string) uint64 {
	n := len(s)
	h := uint64(n) * 0x9e3779b97f4a7c15
	var first, last uint64
	switch p := unsafe.Pointer(unsafe.StringData(s)); {
	case n >= 8:
		// Unaligned loads within the string's bytes: the first and the
		// last eight, which overlap for names shorter than 16, and for
		// longer names the middle eight too, where names made from a
		// pattern ("checkout.step12.enabled") differ.
		first = *(*uint64)(p)
		last = *(*uint64)(unsafe.Add(p, n-8))
		if n > 16 {
			h ^= *(*uint64)(unsafe.Add(p, n/2-4)) * 0x9fb21c651e98df25
		}
	case n >= 4:
		first = uint64(*(*uint32)(p))
		last = uint64(*(*uint32)(unsafe.Add(p, n-4)))
	case n > 0:
		// One to three bytes: the first, the middle and the last.
		first = uint64(s[0])<<16 | uint64(s[n/2])<<8 | uint64(s[n-1])
	}
	h ^= first*0xff51afd7ed558ccd ^ last*0xc4ceb9fe1a85ec53
	return h ^ h>>29
}
