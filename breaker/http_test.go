package breaker_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
)

// rtServer starts a server answering with handler and counting the
// requests that reach it.
func rtServer(t *testing.T, handler http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		handler(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

func rtStatus(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// rtClient returns a client whose transport goes through a RoundTripper
// with a group whose breakers open after n failures in a row, for an hour.
func rtClient(t *testing.T, n int, opts ...breaker.RoundTripperOption) (*http.Client, *breaker.Group[*http.Response]) {
	t.Helper()
	g := breaker.NewGroup[*http.Response]("http", breaker.WithBreakerOptions(
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(n)),
		breaker.WithOpenTimeout(time.Hour)))
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	rt := breaker.NewRoundTripper(tr, append([]breaker.RoundTripperOption{breaker.WithGroup(g)}, opts...)...)
	if rt.Group() != g {
		t.Fatal("Group() is not the group given with WithGroup")
	}
	return &http.Client{Transport: rt}, g
}

func rtHost(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// rtGet does a GET and returns the status and body, or the error.
func rtGet(t *testing.T, c *http.Client, ctx context.Context, target string) (int, string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return resp.StatusCode, string(body), nil
}

func TestRoundTripper5xxTripsAndRejects(t *testing.T) {
	srv, hits := rtServer(t, rtStatus(http.StatusServiceUnavailable, "try later"))
	c, g := rtClient(t, 3)
	ctx := t.Context()

	for i := range 3 {
		status, body, err := rtGet(t, c, ctx, srv.URL)
		// The failing response is the caller's, body and all.
		if err != nil || status != http.StatusServiceUnavailable || body != "try later" {
			t.Fatalf("request %d: %d %q %v; want 503 \"try later\" and no error", i+1, status, body, err)
		}
	}
	if got := g.State(rtHost(t, srv)); got != breaker.StateOpen {
		t.Fatalf("State = %v after 3 responses of 503, want open", got)
	}

	_, _, err := rtGet(t, c, ctx, srv.URL)
	if !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("request to an open host: %v, want ErrOpen", err)
	}
	var uerr *url.Error
	if !errors.As(err, &uerr) {
		t.Errorf("error %T is not the client's *url.Error", err)
	}
	if hits.Load() != 3 {
		t.Errorf("server saw %d requests, want 3: a rejected request must not be sent", hits.Load())
	}
}

func TestRoundTripper4xxIsNotAFailure(t *testing.T) {
	srv, _ := rtServer(t, rtStatus(http.StatusNotFound, "no such order"))
	c, g := rtClient(t, 1)
	for range 5 {
		status, body, err := rtGet(t, c, t.Context(), srv.URL)
		if err != nil || status != http.StatusNotFound || body != "no such order" {
			t.Fatalf("got %d %q %v; want 404 \"no such order\"", status, body, err)
		}
	}
	b := g.Get(rtHost(t, srv))
	if b.State() != breaker.StateClosed {
		t.Errorf("State = %v after 404s, want closed", b.State())
	}
	if c := b.Counts(); c.TotalSuccesses != 5 || c.TotalFailures != 0 {
		t.Errorf("Counts = %+v, want 5 successes", c)
	}
}

func TestRoundTripperHostsAreIndependent(t *testing.T) {
	bad, _ := rtServer(t, rtStatus(http.StatusInternalServerError, "boom"))
	good, goodHits := rtServer(t, rtStatus(http.StatusOK, "ok"))
	c, g := rtClient(t, 2)
	ctx := t.Context()
	for range 2 {
		_, _, _ = rtGet(t, c, ctx, bad.URL)
	}
	if _, _, err := rtGet(t, c, ctx, bad.URL); !errors.Is(err, breaker.ErrOpen) {
		t.Errorf("bad host: %v, want ErrOpen", err)
	}
	for range 3 {
		if status, body, err := rtGet(t, c, ctx, good.URL); err != nil || status != http.StatusOK || body != "ok" {
			t.Errorf("good host: %d %q %v; want 200 \"ok\"", status, body, err)
		}
	}
	if goodHits.Load() != 3 {
		t.Errorf("good host saw %d requests, want 3", goodHits.Load())
	}
	if s := g.State(rtHost(t, good)); s != breaker.StateClosed {
		t.Errorf("good host's state = %v, want closed", s)
	}
}

// rtBlocking holds each request until its context ends, and says on
// arrived when one has come in.
func rtBlocking(arrived chan<- struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done()
	}
}

func TestRoundTripperCancelledRequestIsNotCounted(t *testing.T) {
	arrived := make(chan struct{}, 1)
	srv, _ := rtServer(t, rtBlocking(arrived))
	c, g := rtClient(t, 1)
	for range 3 {
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			<-arrived
			cancel()
		}()
		if _, _, err := rtGet(t, c, ctx, srv.URL); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled request: %v, want context.Canceled", err)
		}
	}
	b := g.Get(rtHost(t, srv))
	if b.State() != breaker.StateClosed || b.Counts().TotalFailures != 0 {
		t.Errorf("after cancelled requests: %v, %+v; want closed with no failures", b.State(), b.Counts())
	}
}

