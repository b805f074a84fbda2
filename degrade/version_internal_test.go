package degrade

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestVersionCompare(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"2.3.0", "2.3.0", 0},
		{"2.3", "2.3.0", 0},
		{"v2.3.0", "2.3.0", 0},
		{"2.10.0", "2.9.1", 1},
		{"2.2.9", "2.3.0", -1},
		{"10.0", "9.99.99", 1},
		{"2.3.0-beta", "2.3.0", -1},
		{"2.3.0", "2.3.0-rc.1", 1},
		{"2.3.0-alpha", "2.3.0-beta", -1},
		{"2.3.0+build7", "2.3.0", 0},
		{"1.2.3.4", "1.2.3.5", -1},
		{"0.0.1", "0", 1},
	}
	for _, c := range cases {
		a, ok := parseVersion(c.a)
		if !ok {
			t.Fatalf("%q does not parse", c.a)
		}
		b, ok := parseVersion(c.b)
		if !ok {
			t.Fatalf("%q does not parse", c.b)
		}
		if got := a.compare(b); got != c.want {
			t.Errorf("compare(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
		if got := b.compare(a); got != -c.want {
			t.Errorf("compare(%q, %q) = %d, want %d", c.b, c.a, got, -c.want)
		}
	}
	for _, bad := range []string{"", "v", "a.b", "1..2", "1.2.", "1.2.3.4.5", "1.2-", "99999999999", "1,2", " 1.2"} {
		if _, ok := parseVersion(bad); ok {
			t.Errorf("%q parses", bad)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = parseVersion("2.3.1-beta") }); n != 0 {
		t.Errorf("parseVersion allocates %v times", n)
	}
}

// FuzzParseVersion checks parseVersion against refParseVersion, a plain
// strings-and-strconv reading of the documented syntax, and that compare
// is a total preorder consistent with equality: antisymmetric, transitive
// on the fuzzed triple, pre-releases before their release, numeric parts
// deciding before the pre-release. formatVersion(v) parses back to v, and
// a leading "v" or build metadata changes nothing.
func FuzzParseVersion(f *testing.F) {
	for _, s := range [][3]string{
		{"2.3.0", "2.3", "v2.3.0+build7"},
		{"2.10.0", "2.9.1", "10.0"},
		{"2.3.0-beta", "2.3.0", "2.3.0-rc.1"},
		{"2.3.0-beta.10", "2.3.0-beta.9", "2.3.0-alpha"},
		{"1.2.3.4", "1.2.3.4.5", "4294967295.0"},
		{"4294967296", "01.002", "1.2-"},
		{"0", "0.0.0.0", "0-0"},
		{"1.2.3-a+b-c", "V1", "v"},
		{"1..2", " 1.2", "1.2.3-beta\x00\xff"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, a, b, c string) {
		var vs [3]version
		var oks [3]bool
		for i, s := range []string{a, b, c} {
			v, ok := parseVersion(s)
			want, wantOK := refParseVersion(s)
			if ok != wantOK || ok && v != want {
				t.Fatalf("parseVersion(%q) = %+v, %v; want %+v, %v", s, v, ok, want, wantOK)
			}
			if ok {
				text := formatVersion(v)
				if w, ok := parseVersion(text); !ok || w != v || formatVersion(w) != text {
					t.Fatalf("%q parses to %+v, formatted %q, which parses to %+v, %v", s, v, text, w, ok)
				}
			}
			// Metadata after "+" is ignored, and so is a leading "v".
			if w, ok2 := parseVersion(s + "+" + c); ok2 != ok || w != v {
				t.Fatalf("parseVersion(%q) = %+v, %v; but %q gives %+v, %v", s+"+"+c, w, ok2, s, v, ok)
			}
			if !strings.HasPrefix(s, "v") && !strings.HasPrefix(s, "V") {
				if w, ok2 := parseVersion("v" + s); ok2 != ok || w != v {
					t.Fatalf("parseVersion(%q) = %+v, %v; but %q gives %+v, %v", "v"+s, w, ok2, s, v, ok)
				}
			}
			vs[i], oks[i] = v, ok
		}
		for i := range vs {
			if !oks[i] {
				continue
			}
			x := vs[i]
			if x.compare(x) != 0 {
				t.Fatalf("%+v is not equal to itself", x)
			}
			if x.pre != "" {
				rel := x
				rel.pre = ""
				if x.compare(rel) != -1 || rel.compare(x) != 1 {
					t.Fatalf("pre-release %+v does not sort before its release", x)
				}
			}
			for j := range vs {
				if !oks[j] {
					continue
				}
				y := vs[j]
				xy, yx := x.compare(y), y.compare(x)
				if xy < -1 || xy > 1 || xy != -yx {
					t.Fatalf("compare(%+v, %+v) = %d but the reverse is %d", x, y, xy, yx)
				}
				if (xy == 0) != (x == y) {
					t.Fatalf("compare(%+v, %+v) = %d: not consistent with equality", x, y, xy)
				}
				if x.parts != y.parts {
					// Parts decide, part by part and as numbers, whatever
					// the pre-releases.
					if want := slices.Compare(x.parts[:], y.parts[:]); xy != want {
						t.Fatalf("compare(%+v, %+v) = %d, want %d from the parts", x, y, xy, want)
					}
				}
				for k := range vs {
					if !oks[k] {
						continue
					}
					z := vs[k]
					if xy <= 0 && y.compare(z) <= 0 && x.compare(z) > 0 {
						t.Fatalf("not transitive: %+v <= %+v <= %+v but compare(x, z) > 0", x, y, z)
					}
					if xy < 0 && y.compare(z) < 0 && x.compare(z) >= 0 {
						t.Fatalf("not transitive: %+v < %+v < %+v but compare(x, z) >= 0", x, y, z)
					}
				}
			}
		}
	})
}

// refParseVersion reads the syntax parseVersion documents with the
// standard library, for comparison: an optional "v", one to four dotted
// decimal parts of at most 32 bits, an optional "-" and non-empty
// pre-release, and build metadata from the first "+" ignored.
func refParseVersion(s string) (version, bool) {
	var v version
	if strings.HasPrefix(s, "v") || strings.HasPrefix(s, "V") {
		s = s[1:]
	}
	if s == "" {
		return version{}, false
	}
	s, _, _ = strings.Cut(s, "+")
	core, pre, dash := strings.Cut(s, "-")
	if dash && pre == "" {
		return version{}, false
	}
	parts := strings.Split(core, ".")
	if len(parts) > len(v.parts) {
		return version{}, false
	}
	for i, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return version{}, false
		}
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return version{}, false
		}
		v.parts[i] = uint32(n)
	}
	v.pre = pre
	return v, true
}

// formatVersion writes v in the syntax parseVersion reads.
func formatVersion(v version) string {
	var b strings.Builder
	for i, p := range v.parts {
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(strconv.FormatUint(uint64(p), 10))
	}
	if v.pre != "" {
		b.WriteString("-" + v.pre)
	}
	return b.String()
}
