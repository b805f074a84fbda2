package degrade

import (
	"fmt"
	"testing"
)

func TestLookup(t *testing.T) {
	for _, n := range []int{0, 1, 3, 8, 50, 500} {
		byName := make(map[string]*decision, n)
		for i := range n {
			// Short and long names, and names sharing first and last
			// bytes, which the hash sees alone.
			name := fmt.Sprintf("f%d", i)
			if i%3 == 0 {
				name = fmt.Sprintf("feature-%d-x-suffix", i)
			}
			byName[name] = &decision{salt: name}
		}
		tb := newLookup(byName)
		for name, d := range byName {
			if got := tb.get(name); got != d {
				t.Fatalf("n=%d: get(%q) = %v", n, name, got)
			}
		}
		for _, missing := range []string{"", "nope", "feature-1-x-suffix", "f-1", "feature-0-x-suffiy"} {
			if byName[missing] == nil && tb.get(missing) != nil {
				t.Fatalf("n=%d: get(%q) found something", n, missing)
			}
		}
	}
}
