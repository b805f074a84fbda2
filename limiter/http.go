package limiter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"net/http"
	"net/netip"
	"net/textproto"
	"strconv"
	"sync/atomic"
	"time"
)

// ErrNoKey is matched by the error of a [KeyFunc] that finds nothing to key
// the request by: a missing header, a RemoteAddr that is not an IP address.
// [KeyOr] falls back on it.
var ErrNoKey = errors.New("limiter: no key for request")

// A KeyFunc names the bucket a request is counted against: a client IP, an
// API key, a user ID. An error means the request has no key; it goes to the
// [Middleware]'s [ErrorPolicy]. A KeyFunc that finds nothing to key by
// should return an error matching [ErrNoKey].
//
// A key may share memory with the request (KeyByIP's is cut from
// RemoteAddr); a Limiter that keeps keys copies them, as [Local] does.
type KeyFunc func(r *http.Request) (string, error)

// KeyByIP keys requests by client IP address, as found by [ClientIP]: the
// peer's address, or with trustedProxies the first untrusted address in
// X-Forwarded-For. Without trustedProxies forwarding headers are ignored.
//
// List as trusted only the proxies in front of the service (a load
// balancer's subnet, 127.0.0.1/32 for a sidecar), never a range clients can
// send from. Keys are canonical text ("192.0.2.1", "2001:db8::1"); for a
// plain IPv4 peer the key costs no allocation.
func KeyByIP(trustedProxies ...netip.Prefix) KeyFunc {
	trustedProxies = maskedPrefixes(trustedProxies)
	return func(r *http.Request) (string, error) {
		h, err := clientHost(r, trustedProxies)
		if err != nil {
			return "", err
		}
		return h.key(), nil
	}
}

// KeyBySubnet keys requests by the network the client IP (as in [KeyByIP])
// belongs to: the first ipv4Bits bits of an IPv4 address, the first ipv6Bits
// of an IPv6 one. KeyBySubnet(32, 64) is the usual choice: one bucket per
// IPv4 address and one per IPv6 /64, because a single subscriber is commonly
// given a whole /64 and can send from any address in it. Keys of a whole
// address are as in KeyByIP; others are prefixes, "2001:db8:1:2::/64".
//
// It panics if ipv4Bits is not in [0, 32] or ipv6Bits not in [0, 128]: like
// an invalid pattern given to [http.ServeMux], that is a mistake in the
// program, found the first time it runs.
func KeyBySubnet(ipv4Bits, ipv6Bits int, trustedProxies ...netip.Prefix) KeyFunc {
	if ipv4Bits < 0 || ipv4Bits > 32 {
		panic(configError("KeyBySubnet ipv4Bits", "must be in [0, 32]", ipv4Bits))
	}
	if ipv6Bits < 0 || ipv6Bits > 128 {
		panic(configError("KeyBySubnet ipv6Bits", "must be in [0, 128]", ipv6Bits))
	}
	trustedProxies = maskedPrefixes(trustedProxies)
	return func(r *http.Request) (string, error) {
		h, err := clientHost(r, trustedProxies)
		if err != nil {
			return "", err
		}
		n := ipv6Bits
		if h.addr.Is4() {
			n = ipv4Bits
		}
		if n == h.addr.BitLen() {
			return h.key(), nil
		}
		p, err := h.addr.Prefix(n)
		if err != nil { // unreachable: n is in range for the address family
			return "", fmt.Errorf("%w: %v", ErrNoKey, err)
		}
		return p.String(), nil
	}
}

func maskedPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if p.IsValid() {
			out = append(out, p.Masked())
		}
	}
	return out
}

