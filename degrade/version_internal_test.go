package degrade

import "testing"

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

func FuzzParseVersion(f *testing.F) {
	for _, s := range []string{"2.3.0", "v1", "2.3.0-beta+x", "1.2.3.4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, ok := parseVersion(s)
		if ok && v.compare(v) != 0 {
			t.Fatalf("%q is not equal to itself", s)
		}
	})
}