func TestRoundTripperDeadlineIsAFailure(t *testing.T) {
	arrived := make(chan struct{}, 1)
	srv, _ := rtServer(t, rtBlocking(arrived))
	c, g := rtClient(t, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := rtGet(t, c, ctx, srv.URL); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request past its deadline: %v, want context.DeadlineExceeded", err)
	}
	if s := g.State(rtHost(t, srv)); s != breaker.StateOpen {
		t.Errorf("State = %v, want open: the host did not answer in time", s)
	}
}

func TestRoundTripperTransportErrorIsAFailure(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	target := srv.URL
	srv.Close() // nothing listens there now
	c, _ := rtClient(t, 2)
	ctx := t.Context()
	for i := range 2 {
		_, _, err := rtGet(t, c, ctx, target)
		if err == nil || errors.Is(err, breaker.ErrOpen) {
			t.Fatalf("request %d to a closed server: %v, want a transport error", i+1, err)
		}
	}
	if _, _, err := rtGet(t, c, ctx, target); !errors.Is(err, breaker.ErrOpen) {
		t.Errorf("third request: %v, want ErrOpen", err)
	}
}

func TestRoundTripperFailureStatus(t *testing.T) {
	srv, _ := rtServer(t, rtStatus(http.StatusTooManyRequests, "slow down"))
	c, g := rtClient(t, 1, breaker.WithFailureStatus(func(status int) bool {
		return status == http.StatusTooManyRequests || breaker.ServerErrorStatus(status)
	}))
	_, _, _ = rtGet(t, c, t.Context(), srv.URL)
	if s := g.State(rtHost(t, srv)); s != breaker.StateOpen {
		t.Errorf("State = %v after a 429 counted as a failure, want open", s)
	}
}

func TestRoundTripperClassifierSeesStatusError(t *testing.T) {
	srv, _ := rtServer(t, rtStatus(http.StatusServiceUnavailable, ""))
	var seen atomic.Int64
	g := breaker.NewGroup[*http.Response]("http", breaker.WithBreakerOptions(
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
		breaker.WithClassifier(func(err error) breaker.Outcome {
			var se *breaker.StatusError
			if errors.As(err, &se) {
				seen.Store(int64(se.StatusCode))
				return breaker.Ignored
			}
			if err != nil {
				return breaker.Failure
			}
			return breaker.Success
		})))
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: breaker.NewRoundTripper(tr, breaker.WithGroup(g))}
	for range 3 {
		if status, _, err := rtGet(t, c, t.Context(), srv.URL); status != http.StatusServiceUnavailable || err != nil {
			t.Fatalf("got %d %v, want 503", status, err)
		}
	}
	if seen.Load() != http.StatusServiceUnavailable {
		t.Errorf("classifier saw status %d, want 503", seen.Load())
	}
	if s := g.State(rtHost(t, srv)); s != breaker.StateClosed {
		t.Errorf("State = %v, want closed: the classifier ignores 503", s)
	}
}