// KeyByHeader keys requests by the first value of the named header, such as
// an API key or a user ID set by an authenticating gateway. A request
// without the header, or with an empty value, gets an error matching
// [ErrNoKey]; combine with [KeyOr] to fall back to another key.
//
// Clients choose their own headers: key by one only when something in front
// of the service checks it, or a client can send a fresh value per request
// and never be limited, or name another client's key and use up its budget.
//
// It panics if name is empty.
func KeyByHeader(name string) KeyFunc {
	if name == "" {
		panic(configError("KeyByHeader name", "must not be empty", `""`))
	}
	canonical := textproto.CanonicalMIMEHeaderKey(name)
	return func(r *http.Request) (string, error) {
		if v := r.Header[canonical]; len(v) > 0 && v[0] != "" {
			return v[0], nil
		}
		return "", fmt.Errorf("%w: header %s is missing", ErrNoKey, canonical)
	}
}

// KeyOr returns a KeyFunc that uses first and, when first's error matches
// [ErrNoKey], fallback. Other errors from first are returned as they are:
// they mean something is wrong, not that the key is absent.
//
//	limiter.KeyOr(limiter.KeyByHeader("X-User-ID"), limiter.KeyByIP())
func KeyOr(first, fallback KeyFunc) KeyFunc {
	return func(r *http.Request) (string, error) {
		k, err := first(r)
		if errors.Is(err, ErrNoKey) {
			return fallback(r)
		}
		return k, err
	}
}

// ErrorPolicy says what a [Middleware] does with a request for which no
// decision could be made: the key function or the limiter returned an error.
type ErrorPolicy int

const (
	// ServeOnError passes the request to the next handler, unlimited. It is
	// the default: a limiter that cannot decide (Redis down, a missing
	// header) should not take the service down with it. Keep an eye on
	// such errors with [WithOnError].
	ServeOnError ErrorPolicy = iota
	// RejectOnError answers 503 Service Unavailable with a JSON body:
	// {"error":"unavailable","message":"..."}. Choose it when an unlimited
	// request is worse than a refused one.
	RejectOnError
)

// String names the policy as it reads in code.
func (p ErrorPolicy) String() string {
	switch p {
	case ServeOnError:
		return "ServeOnError"
	case RejectOnError:
		return "RejectOnError"
	}
	return "ErrorPolicy(" + strconv.Itoa(int(p)) + ")"
}

// DefaultMessage and DefaultErrorMessage are the user-facing messages of the
// default 429 and 503 bodies. Replace them with [WithMessage] and
// [WithErrorMessage], for example in the users' language:
// limiter.WithMessage("请求过于频繁，请稍后再试").
const (
	DefaultMessage      = "Too many requests. Please try again later."
	DefaultErrorMessage = "The service is temporarily unavailable. Please try again later."
)

// A MiddlewareOption configures a [Middleware].
type MiddlewareOption interface{ applyMiddleware(*middlewareConfig) }

type middlewareOptionFunc func(*middlewareConfig)

func (f middlewareOptionFunc) applyMiddleware(c *middlewareConfig) { f(c) }

type middlewareConfig struct {
	deny         http.Handler
	denySet      bool
	cost         func(*http.Request) int
	costSet      bool
	message      string
	errorMessage string
	policy       ErrorPolicy
	onError      func(*http.Request, error)
	onErrorSet   bool
	headers      bool
}

// WithDenyHandler replaces the handler that answers a limited request. When
// it runs, the response already carries Retry-After and the RateLimit-*
// headers (delete them if unwanted), and [DecisionFromContext] on the
// request's context returns the decision. The default writes 429 Too Many
// Requests with a JSON body:
//
//	{"error":"rate_limited","message":"...","retry_after_seconds":N}
func WithDenyHandler(h http.Handler) MiddlewareOption {
	return middlewareOptionFunc(func(c *middlewareConfig) { c.deny, c.denySet = h, true })
}

// WithCost sets how many tokens a request takes, for endpoints that cost
// more than others (a search, an export). It must return a value in
// [0, burst]; anything else is an error from the limiter, handled by the
// [ErrorPolicy]. The default is 1 for every request.
func WithCost(cost func(r *http.Request) int) MiddlewareOption {
	return middlewareOptionFunc(func(c *middlewareConfig) { c.cost, c.costSet = cost, true })
}

