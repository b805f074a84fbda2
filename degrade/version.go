package degrade

// version is a parsed app version: up to four numeric parts, and whether
// it carries a pre-release suffix ("2.3.0-beta.1"), which sorts before the
// release. Build metadata ("+abc") is ignored. A leading "v" is allowed.
type version struct {
	parts [4]uint32
	pre   string
}

// parseVersion parses s without allocating.
func parseVersion(s string) (version, bool) {
	var v version
	if len(s) > 0 && (s[0] == 'v' || s[0] == 'V') {
		s = s[1:]
	}
	if s == "" {
		return v, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] == '+' {
			s = s[:i]
			break
		}
	}
	n := 0
	for i := 0; ; {
		if n == len(v.parts) {
			return v, false
		}
		start := i
		var x uint64
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			x = x*10 + uint64(s[i]-'0')
			if x > 1<<32-1 {
				return v, false
			}
			i++
		}
		if i == start {
			return v, false
		}
		v.parts[n] = uint32(x)
		n++
		if i == len(s) {
			return v, true
		}
		switch s[i] {
		case '.':
			i++
		case '-':
			if i+1 == len(s) {
				return v, false
			}
			v.pre = s[i+1:]
			return v, true
		default:
			return v, false
		}
	}
}

// compare returns -1, 0 or +1 as a is before, equal to or after b.
// Pre-releases compare by their text, which orders "alpha" < "beta" <
// "rc" and beta.2 < beta.3 (but not beta.10 after beta.9).
func (a version) compare(b version) int {
	for i := range a.parts {
		switch {
		case a.parts[i] < b.parts[i]:
			return -1
		case a.parts[i] > b.parts[i]:
			return 1
		}
	}
	switch {
	case a.pre == b.pre:
		return 0
	case a.pre == "":
		return 1
	case b.pre == "":
		return -1
	case a.pre < b.pre:
		return -1
	}
	return 1
}