func TestRoundTripperRequestKey(t *testing.T) {
	srv, _ := rtServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/broken" {
			w.WriteHeader(http.StatusBadGateway)
		}
	})
	c, g := rtClient(t, 1, breaker.WithRequestKey(func(r *http.Request) string {
		return r.URL.Host + r.URL.Path
	}))
	ctx := t.Context()
	_, _, _ = rtGet(t, c, ctx, srv.URL+"/broken")
	if _, _, err := rtGet(t, c, ctx, srv.URL+"/broken"); !errors.Is(err, breaker.ErrOpen) {
		t.Errorf("/broken: %v, want ErrOpen", err)
	}
	if status, _, err := rtGet(t, c, ctx, srv.URL+"/fine"); err != nil || status != http.StatusOK {
		t.Errorf("/fine: %d %v, want 200", status, err)
	}
	if s := g.State(rtHost(t, srv) + "/broken"); s != breaker.StateOpen {
		t.Errorf("State(host/broken) = %v, want open", s)
	}
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type rtBody struct {
	io.Reader
	closed bool
}

func (c *rtBody) Close() error { c.closed = true; return nil }

func TestRoundTripperLeavesRequestAlone(t *testing.T) {
	var got *http.Request
	next := rtFunc(func(r *http.Request) (*http.Response, error) {
		got = r
		return nil, errors.New("connection reset")
	})
	rt := breaker.NewRoundTripper(next, breaker.WithGroup(breaker.NewGroup[*http.Response]("http",
		breaker.WithBreakerOptions(breaker.WithTripPolicy(breaker.ConsecutiveFailures(1))))))

	body := &rtBody{Reader: strings.NewReader("order")}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://payments.example/charge", body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Idempotency-Key", "abc")
	before := *req
	beforeURL := *req.URL
	if _, err := rt.RoundTrip(req); err == nil || got != req {
		t.Fatalf("RoundTrip = %v, passing %p; want the transport's error and the request itself", err, got)
	}
	if req.Method != before.Method || *req.URL != beforeURL || req.Body != before.Body ||
		req.Header.Get("Idempotency-Key") != "abc" || len(req.Header) != 1 || req.Host != before.Host {
		t.Errorf("the request was modified: %+v", req)
	}

	// Now open: the request is not sent, and its body is closed as a
	// RoundTripper must.
	got = nil
	_, err = rt.RoundTrip(req)
	if !errors.Is(err, breaker.ErrOpen) || got != nil {
		t.Errorf("RoundTrip on an open breaker = %v (sent: %v), want ErrOpen, not sent", err, got != nil)
	}
	if !body.closed {
		t.Error("a rejected request's body was not closed")
	}
}

func TestRoundTripperPanicIsAFailure(t *testing.T) {
	rt := breaker.NewRoundTripper(rtFunc(func(*http.Request) (*http.Response, error) { panic("bug") }),
		breaker.WithGroup(breaker.NewGroup[*http.Response]("http",
			breaker.WithBreakerOptions(breaker.WithTripPolicy(breaker.ConsecutiveFailures(1))))))
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://maps.example/", nil)
	if err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if r := recover(); r != "bug" {
				t.Errorf("recovered %v, want the transport's panic", r)
			}
		}()
		_, _ = rt.RoundTrip(req)
	}()
	if s := rt.Group().State("maps.example"); s != breaker.StateOpen {
		t.Errorf("State = %v after a panic, want open", s)
	}
}

func TestRoundTripperDefaults(t *testing.T) {
	rt := breaker.NewRoundTripper(nil)
	if rt.Group() == nil || rt.Group().Name() != "http" {
		t.Errorf("default group: %v", rt.Group())
	}
	for status, want := range map[int]bool{200: false, 404: false, 499: false, 500: true, 503: true, 599: true, 600: false} {
		if breaker.ServerErrorStatus(status) != want {
			t.Errorf("ServerErrorStatus(%d) = %v, want %v", status, !want, want)
		}
	}
}

func TestRoundTripperInvalidOptions(t *testing.T) {
	for _, tc := range []struct {
		field string
		opt   breaker.RoundTripperOption
	}{
		{"WithGroup", breaker.WithGroup(nil)},
		{"WithFailureStatus", breaker.WithFailureStatus(nil)},
		{"WithRequestKey", breaker.WithRequestKey(nil)},
		{"opts", nil},
	} {
		got := groupPanic(func() { breaker.NewRoundTripper(nil, tc.opt) })
		if !strings.Contains(got, tc.field) || !strings.Contains(got, "invalid") {
			t.Errorf("%s: NewRoundTripper panicked with %q, want ErrInvalidConfig naming it", tc.field, got)
		}
	}
}