// WithMessage sets the user-facing message in the default 429 body. The
// default is [DefaultMessage].
func WithMessage(msg string) MiddlewareOption {
	return middlewareOptionFunc(func(c *middlewareConfig) { c.message = msg })
}

// WithErrorMessage sets the user-facing message in the 503 body written
// under [RejectOnError]. The default is [DefaultErrorMessage].
func WithErrorMessage(msg string) MiddlewareOption {
	return middlewareOptionFunc(func(c *middlewareConfig) { c.errorMessage = msg })
}

// WithErrorPolicy sets what happens to a request when the key function or
// the limiter returns an error. The default is [ServeOnError].
//
// Either way, a request whose own context is already done (the client went
// away, a timeout upstream) is not served: the middleware writes the status
// 503 with no body and returns, since no one is waiting for more.
func WithErrorPolicy(p ErrorPolicy) MiddlewareOption {
	return middlewareOptionFunc(func(c *middlewareConfig) { c.policy = p })
}

// WithOnError sets a function called with every error from the key function
// or the limiter, before the [ErrorPolicy] is applied; use it to log or
// count them, since under ServeOnError they are otherwise silent. It is not
// called for a request whose context is done: a client that left is not a
// fault. f must be safe for concurrent use. The default is none.
func WithOnError(f func(r *http.Request, err error)) MiddlewareOption {
	return middlewareOptionFunc(func(c *middlewareConfig) { c.onError, c.onErrorSet = f, true })
}

// WithRateLimitHeaders sets whether allowed responses carry the RateLimit-*
// headers. Limited responses always carry them. The default is true.
func WithRateLimitHeaders(on bool) MiddlewareOption {
	return middlewareOptionFunc(func(c *middlewareConfig) { c.headers = on })
}

// Middleware rate-limits HTTP requests with a [Limiter], one bucket per key.
//
// [Middleware.Handler] wraps a handler. Each request is given a key by the
// [KeyFunc] and takes tokens (1, or see [WithCost]) from that key's bucket.
// An allowed request goes to the next handler with the RateLimit-* headers
// set on the response. A limited one goes to the deny handler, by default a
// 429 Too Many Requests with a JSON body (see [WithDenyHandler]). When no
// decision can be made, the [ErrorPolicy] applies; by default the request is
// served.
//
// The headers follow the RateLimit fields of the IETF httpapi draft
// (draft-ietf-httpapi-ratelimit-headers-06), in whole seconds rounded up:
//
//	RateLimit-Limit: 20            the burst: requests allowed at once
//	RateLimit-Remaining: 7         requests left in the bucket
//	RateLimit-Reset: 2             seconds until the bucket is full again
//	RateLimit-Policy: 10;w=1;burst=20   10 requests per 1-second window, bursts of 20
//	Retry-After: 1                 (limited responses only) seconds to wait, at least 1
//
// RateLimit-Limit and RateLimit-Policy are left out when the decision
// carries no Limit (as from a concurrency limiter), and RateLimit-Policy
// when the rate cannot be written as whole requests per whole seconds.
//
// Middleware never modifies the request it is given: the next handler gets
// it as it came, and the deny handler a shallow copy with the decision in
// its context. It is safe for concurrent use.
type Middleware struct {
	limiter      Limiter
	key          KeyFunc
	cost         func(*http.Request) int
	deny         http.Handler
	policy       ErrorPolicy
	onError      func(*http.Request, error)
	headers      bool
	errorBody    []byte
	policyHeader atomic.Pointer[policyValue]
}

