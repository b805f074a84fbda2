package limiter_test

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/bulwarkgo/bulwark/limiter"
)

// fuzzTrusted are the proxies FuzzClientIP trusts, with a fuzzed prefix
// added when it parses.
var fuzzTrusted = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("2001:db8:ffff::/48"),
}

// parseEntry reads one address as ClientIP reads RemoteAddr: "ip",
// "ip:port", "[ipv6]:port" or "[ipv6]".
func parseEntry(s string) (netip.Addr, bool) {
	a, err := limiter.ClientIP(&http.Request{RemoteAddr: s})
	return a, err == nil
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// refClientIP is ClientIP as its documentation describes it, for a peer
// that parsed: with a trusted peer, the X-Forwarded-For entries of every
// line from right to left, skipping trusted ones, the first untrusted one
// wins, a malformed one ends the walk at the last trusted hop, and all
// trusted gives the leftmost; without X-Forwarded-For a valid X-Real-IP;
// otherwise the peer.
func refClientIP(peer netip.Addr, h http.Header, trusted []netip.Prefix) netip.Addr {
	if len(trusted) == 0 || !isTrusted(peer, trusted) {
		return peer
	}
	lines := h.Values("X-Forwarded-For")
	if len(lines) == 0 {
		if a, ok := parseEntry(strings.TrimSpace(h.Get("X-Real-IP"))); ok {
			return a
		}
		return peer
	}
	last := peer
	for i := len(lines) - 1; i >= 0; i-- {
		entries := strings.Split(lines[i], ",")
		for j := len(entries) - 1; j >= 0; j-- {
			e := strings.TrimSpace(entries[j])
			if e == "" {
				continue
			}
			a, ok := parseEntry(e)
			if !ok {
				return last
			}
			if !isTrusted(a, trusted) {
				return a
			}
			last = a
		}
	}
	return last
}

// FuzzClientIP sends ClientIP fuzzed RemoteAddr, X-Forwarded-For (one or
// two lines), X-Real-IP and Forwarded headers, with and without trusted
// proxies. It never panics; it fails only for a RemoteAddr that is not an
// address, whatever the headers, with an error matching ErrNoKey;
// otherwise the result is a valid address, unmapped and without a zone,
// KeyByIP's and KeyBySubnet's keys agree with it, and it is what the
// documented walk gives. The client's own headers never move it: from an
// untrusted peer the result is the peer's address whatever the headers
// say; Forwarded is not read at all; and once the walk has reached an
// untrusted address, whatever a client writes to its left (more entries,
// another header line before the others) changes nothing.
func FuzzClientIP(f *testing.F) {
	const (
		trust  = 1 << iota // trust fuzzTrusted and the fuzzed prefix
		xff                // send X-Forwarded-For
		xri                // send X-Real-IP
		fwd                // send Forwarded
		twoXFF             // send xff2 as a second X-Forwarded-For line
	)
	for _, s := range []struct {
		remote, xff1, xff2, xRealIP, forwarded, prefix string
		flags                                          uint8
	}{
		{"192.0.2.1:4711", "198.51.100.1", "", "", "", "", xff},
		{"192.0.2.1:4711", "198.51.100.1", "", "198.51.100.2", "for=198.51.100.3", "192.0.2.0/24", xff | xri | fwd},
		{"10.0.0.1:80", "198.51.100.1, 203.0.113.5, 10.0.0.2", "", "", "", "", trust | xff},
		{"10.0.0.1:80", "198.51.100.66, 203.0.113.5", "10.0.0.3,10.0.0.2", "", "", "", trust | xff | twoXFF},
		{"10.0.0.1:80", "", "", "203.0.113.5", "", "", trust | xri},
		{"10.0.0.1:80", "", "", " nope ", "for=203.0.113.9", "", trust | xri | fwd},
		{"10.0.0.1:80", "10.1.1.1, 10.0.0.2", "", "", "", "", trust | xff},
		{"10.0.0.1:80", "203.0.113.5, unknown, 10.0.0.2", "", "", "", "", trust | xff},
		{"[2001:db8::1%eth0]:80", "[2001:db8::5]:443, ::ffff:10.1.2.3", "", "", "", "2001:db8::/32", trust | xff},
		{"[::ffff:10.0.0.1]:1", "unknown,,, 300.1.1.1", "", "::1", "", "", trust | xff | xri},
		{"[2001:db8:ffff::1]:80", "fe80::1%eth0, 2001:db8:ffff::2", "", "", `for="[2001:db8::7]:1"`, "", trust | xff | fwd},
		{"192.0.2.1:4711", "203.0.113.5", "", "", "", "0.0.0.0/0", trust | xff},
		{"127.0.0.1:80", " , 203.0.113.5 ,, ", "", "", "", "127.0.0.1/8", trust | xff},
		{"garbage", "1.2.3.4", "", "1.2.3.4", "", "", trust | xff | xri},
		{"[::1", "[", "]", "]", "", "", trust | xff | xri | twoXFF},
		{"", ",", ":", ":", "", "", trust | xff | xri},
		{"/tmp/socket", "", "", "", "", "", 0},
	} {
		f.Add(s.remote, s.xff1, s.xff2, s.xRealIP, s.forwarded, s.prefix, s.flags)
	}
	f.Fuzz(func(t *testing.T, remoteAddr, xff1, xff2, xRealIP, forwarded, prefix string, flags uint8) {
		r := &http.Request{RemoteAddr: remoteAddr, Header: http.Header{}}
		if flags&xff != 0 {
			r.Header.Add("X-Forwarded-For", xff1)
			if flags&twoXFF != 0 {
				r.Header.Add("X-Forwarded-For", xff2)
			}
		}
		if flags&xri != 0 {
			r.Header.Set("X-Real-IP", xRealIP)
		}
		if flags&fwd != 0 {
			r.Header.Set("Forwarded", forwarded)
		}
		var proxies []netip.Prefix
		if flags&trust != 0 {
			proxies = fuzzTrusted
			if p, err := netip.ParsePrefix(prefix); err == nil {
				proxies = append(proxies[:len(proxies):len(proxies)], p)
			}
		}

		a, err := limiter.ClientIP(r, proxies...)
		peer, peerOK := parseEntry(remoteAddr)
		if err != nil {
			if !errors.Is(err, limiter.ErrNoKey) {
				t.Fatalf("error %v does not match ErrNoKey", err)
			}
			if peerOK {
				t.Fatalf("RemoteAddr %q is an address (%v), but with headers: %v", remoteAddr, peer, err)
			}
			return
		}
		if !peerOK {
			t.Fatalf("RemoteAddr %q is not an address, but with headers ClientIP = %v", remoteAddr, a)
		}
		if !a.IsValid() || a.Is4In6() || a.Zone() != "" {
			t.Fatalf("ClientIP = %#v: not a valid unmapped address without zone", a)
		}
		if want := refClientIP(peer, r.Header, proxies); a != want {
			t.Fatalf("ClientIP = %v, want %v (peer %v, headers %q, trusted %v)", a, want, peer, r.Header, proxies)
		}
		key, err := limiter.KeyByIP(proxies...)(r)
		if err != nil || key != a.String() {
			t.Fatalf("KeyByIP = %q, %v; want %q", key, err, a)
		}
		subnet, err := limiter.KeyBySubnet(24, 48, proxies...)(r)
		if want := netip.PrefixFrom(a, map[bool]int{true: 24, false: 48}[a.Is4()]).Masked(); err != nil || subnet != want.String() {
			t.Fatalf("KeyBySubnet = %q, %v; want %q", subnet, err, want)
		}

		// From a peer nobody vouches for, headers are the client's own.
		if !isTrusted(peer, proxies) && a != peer {
			t.Fatalf("untrusted peer %v, but ClientIP = %v from its headers %q", peer, a, r.Header)
		}
		// Forwarded is not read.
		if flags&fwd != 0 {
			r2 := &http.Request{RemoteAddr: remoteAddr, Header: r.Header.Clone()}
			r2.Header.Del("Forwarded")
			if b, _ := limiter.ClientIP(r2, proxies...); b != a {
				t.Fatalf("Forwarded %q moved ClientIP from %v to %v", forwarded, b, a)
			}
		}
		// Entries left of an untrusted address are the client's: nothing
		// it writes there matters.
		if flags&xff != 0 && !isTrusted(a, proxies) && a != peer {
			for _, h := range []http.Header{
				{"X-Forwarded-For": append([]string{xRealIP + "," + xff1}, r.Header.Values("X-Forwarded-For")[1:]...)},
				{"X-Forwarded-For": append([]string{forwarded}, r.Header.Values("X-Forwarded-For")...)},
			} {
				if b, _ := limiter.ClientIP(&http.Request{RemoteAddr: remoteAddr, Header: h}, proxies...); b != a {
					t.Fatalf("a client's entries on the left moved ClientIP from %v to %v: %q", a, b, h)
				}
			}
		}
	})
}
