package limiter_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bulwarkgo/bulwark/limiter"
)

// fakeLimiter returns a fixed decision and error and records what it was
// asked.
type fakeLimiter struct {
	mu   sync.Mutex
	d    limiter.Decision
	err  error
	keys []string
	ns   []int
}

func (f *fakeLimiter) Allow(ctx context.Context, key string) (limiter.Decision, error) {
	return f.AllowN(ctx, key, 1)
}

func (f *fakeLimiter) AllowN(_ context.Context, key string, n int) (limiter.Decision, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys = append(f.keys, key)
	f.ns = append(f.ns, n)
	return f.d, f.err
}

var (
	allowed = limiter.Decision{
		Allowed:    true,
		Limit:      limiter.PerSecond(10, 20),
		Remaining:  7,
		ResetAfter: 1300 * time.Millisecond,
	}
	refused = limiter.Decision{
		Limit:      limiter.PerSecond(10, 20),
		Remaining:  0,
		RetryAfter: 100 * time.Millisecond,
		ResetAfter: 2 * time.Second,
	}
)

// okHandler answers 200 "ok" and counts its calls.
type okHandler struct {
	mu    sync.Mutex
	calls int
}

func (h *okHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.mu.Lock()
	h.calls++
	h.mu.Unlock()
	_, _ = io.WriteString(w, "ok")
}

func (h *okHandler) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls
}

func newMiddleware(t *testing.T, l limiter.Limiter, key limiter.KeyFunc, opts ...limiter.MiddlewareOption) *limiter.Middleware {
	t.Helper()
	m, err := limiter.NewMiddleware(l, key, opts...)
	if err != nil {
		t.Fatalf("NewMiddleware: %v", err)
	}
	return m
}

func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func request(remoteAddr string, header ...string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://example.com/items", nil)
	r.RemoteAddr = remoteAddr
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Add(header[i], header[i+1])
	}
	return r
}

// checkHeaders compares the named headers of h with want, where an absent
// header is "".
func checkHeaders(t *testing.T, h http.Header, want map[string]string) {
	t.Helper()
	for name, v := range want {
		if got := h.Get(name); got != v {
			t.Errorf("header %s = %q, want %q", name, got, v)
		}
	}
}

func TestNewMiddlewareValidation(t *testing.T) {
	fl := &fakeLimiter{}
	key := limiter.KeyByIP()
	tests := []struct {
		name  string
		l     limiter.Limiter
		key   limiter.KeyFunc
		opts  []limiter.MiddlewareOption
		field string
	}{
		{"nil limiter", nil, key, nil, "limiter"},
		{"nil key", fl, nil, nil, "key"},
		{"nil deny handler", fl, key, []limiter.MiddlewareOption{limiter.WithDenyHandler(nil)}, "WithDenyHandler"},
		{"nil cost", fl, key, []limiter.MiddlewareOption{limiter.WithCost(nil)}, "WithCost"},
		{"nil on error", fl, key, []limiter.MiddlewareOption{limiter.WithOnError(nil)}, "WithOnError"},
		{"empty message", fl, key, []limiter.MiddlewareOption{limiter.WithMessage("")}, "WithMessage"},
		{"empty error message", fl, key, []limiter.MiddlewareOption{limiter.WithErrorMessage("")}, "WithErrorMessage"},
		{"nil option", fl, key, []limiter.MiddlewareOption{nil}, "opts[0]"},
		{"unknown policy", fl, key, []limiter.MiddlewareOption{limiter.WithErrorPolicy(limiter.ErrorPolicy(7))}, "WithErrorPolicy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := limiter.NewMiddleware(tt.l, tt.key, tt.opts...)
			if !errors.Is(err, limiter.ErrInvalidConfig) {
				t.Fatalf("NewMiddleware error = %v, want one matching ErrInvalidConfig", err)
			}
			if m != nil {
				t.Errorf("NewMiddleware returned a Middleware with error %v", err)
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Errorf("error %q does not name %q", err, tt.field)
			}
		})
	}
}