// NewMiddleware returns a Middleware that limits requests with l, keyed by
// key. The error matches [ErrInvalidConfig] and names the bad argument or
// option.
func NewMiddleware(l Limiter, key KeyFunc, opts ...MiddlewareOption) (*Middleware, error) {
	c := middlewareConfig{
		message:      DefaultMessage,
		errorMessage: DefaultErrorMessage,
		policy:       ServeOnError,
		headers:      true,
	}
	for i, o := range opts {
		if o == nil {
			return nil, configError("NewMiddleware opts["+strconv.Itoa(i)+"]", "must not be nil", "nil")
		}
		o.applyMiddleware(&c)
	}
	switch {
	case l == nil:
		return nil, configError("NewMiddleware limiter", "must not be nil", "nil")
	case key == nil:
		return nil, configError("NewMiddleware key", "must not be nil", "nil")
	case c.denySet && c.deny == nil:
		return nil, configError("WithDenyHandler handler", "must not be nil", "nil")
	case c.costSet && c.cost == nil:
		return nil, configError("WithCost cost", "must not be nil", "nil")
	case c.onErrorSet && c.onError == nil:
		return nil, configError("WithOnError f", "must not be nil", "nil")
	case c.message == "":
		return nil, configError("WithMessage msg", "must not be empty", `""`)
	case c.errorMessage == "":
		return nil, configError("WithErrorMessage msg", "must not be empty", `""`)
	case c.policy != ServeOnError && c.policy != RejectOnError:
		return nil, configError("WithErrorPolicy policy", "must be ServeOnError or RejectOnError", c.policy)
	}
	m := &Middleware{
		limiter:   l,
		key:       key,
		cost:      c.cost,
		deny:      c.deny,
		policy:    c.policy,
		onError:   c.onError,
		headers:   c.headers,
		errorBody: append(jsonStart("unavailable", c.errorMessage), "}\n"...),
	}
	if m.deny == nil {
		m.deny = defaultDeny{prefix: append(jsonStart("rate_limited", c.message), `,"retry_after_seconds":`...)}
	}
	return m, nil
}

// Check decides whether r may proceed, taking its tokens from its key's
// bucket as the request itself would, and writes nothing: use it to limit
// inside a handler or to build a different response. A refusal is a
// Decision with Allowed false and a nil error; the error is non-nil only
// when the key function or the limiter failed, which includes r's context
// being done.
func (m *Middleware) Check(r *http.Request) (Decision, error) {
	key, err := m.key(r)
	if err != nil {
		return Decision{}, err
	}
	if m.cost == nil {
		return m.limiter.Allow(r.Context(), key)
	}
	return m.limiter.AllowN(r.Context(), key, m.cost(r))
}

// Handler returns next wrapped by the limit. The method value m.Handler is
// a func(http.Handler) http.Handler, the usual shape of middleware.
func (m *Middleware) Handler(next http.Handler) http.Handler {
	return &limitedHandler{m: m, next: next}
}

type limitedHandler struct {
	m    *Middleware
	next http.Handler
}

func (h *limitedHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m := h.m
	d, err := m.Check(r)
	if err != nil {
		m.fail(w, r, h.next, err)
		return
	}
	if d.Allowed {
		if m.headers {
			m.setHeaders(w.Header(), d)
		}
		h.next.ServeHTTP(w, r)
		return
	}
	hdr := w.Header()
	m.setHeaders(hdr, d)
	hdr["Retry-After"] = []string{strconv.FormatInt(retryAfterSeconds(d), 10)}
	m.deny.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), decisionKey{}, d)))
}

func (m *Middleware) fail(w http.ResponseWriter, r *http.Request, next http.Handler, err error) {
	if r.Context().Err() != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	if m.onError != nil {
		m.onError(r, err)
	}
	if m.policy == ServeOnError {
		next.ServeHTTP(w, r)
		return
	}
	w.Header()["Content-Type"] = []string{"application/json"}
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write(m.errorBody)
}

