package limiter

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// ClientIP returns the address of the client that sent r.
//
// With no trusted proxies it is the address in r.RemoteAddr, and the
// X-Forwarded-For and X-Real-IP headers are ignored: any client can write
// them, so believing them would let a client pick its own rate-limit key.
//
// When the immediate peer (r.RemoteAddr) is inside one of trustedProxies,
// ClientIP reads the X-Forwarded-For entries (all such header lines, in
// order) from right to left, skipping addresses inside trustedProxies, and
// returns the first address that is not: entries to its left were written by
// the client or by proxies nobody vouches for. If every entry is trusted the
// leftmost is returned. If X-Forwarded-For is absent, a valid X-Real-IP is
// used instead. An entry that is not an IP address (optionally with a port)
// ends the walk and the last trusted hop is returned, so a malformed header
// never yields a key the client chose.
//
// The result is unmapped (::ffff:192.0.2.1 is 192.0.2.1) and has no zone.
// The error matches [ErrNoKey] when r.RemoteAddr holds no IP address, as it
// does for requests over a Unix socket.
func ClientIP(r *http.Request, trustedProxies ...netip.Prefix) (netip.Addr, error) {
	h, err := clientHost(r, trustedProxies)
	return h.addr, err
}

// ipText is a parsed address with the text it was parsed from, so a key can
// reuse that text instead of formatting the address again.
type ipText struct {
	addr netip.Addr
	text string
}

// key returns the address in canonical text form, reusing h.text when it
// already is (always so for a plain IPv4 address, which then costs no
// allocation).
func (h ipText) key() string {
	if h.addr.Is4() && len(h.text) <= len("255.255.255.255") && strings.IndexByte(h.text, ':') < 0 {
		return h.text
	}
	var buf [64]byte
	b := h.addr.AppendTo(buf[:0])
	if string(b) == h.text {
		return h.text
	}
	return string(b)
}

func clientHost(r *http.Request, trustedProxies []netip.Prefix) (ipText, error) {
	peer, ok := parseHostPort(r.RemoteAddr)
	if !ok {
		return ipText{}, fmt.Errorf("%w: RemoteAddr %q is not an IP address", ErrNoKey, r.RemoteAddr)
	}
	if len(trustedProxies) == 0 || !trustedAddr(peer.addr, trustedProxies) {
		return peer, nil
	}
	if xff := r.Header["X-Forwarded-For"]; len(xff) > 0 {
		return walkForwarded(peer, xff, trustedProxies), nil
	}
	if xri, ok := parseHostPort(strings.TrimSpace(r.Header.Get("X-Real-Ip"))); ok {
		return xri, nil
	}
	return peer, nil
}

// walkForwarded walks the X-Forwarded-For lines from the right. last is the
// nearest hop known to be genuine: the peer, then each trusted entry.
func walkForwarded(last ipText, lines []string, trustedProxies []netip.Prefix) ipText {
	for i := len(lines) - 1; i >= 0; i-- {
		line := lines[i]
		for len(line) > 0 {
			entry := line
			if c := strings.LastIndexByte(line, ','); c >= 0 {
				entry, line = line[c+1:], line[:c]
			} else {
				line = ""
			}
			entry = strings.TrimSpace(entry)
			if entry == "" {
				continue
			}
			a, ok := parseHostPort(entry)
			if !ok {
				return last
			}
			if !trustedAddr(a.addr, trustedProxies) {
				return a
			}
			last = a
		}
	}
	return last
}

func trustedAddr(a netip.Addr, prefixes []netip.Prefix) bool {
	for _, p := range prefixes {
		// Contains is false for an IPv4 prefix and a mapped address, so
		// addresses are unmapped before they get here.
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseHostPort parses "ip", "ip:port", "[ipv6]:port" and "[ipv6]". The
// address is unmapped and has no zone. It allocates nothing for IPv4.
func parseHostPort(s string) (ipText, bool) {
	text, ok := splitHost(s)
	if !ok {
		return ipText{}, false
	}
	a, err := netip.ParseAddr(text)
	if err != nil {
		return ipText{}, false
	}
	return ipText{addr: a.Unmap().WithZone(""), text: text}, true
}

// splitHost returns the host part of s. Unlike net.SplitHostPort it accepts
// a bare address, and it does not allocate.
func splitHost(s string) (string, bool) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", false
		}
		if rest := s[end+1:]; rest != "" && !validPort(rest) {
			return "", false
		}
		return s[1:end], true
	}
	c := strings.IndexByte(s, ':')
	if c < 0 || strings.IndexByte(s[c+1:], ':') >= 0 {
		// No colon: a bare IPv4 address. Two or more: a bare IPv6 one.
		return s, true
	}
	if !validPort(s[c:]) {
		return "", false
	}
	return s[:c], true
}

// validPort reports whether s is ":" followed by 1 to 5 digits.
func validPort(s string) bool {
	if len(s) < 2 || len(s) > 6 || s[0] != ':' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