func TestMiddlewareAllowed(t *testing.T) {
	fl := &fakeLimiter{d: allowed}
	next := &okHandler{}
	h := newMiddleware(t, fl, limiter.KeyByIP()).Handler(next)

	w := serve(h, request("192.0.2.1:4711"))

	if w.Code != http.StatusOK || w.Body.String() != "ok" || next.count() != 1 {
		t.Fatalf("got %d %q after %d calls of next, want 200 \"ok\" after 1", w.Code, w.Body, next.count())
	}
	want := http.Header{
		"Ratelimit-Limit":     {"20"},
		"Ratelimit-Remaining": {"7"},
		"Ratelimit-Reset":     {"2"},
		"Ratelimit-Policy":    {"10;w=1;burst=20"},
		"Content-Type":        {"text/plain; charset=utf-8"},
	}
	if !reflect.DeepEqual(w.Header(), want) {
		t.Errorf("headers = %v, want %v", w.Header(), want)
	}
	if !reflect.DeepEqual(fl.keys, []string{"192.0.2.1"}) || !reflect.DeepEqual(fl.ns, []int{1}) {
		t.Errorf("limiter asked for keys %q, n %v; want [192.0.2.1], [1]", fl.keys, fl.ns)
	}
}

func TestMiddlewareLimited(t *testing.T) {
	fl := &fakeLimiter{d: refused}
	next := &okHandler{}
	h := newMiddleware(t, fl, limiter.KeyByIP()).Handler(next)

	w := serve(h, request("192.0.2.1:4711"))

	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("status = %d, want 429", w.Code)
	}
	if next.count() != 0 {
		t.Errorf("next called %d times for a limited request", next.count())
	}
	want := http.Header{
		"Retry-After":         {"1"},
		"Ratelimit-Limit":     {"20"},
		"Ratelimit-Remaining": {"0"},
		"Ratelimit-Reset":     {"2"},
		"Ratelimit-Policy":    {"10;w=1;burst=20"},
		"Content-Type":        {"application/json"},
	}
	if !reflect.DeepEqual(w.Header(), want) {
		t.Errorf("headers = %v, want %v", w.Header(), want)
	}
	const body = `{"error":"rate_limited","message":"Too many requests. Please try again later.","retry_after_seconds":1}` + "\n"
	if w.Body.String() != body {
		t.Errorf("body = %q, want %q", w.Body, body)
	}
}