// setHeaders writes the RateLimit-* fields of d. The map is indexed with
// canonical keys directly, which is what Header.Set does after
// canonicalizing, and the values share one backing array: one allocation
// instead of four.
func (m *Middleware) setHeaders(h http.Header, d Decision) {
	vals := new([4]string)
	vals[0] = strconv.Itoa(max(d.Remaining, 0))
	h["Ratelimit-Remaining"] = vals[0:1:1]
	vals[1] = strconv.FormatInt(wholeSecondsUp(d.ResetAfter), 10)
	h["Ratelimit-Reset"] = vals[1:2:2]
	if d.Limit.Burst > 0 {
		vals[2] = strconv.Itoa(d.Limit.Burst)
		h["Ratelimit-Limit"] = vals[2:3:3]
		if vals[3] = m.policyFor(d.Limit); vals[3] != "" {
			h["Ratelimit-Policy"] = vals[3:4:4]
		}
	}
}

// policyValue caches the RateLimit-Policy text of the last limit seen:
// nearly always the one limit of the Limiter.
type policyValue struct {
	limit Limit
	text  string
}

func (m *Middleware) policyFor(l Limit) string {
	if p := m.policyHeader.Load(); p != nil && p.limit == l {
		return p.text
	}
	p := &policyValue{limit: l, text: policyText(l)}
	m.policyHeader.Store(p)
	return p.text
}

// policyText formats l as a quota policy, "10;w=1;burst=20": Rate requests
// per window of w seconds. A Period that is not whole seconds is rescaled
// to the smallest whole-second window with a whole quota (5 per 500ms is
// "10;w=1"). It returns "" when there is none within a day, or l is not
// valid.
func policyText(l Limit) string {
	if l.Rate <= 0 || l.Period <= 0 || l.Burst <= 0 {
		return ""
	}
	q, w := int64(l.Rate), int64(l.Period/time.Second)
	if l.Period%time.Second != 0 {
		// q/w = Rate/Period in lowest terms: divide out common factors of
		// one second and the period, then of the rate and what is left.
		s, p := int64(time.Second), int64(l.Period)
		g := gcdInt64(s, p)
		s, p = s/g, p/g
		g = gcdInt64(q, p)
		q, w = q/g, p/g
		hi, lo := bits.Mul64(uint64(q), uint64(s))
		if hi != 0 || lo > math.MaxInt64 || w > int64(24*time.Hour/time.Second) {
			return ""
		}
		q = int64(lo)
	}
	return strconv.FormatInt(q, 10) + ";w=" + strconv.FormatInt(w, 10) + ";burst=" + strconv.Itoa(l.Burst)
}

func gcdInt64(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// wholeSecondsUp is d in whole seconds, rounded up; 0 for d ≤ 0.
func wholeSecondsUp(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return ceilDiv(int64(d), int64(time.Second))
}

// retryAfterSeconds is the Retry-After value of a refusal: at least 1, so a
// client never reads it as "retry at once".
func retryAfterSeconds(d Decision) int64 { return max(wholeSecondsUp(d.RetryAfter), 1) }

type decisionKey struct{}

// DecisionFromContext returns the decision a [Middleware] stored in the
// context of the request it passes to its deny handler.
func DecisionFromContext(ctx context.Context) (Decision, bool) {
	d, ok := ctx.Value(decisionKey{}).(Decision)
	return d, ok
}

// defaultDeny writes the 429 response. prefix is the JSON body up to the
// retry_after_seconds value, built once.
type defaultDeny struct{ prefix []byte }

func (h defaultDeny) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	secs := int64(1)
	if d, ok := DecisionFromContext(r.Context()); ok {
		secs = retryAfterSeconds(d)
	}
	body := make([]byte, 0, len(h.prefix)+24)
	body = append(body, h.prefix...)
	body = strconv.AppendInt(body, secs, 10)
	body = append(body, "}\n"...)
	w.Header()["Content-Type"] = []string{"application/json"}
	w.WriteHeader(http.StatusTooManyRequests)
	_, _ = w.Write(body)
}

// jsonStart returns {"error":code,"message":msg without the closing brace.
func jsonStart(code, msg string) []byte {
	m, err := json.Marshal(msg)
	if err != nil { // unreachable: a string always marshals
		panic(err)
	}
	return append([]byte(`{"error":"`+code+`","message":`), m...)
}