func TestMiddlewareMessage(t *testing.T) {
	const msg = `请求过于频繁，请稍后再试 <"quoted">`
	fl := &fakeLimiter{d: refused}
	fl.d.RetryAfter = 2500 * time.Millisecond
	h := newMiddleware(t, fl, limiter.KeyByIP(), limiter.WithMessage(msg)).Handler(&okHandler{})

	w := serve(h, request("192.0.2.1:4711"))

	var body struct {
		Error             string `json:"error"`
		Message           string `json:"message"`
		RetryAfterSeconds int    `json:"retry_after_seconds"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %q is not JSON: %v", w.Body, err)
	}
	if body.Error != "rate_limited" || body.Message != msg || body.RetryAfterSeconds != 3 {
		t.Errorf("body = %+v, want rate_limited, %q, 3", body, msg)
	}
	if got := w.Header().Get("Retry-After"); got != "3" {
		t.Errorf("Retry-After = %q, want 3", got)
	}
}

func TestMiddlewareRetryAfterRounding(t *testing.T) {
	tests := []struct {
		retryAfter, resetAfter time.Duration
		wantRetry, wantReset   string
	}{
		{0, 0, "1", "0"},
		{time.Nanosecond, time.Nanosecond, "1", "1"},
		{100 * time.Millisecond, 100 * time.Millisecond, "1", "1"},
		{time.Second, time.Second, "1", "1"},
		{time.Second + time.Nanosecond, 1200 * time.Millisecond, "2", "2"},
		{1200 * time.Millisecond, 4 * time.Second, "2", "4"},
		{59*time.Second + time.Millisecond, 90 * time.Second, "60", "90"},
		{-time.Second, -time.Second, "1", "0"},
	}
	for _, tt := range tests {
		fl := &fakeLimiter{d: refused}
		fl.d.RetryAfter, fl.d.ResetAfter = tt.retryAfter, tt.resetAfter
		h := newMiddleware(t, fl, limiter.KeyByIP()).Handler(&okHandler{})
		w := serve(h, request("192.0.2.1:4711"))
		if got := w.Header().Get("Retry-After"); got != tt.wantRetry {
			t.Errorf("RetryAfter %v: Retry-After = %q, want %q", tt.retryAfter, got, tt.wantRetry)
		}
		if got := w.Header().Get("RateLimit-Reset"); got != tt.wantReset {
			t.Errorf("ResetAfter %v: RateLimit-Reset = %q, want %q", tt.resetAfter, got, tt.wantReset)
		}
		if want := `"retry_after_seconds":` + tt.wantRetry + "}"; !strings.Contains(w.Body.String(), want) {
			t.Errorf("RetryAfter %v: body %q does not contain %q", tt.retryAfter, w.Body, want)
		}
	}
}

func TestMiddlewarePolicyHeader(t *testing.T) {
	tests := []struct {
		limit limiter.Limit
		want  string
	}{
		{limiter.PerSecond(10, 20), "10;w=1;burst=20"},
		{limiter.PerMinute(100, 5), "100;w=60;burst=5"},
		{limiter.Limit{Rate: 5, Period: 500 * time.Millisecond, Burst: 3}, "10;w=1;burst=3"},
		{limiter.Limit{Rate: 3, Period: 1500 * time.Millisecond, Burst: 3}, "2;w=1;burst=3"},
		{limiter.Limit{Rate: 2, Period: 1500 * time.Millisecond, Burst: 3}, "4;w=3;burst=3"},
		{limiter.Limit{Rate: 1, Period: 7 * time.Millisecond, Burst: 1}, "1000;w=7;burst=1"},
		{limiter.Limit{Rate: 1, Period: 86400*time.Second + time.Nanosecond, Burst: 1}, ""},
		{limiter.Limit{}, ""},
	}
	for _, tt := range tests {
		fl := &fakeLimiter{d: allowed}
		fl.d.Limit = tt.limit
		m := newMiddleware(t, fl, limiter.KeyByIP())
		h := m.Handler(&okHandler{})
		for range 2 { // the second response comes from the cache
			w := serve(h, request("192.0.2.1:4711"))
			if got := w.Header().Get("RateLimit-Policy"); got != tt.want {
				t.Errorf("limit %v: RateLimit-Policy = %q, want %q", tt.limit, got, tt.want)
			}
		}
	}
}

func TestMiddlewareNoLimitInDecision(t *testing.T) {
	// A concurrency limiter's decision has no rate: only the fields that
	// mean something are written.
	fl := &fakeLimiter{d: limiter.Decision{RetryAfter: 10 * time.Millisecond}}
	h := newMiddleware(t, fl, limiter.KeyByIP()).Handler(&okHandler{})
	w := serve(h, request("192.0.2.1:4711"))
	checkHeaders(t, w.Header(), map[string]string{
		"Retry-After":         "1",
		"RateLimit-Limit":     "",
		"RateLimit-Policy":    "",
		"RateLimit-Remaining": "0",
		"RateLimit-Reset":     "0",
	})
}

func TestMiddlewareWithoutRateLimitHeaders(t *testing.T) {
	fl := &fakeLimiter{d: allowed}
	h := newMiddleware(t, fl, limiter.KeyByIP(), limiter.WithRateLimitHeaders(false)).Handler(&okHandler{})
	w := serve(h, request("192.0.2.1:4711"))
	for name := range w.Header() {
		if strings.HasPrefix(name, "Ratelimit-") {
			t.Errorf("allowed response has %s with WithRateLimitHeaders(false)", name)
		}
	}

	fl.d = refused
	w = serve(h, request("192.0.2.1:4711"))
	checkHeaders(t, w.Header(), map[string]string{"Retry-After": "1", "RateLimit-Remaining": "0"})
}

func TestMiddlewareDenyHandler(t *testing.T) {
	fl := &fakeLimiter{d: refused}
	var (
		got   limiter.Decision
		found bool
		seen  http.Header
	)
	deny := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, found = limiter.DecisionFromContext(r.Context())
		seen = w.Header().Clone()
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "<p>稍后再试</p>")
	})
	h := newMiddleware(t, fl, limiter.KeyByIP(), limiter.WithDenyHandler(deny)).Handler(&okHandler{})

	w := serve(h, request("192.0.2.1:4711"))

	if !found || got != refused {
		t.Errorf("DecisionFromContext = %+v, %v; want %+v, true", got, found, refused)
	}
	checkHeaders(t, seen, map[string]string{"Retry-After": "1", "RateLimit-Remaining": "0", "RateLimit-Limit": "20"})
	if w.Code != http.StatusServiceUnavailable || w.Body.String() != "<p>稍后再试</p>" {
		t.Errorf("response = %d %q, want the deny handler's", w.Code, w.Body)
	}
	if _, ok := limiter.DecisionFromContext(context.Background()); ok {
		t.Error("DecisionFromContext found a decision in an empty context")
	}
}

func TestMiddlewareDoesNotMutateRequest(t *testing.T) {
	for _, d := range []limiter.Decision{allowed, refused} {
		fl := &fakeLimiter{d: d}
		var passed *http.Request
		next := http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { passed = r })
		h := newMiddleware(t, fl, limiter.KeyByIP(), limiter.WithDenyHandler(next)).Handler(next)

		r := request("192.0.2.1:4711", "X-Forwarded-For", "198.51.100.1")
		ctx := r.Context()
		before := r.Header.Clone()
		serve(h, r)

		if r.Context() != ctx || !reflect.DeepEqual(r.Header, before) || r.RemoteAddr != "192.0.2.1:4711" {
			t.Errorf("allowed=%v: the request was modified", d.Allowed)
		}
		if d.Allowed && passed != r {
			t.Error("an allowed request was not passed on as it came")
		}
		if !d.Allowed && passed == r {
			t.Error("the deny handler got the caller's request rather than a copy")
		}
	}
}

func TestMiddlewareCost(t *testing.T) {
	fl := &fakeLimiter{d: allowed}
	cost := func(r *http.Request) int {
		if r.URL.Path == "/export" {
			return 5
		}
		return 1
	}
	h := newMiddleware(t, fl, limiter.KeyByIP(), limiter.WithCost(cost)).Handler(&okHandler{})
	serve(h, httptest.NewRequest(http.MethodGet, "/export", nil))
	serve(h, httptest.NewRequest(http.MethodGet, "/items", nil))
	if !reflect.DeepEqual(fl.ns, []int{5, 1}) {
		t.Errorf("limiter asked for n %v, want [5 1]", fl.ns)
	}
}

func TestMiddlewareCheck(t *testing.T) {
	fl := &fakeLimiter{d: refused}
	m := newMiddleware(t, fl, limiter.KeyByHeader("X-API-Key"))

	d, err := m.Check(request("192.0.2.1:4711", "X-API-Key", "k1"))
	if err != nil || d != refused {
		t.Errorf("Check = %+v, %v; want %+v, nil", d, err, refused)
	}
	if !reflect.DeepEqual(fl.keys, []string{"k1"}) {
		t.Errorf("keys = %q, want [k1]", fl.keys)
	}
	if err := d.Err(); !errors.Is(err, limiter.ErrLimited) {
		t.Errorf("refusal's Err() = %v, want ErrLimited", err)
	}

	if _, err := m.Check(request("192.0.2.1:4711")); !errors.Is(err, limiter.ErrNoKey) {
		t.Errorf("Check without the header: error = %v, want ErrNoKey", err)
	}
}

func TestMiddlewareErrorPolicy(t *testing.T) {
	errBroken := errors.New("backend broken")
	const unavailable = `{"error":"unavailable","message":"The service is temporarily unavailable. Please try again later."}` + "\n"
	tests := []struct {
		name     string
		limitErr error
		key      limiter.KeyFunc
		policy   []limiter.MiddlewareOption
		wantCode int
		wantBody string
		wantErr  error
	}{
		{"limiter error, default serves", errBroken, limiter.KeyByIP(), nil, 200, "ok", errBroken},
		{"limiter error, ServeOnError", errBroken, limiter.KeyByIP(),
			[]limiter.MiddlewareOption{limiter.WithErrorPolicy(limiter.ServeOnError)}, 200, "ok", errBroken},
		{"limiter error, RejectOnError", errBroken, limiter.KeyByIP(),
			[]limiter.MiddlewareOption{limiter.WithErrorPolicy(limiter.RejectOnError)}, 503, unavailable, errBroken},
		{"missing key, default serves", nil, limiter.KeyByHeader("X-API-Key"), nil, 200, "ok", limiter.ErrNoKey},
		{"missing key, RejectOnError", nil, limiter.KeyByHeader("X-API-Key"),
			[]limiter.MiddlewareOption{limiter.WithErrorPolicy(limiter.RejectOnError)}, 503, unavailable, limiter.ErrNoKey},
		{"RejectOnError with message", errBroken, limiter.KeyByIP(),
			[]limiter.MiddlewareOption{limiter.WithErrorPolicy(limiter.RejectOnError), limiter.WithErrorMessage("服务繁忙")},
			503, `{"error":"unavailable","message":"服务繁忙"}` + "\n", errBroken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fl := &fakeLimiter{d: allowed, err: tt.limitErr}
			var seen []error
			opts := append(tt.policy, limiter.WithOnError(func(_ *http.Request, err error) { seen = append(seen, err) }))
			next := &okHandler{}
			h := newMiddleware(t, fl, tt.key, opts...).Handler(next)

			w := serve(h, request("192.0.2.1:4711"))

			if w.Code != tt.wantCode || w.Body.String() != tt.wantBody {
				t.Errorf("response = %d %q, want %d %q", w.Code, w.Body, tt.wantCode, tt.wantBody)
			}
			if tt.wantCode == 503 {
				checkHeaders(t, w.Header(), map[string]string{"Content-Type": "application/json", "RateLimit-Remaining": ""})
			}
			if len(seen) != 1 || !errors.Is(seen[0], tt.wantErr) {
				t.Errorf("WithOnError saw %v, want one error matching %v", seen, tt.wantErr)
			}
		})
	}
}

func TestMiddlewareCancelledRequest(t *testing.T) {
	for _, p := range []limiter.ErrorPolicy{limiter.ServeOnError, limiter.RejectOnError} {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		fl := &fakeLimiter{err: context.Canceled}
		next := &okHandler{}
		onError := func(*http.Request, error) { t.Error("WithOnError called for a cancelled request") }
		h := newMiddleware(t, fl, limiter.KeyByIP(), limiter.WithErrorPolicy(p), limiter.WithOnError(onError)).Handler(next)

		w := serve(h, request("192.0.2.1:4711").WithContext(ctx))

		if next.count() != 0 || w.Code != http.StatusServiceUnavailable || w.Body.Len() != 0 {
			t.Errorf("%v: cancelled request got %d %q, next called %d times; want 503, no body, no call",
				p, w.Code, w.Body, next.count())
		}
	}
}

func TestMiddlewareWithLocal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim, err := limiter.NewLocal(limiter.PerSecond(5, 10))
		if err != nil {
			t.Fatal(err)
		}
		h := newMiddleware(t, lim, limiter.KeyByIP()).Handler(&okHandler{})
		for i := range 10 {
			w := serve(h, request("192.0.2.1:4711"))
			if w.Code != http.StatusOK {
				t.Fatalf("request %d: status %d, want 200", i+1, w.Code)
			}
			checkHeaders(t, w.Header(), map[string]string{
				"RateLimit-Limit":     "10",
				"RateLimit-Remaining": strconv.Itoa(9 - i),
				"RateLimit-Reset":     strconv.Itoa((i + 5) / 5), // 200ms per missing token, rounded up
				"RateLimit-Policy":    "5;w=1;burst=10",
			})
		}
		w := serve(h, request("192.0.2.1:4711", "X-Forwarded-For", "198.51.100.1"))
		if w.Code != http.StatusTooManyRequests {
			t.Fatalf("11th request: status %d, want 429", w.Code)
		}
		checkHeaders(t, w.Header(), map[string]string{
			"Retry-After":         "1",
			"RateLimit-Remaining": "0",
			"RateLimit-Reset":     "2",
		})
		if w := serve(h, request("192.0.2.2:4711")); w.Code != http.StatusOK {
			t.Errorf("another client: status %d, want 200", w.Code)
		}

		time.Sleep(time.Second) // five tokens come back
		for i := range 6 {
			want := http.StatusOK
			if i == 5 {
				want = http.StatusTooManyRequests
			}
			if w := serve(h, request("192.0.2.1:4711")); w.Code != want {
				t.Errorf("after a second, request %d: status %d, want %d", i+1, w.Code, want)
			}
		}
	})
}

func TestErrorPolicyString(t *testing.T) {
	for p, want := range map[limiter.ErrorPolicy]string{
		limiter.ServeOnError:    "ServeOnError",
		limiter.RejectOnError:   "RejectOnError",
		limiter.ErrorPolicy(42): "ErrorPolicy(42)",
	} {
		if got := p.String(); got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	}
}

func TestKeyByIPRemoteAddr(t *testing.T) {
	tests := []struct {
		remoteAddr, want string
	}{
		{"192.0.2.1:4711", "192.0.2.1"},
		{"192.0.2.1", "192.0.2.1"},
		{"[2001:DB8:0:0::1]:443", "2001:db8::1"},
		{"[2001:db8::1]", "2001:db8::1"},
		{"2001:db8::1", "2001:db8::1"},
		{"[::ffff:192.0.2.1]:80", "192.0.2.1"},
		{"[fe80::1%eth0]:80", "fe80::1"},
		{"[::1]:80", "::1"},
	}
	key := limiter.KeyByIP()
	for _, tt := range tests {
		got, err := key(request(tt.remoteAddr))
		if err != nil || got != tt.want {
			t.Errorf("RemoteAddr %q: key = %q, %v; want %q", tt.remoteAddr, got, err, tt.want)
		}
	}
}

func TestKeyByIPMalformedRemoteAddr(t *testing.T) {
	for _, ra := range []string{
		"", "@", "garbage", "192.0.2.1:", ":80", "192.0.2.1:http", "192.0.2.1:123456",
		"[::1", "[::1]80", "[192.0.2.1:80", "300.0.0.1:80", "01.2.3.4:80", "192.0.2.1:80:80x",
	} {
		key, err := limiter.KeyByIP()(request(ra))
		if !errors.Is(err, limiter.ErrNoKey) {
			t.Errorf("RemoteAddr %q: key = %q, %v; want an error matching ErrNoKey", ra, key, err)
		}
	}
}

func TestKeyByIPIgnoresForwardingWithoutTrustedProxies(t *testing.T) {
	r := request("192.0.2.1:4711",
		"X-Forwarded-For", "198.51.100.7",
		"X-Forwarded-For", "203.0.113.9",
		"X-Real-IP", "198.51.100.8")
	got, err := limiter.KeyByIP()(r)
	if err != nil || got != "192.0.2.1" {
		t.Errorf("key = %q, %v; want the peer 192.0.2.1", got, err)
	}
	// An untrusted peer's headers are ignored just the same.
	got, err = limiter.KeyByIP(netip.MustParsePrefix("10.0.0.0/8"))(r)
	if err != nil || got != "192.0.2.1" {
		t.Errorf("with other trusted proxies: key = %q, %v; want the peer 192.0.2.1", got, err)
	}
}

func TestKeyByIPTrustedProxies(t *testing.T) {
	trusted := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("2001:db8:ffff::/48"),
		netip.MustParsePrefix("127.0.0.1/8"), // not masked: KeyByIP masks it
	}
	tests := []struct {
		name       string
		remoteAddr string
		header     []string
		want       string
	}{
		{"one proxy", "10.0.0.1:80", []string{"X-Forwarded-For", "203.0.113.5"}, "203.0.113.5"},
		{"spoofed entries left of the client are skipped", "10.0.0.1:80",
			[]string{"X-Forwarded-For", "198.51.100.66, 1.1.1.1, 203.0.113.5, 10.0.0.2"}, "203.0.113.5"},
		{"several header lines are one list", "10.0.0.1:80",
			[]string{"X-Forwarded-For", "198.51.100.66, 203.0.113.5", "X-Forwarded-For", "10.0.0.3,10.0.0.2"}, "203.0.113.5"},
		{"loopback proxy", "127.0.0.1:80", []string{"X-Forwarded-For", "203.0.113.5"}, "203.0.113.5"},
		{"all hops trusted: the leftmost", "10.0.0.1:80", []string{"X-Forwarded-For", "10.1.1.1, 10.0.0.2"}, "10.1.1.1"},
		{"malformed entry: the last trusted hop", "10.0.0.1:80",
			[]string{"X-Forwarded-For", "203.0.113.5, unknown, 10.0.0.2"}, "10.0.0.2"},
		{"malformed first entry: the peer", "10.0.0.1:80", []string{"X-Forwarded-For", "not-an-ip"}, "10.0.0.1"},
		{"empty entries skipped", "10.0.0.1:80", []string{"X-Forwarded-For", " , 203.0.113.5 ,, "}, "203.0.113.5"},
		{"empty header: the peer", "10.0.0.1:80", []string{"X-Forwarded-For", ""}, "10.0.0.1"},
		{"entry with port", "10.0.0.1:80", []string{"X-Forwarded-For", "203.0.113.5:4711"}, "203.0.113.5"},
		{"IPv6 entry", "10.0.0.1:80", []string{"X-Forwarded-For", "2001:DB8::5"}, "2001:db8::5"},
		{"bracketed IPv6 entry with port", "10.0.0.1:80", []string{"X-Forwarded-For", "[2001:db8::5]:443"}, "2001:db8::5"},
		{"IPv6 proxy", "[2001:db8:ffff::1]:80", []string{"X-Forwarded-For", "203.0.113.5"}, "203.0.113.5"},
		{"mapped IPv4 proxy", "[::ffff:10.0.0.1]:80", []string{"X-Forwarded-For", "::ffff:203.0.113.5"}, "203.0.113.5"},
		{"X-Real-IP without X-Forwarded-For", "10.0.0.1:80", []string{"X-Real-IP", "203.0.113.5"}, "203.0.113.5"},
		{"X-Forwarded-For wins over X-Real-IP", "10.0.0.1:80",
			[]string{"X-Real-IP", "198.51.100.66", "X-Forwarded-For", "203.0.113.5"}, "203.0.113.5"},
		{"malformed X-Real-IP: the peer", "10.0.0.1:80", []string{"X-Real-IP", "nope"}, "10.0.0.1"},
		{"no headers: the peer", "10.0.0.1:80", nil, "10.0.0.1"},
	}
	key := limiter.KeyByIP(trusted...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := key(request(tt.remoteAddr, tt.header...))
			if err != nil || got != tt.want {
				t.Errorf("key = %q, %v; want %q", got, err, tt.want)
			}
			a, err := limiter.ClientIP(request(tt.remoteAddr, tt.header...), trusted...)
			if err != nil || a.String() != tt.want {
				t.Errorf("ClientIP = %v, %v; want %s", a, err, tt.want)
			}
		})
	}
}

func TestKeyByIPAllocs(t *testing.T) {
	key := limiter.KeyByIP()
	r := request("192.0.2.1:4711")
	if n := testing.AllocsPerRun(100, func() { _, _ = key(r) }); n != 0 {
		t.Errorf("KeyByIP allocates %v times per IPv4 request, want 0", n)
	}
	key = limiter.KeyByIP(netip.MustParsePrefix("10.0.0.0/8"))
	r = request("10.0.0.1:4711", "X-Forwarded-For", "203.0.113.5, 10.0.0.2")
	if n := testing.AllocsPerRun(100, func() { _, _ = key(r) }); n != 0 {
		t.Errorf("KeyByIP allocates %v times per forwarded IPv4 request, want 0", n)
	}
}

func TestKeyBySubnet(t *testing.T) {
	tests := []struct {
		v4, v6     int
		remoteAddr string
		want       string
	}{
		{32, 64, "192.0.2.1:80", "192.0.2.1"},
		{32, 64, "[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:80", "2001:db8:1:2::/64"},
		{32, 64, "[2001:db8:1:2::1]:80", "2001:db8:1:2::/64"},
		{24, 128, "192.0.2.77:80", "192.0.2.0/24"},
		{24, 128, "[2001:db8::1]:80", "2001:db8::1"},
		{24, 48, "[::ffff:192.0.2.77]:80", "192.0.2.0/24"},
	}
	for _, tt := range tests {
		got, err := limiter.KeyBySubnet(tt.v4, tt.v6)(request(tt.remoteAddr))
		if err != nil || got != tt.want {
			t.Errorf("KeyBySubnet(%d, %d) for %s = %q, %v; want %q", tt.v4, tt.v6, tt.remoteAddr, got, err, tt.want)
		}
	}
	// Trusted proxies are honoured as by KeyByIP.
	key := limiter.KeyBySubnet(32, 64, netip.MustParsePrefix("10.0.0.0/8"))
	got, err := key(request("10.0.0.1:80", "X-Forwarded-For", "2001:db8:9:9::1"))
	if err != nil || got != "2001:db8:9:9::/64" {
		t.Errorf("forwarded: key = %q, %v; want 2001:db8:9:9::/64", got, err)
	}
	if _, err := key(request("bad")); !errors.Is(err, limiter.ErrNoKey) {
		t.Errorf("malformed RemoteAddr: error = %v, want ErrNoKey", err)
	}
}

func TestKeyBySubnetPanicsOnBadBits(t *testing.T) {
	for _, bits := range [][2]int{{-1, 64}, {33, 64}, {32, -1}, {32, 129}} {
		func() {
			defer func() {
				err, _ := recover().(error)
				if !errors.Is(err, limiter.ErrInvalidConfig) {
					t.Errorf("KeyBySubnet(%d, %d) panicked with %v, want an ErrInvalidConfig", bits[0], bits[1], err)
				}
			}()
			limiter.KeyBySubnet(bits[0], bits[1])
		}()
	}
}

func TestKeyByHeader(t *testing.T) {
	key := limiter.KeyByHeader("x-api-key")
	got, err := key(request("192.0.2.1:80", "X-Api-Key", "k-123", "X-Api-Key", "k-456"))
	if err != nil || got != "k-123" {
		t.Errorf("key = %q, %v; want the first value k-123", got, err)
	}
	for _, r := range []*http.Request{request("192.0.2.1:80"), request("192.0.2.1:80", "X-Api-Key", "")} {
		if got, err := key(r); !errors.Is(err, limiter.ErrNoKey) || got != "" {
			t.Errorf("header %q: key = %q, %v; want an error matching ErrNoKey", r.Header, got, err)
		}
	}
	func() {
		defer func() {
			if err, _ := recover().(error); !errors.Is(err, limiter.ErrInvalidConfig) {
				t.Errorf(`KeyByHeader("") panicked with %v, want an ErrInvalidConfig`, err)
			}
		}()
		limiter.KeyByHeader("")
	}()
}

func TestKeyOr(t *testing.T) {
	key := limiter.KeyOr(limiter.KeyByHeader("X-User-ID"), limiter.KeyByIP())
	if got, err := key(request("192.0.2.1:80", "X-User-ID", "u42")); err != nil || got != "u42" {
		t.Errorf("with header: key = %q, %v; want u42", got, err)
	}
	if got, err := key(request("192.0.2.1:80")); err != nil || got != "192.0.2.1" {
		t.Errorf("without header: key = %q, %v; want the IP", got, err)
	}

	errAuth := errors.New("bad token")
	failing := func(*http.Request) (string, error) { return "", errAuth }
	if _, err := limiter.KeyOr(failing, limiter.KeyByIP())(request("192.0.2.1:80")); !errors.Is(err, errAuth) {
		t.Errorf("other error: got %v, want it returned as is", err)
	}
}

func BenchmarkKeyByIP(b *testing.B) {
	key := limiter.KeyByIP()
	r := request("192.0.2.1:4711")
	b.ReportAllocs()
	for b.Loop() {
		_, _ = key(r)
	}
}

func BenchmarkMiddleware(b *testing.B) {
	h := newMiddlewareB(b, fixedLimiter{allowed}).Handler(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	r := request("192.0.2.1:4711")
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(discardWriter{}, r)
	}
}

// fixedLimiter always returns the same decision.
type fixedLimiter struct{ d limiter.Decision }

func (f fixedLimiter) Allow(context.Context, string) (limiter.Decision, error) { return f.d, nil }
func (f fixedLimiter) AllowN(context.Context, string, int) (limiter.Decision, error) {
	return f.d, nil
}

// discardWriter is a ResponseWriter with a fresh header map per request, as
// a server gives.
type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) WriteHeader(int)             {}

func newMiddlewareB(b *testing.B, l limiter.Limiter) *limiter.Middleware {
	m, err := limiter.NewMiddleware(l, limiter.KeyByIP())
	if err != nil {
		b.Fatal(err)
	}
	return m
}
