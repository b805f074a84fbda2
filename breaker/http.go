package breaker

import (
	"context"
	"net/http"
	"strconv"
)

// RoundTripper is an [http.RoundTripper] for outbound calls that sends each
// request through a circuit breaker of its own host, so a host that fails
// is rejected at once while requests to other hosts go on.
//
// A transport error and a response whose status [WithFailureStatus] calls a
// failure (by default any 5xx) count against the host; any other response,
// 4xx included, counts for it: the host answered. Either way the response
// is returned to the caller as the next RoundTripper gave it, body unread,
// for the caller to read and close. A request whose caller cancelled its
// context is not counted; one whose deadline passed before the host
// answered is a failure. A request the breaker rejects is not sent; its
// error matches [ErrOpen], also through the *url.Error an [http.Client]
// wraps it in.
//
// Requests are keyed by req.URL.Host, so "api.example.com" and
// "api.example.com:8443" have breakers of their own; [WithRequestKey]
// keys them otherwise. The breakers belong to a [Group], which bounds how
// many hosts are remembered.
//
// A RoundTripper never modifies the request it is given. It is safe for
// concurrent use; create one with [NewRoundTripper].
type RoundTripper struct {
	next    http.RoundTripper
	group   *Group[*http.Response]
	failure func(status int) bool
	key     func(*http.Request) string
}

var _ http.RoundTripper = (*RoundTripper)(nil)

// RoundTripperOption configures a [RoundTripper].
type RoundTripperOption interface{ applyRoundTripper(*roundTripperConfig) }

type roundTripperConfig struct {
	group   *Group[*http.Response]
	failure func(status int) bool
	key     func(*http.Request) string
	err     error // the first invalid option
}

type roundTripperOptionFunc func(*roundTripperConfig)

func (f roundTripperOptionFunc) applyRoundTripper(c *roundTripperConfig) { f(c) }

// WithGroup sets the group whose breakers a [RoundTripper] uses, one per
// key; through it the caller chooses the breakers' options and the bound on
// hosts, and can read each host's state. Several RoundTrippers may share a
// group. The default is NewGroup[*http.Response]("http"), with every
// default.
func WithGroup(g *Group[*http.Response]) RoundTripperOption {
	return roundTripperOptionFunc(func(c *roundTripperConfig) {
		if g == nil {
			c.fail(configError("WithGroup", "must not be nil", nil))
		}
		c.group = g
	})
}

// WithFailureStatus sets which response statuses count as failures of the
// host. The default, [ServerErrorStatus], counts 5xx. A 429 from a host that
// sheds load is a candidate to add.
func WithFailureStatus(failure func(status int) bool) RoundTripperOption {
	return roundTripperOptionFunc(func(c *roundTripperConfig) {
		if failure == nil {
			c.fail(configError("WithFailureStatus", "must not be nil", nil))
		}
		c.failure = failure
	})
}

// WithRequestKey sets which breaker of the group a request goes through.
// The default is the request's URL.Host. Keep the number of keys bounded by
// the dependencies, not by the requests: key by host or by endpoint
// ("POST api.example.com/v1/charge"), never by a full URL with an ID in it.
func WithRequestKey(key func(*http.Request) string) RoundTripperOption {
	return roundTripperOptionFunc(func(c *roundTripperConfig) {
		if key == nil {
			c.fail(configError("WithRequestKey", "must not be nil", nil))
		}
		c.key = key
	})
}

func (c *roundTripperConfig) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

// ServerErrorStatus reports whether status is a server error, 500 to 599:
// the default of [WithFailureStatus].
func ServerErrorStatus(status int) bool { return status >= 500 && status <= 599 }

func hostKey(req *http.Request) string {
	if req.URL == nil {
		return ""
	}
	return req.URL.Host
}

// NewRoundTripper returns a RoundTripper that sends requests on to next
// through per-host breakers; a nil next is [http.DefaultTransport].
//
// Like [New], it panics on an invalid option, with an error matching
// [ErrInvalidConfig] that names it.
func NewRoundTripper(next http.RoundTripper, opts ...RoundTripperOption) *RoundTripper {
	c := roundTripperConfig{failure: ServerErrorStatus, key: hostKey}
	for i, o := range opts {
		if o == nil {
			c.fail(configError("opts", "must not contain nil, at index", i))
			break
		}
		o.applyRoundTripper(&c)
	}
	if c.err != nil {
		panic(c.err)
	}
	if next == nil {
		next = http.DefaultTransport
	}
	if c.group == nil {
		c.group = NewGroup[*http.Response]("http")
	}
	return &RoundTripper{next: next, group: c.group, failure: c.failure, key: c.key}
}

// Group returns the group of breakers the RoundTripper uses, to read or
// control the breaker of a host: rt.Group().State("api.example.com").
func (rt *RoundTripper) Group() *Group[*http.Response] { return rt.group }

// StatusError is the error a [RoundTripper]'s breaker is told of when a
// response has a status [WithFailureStatus] calls a failure. The caller of
// RoundTrip never sees it (it gets the response); a [Classifier] in the
// group's breaker options does, and may for instance return Ignored for
// some statuses.
type StatusError struct {
	StatusCode int
}

func (e *StatusError) Error() string {
	return "breaker: HTTP status " + strconv.Itoa(e.StatusCode) + " counted as a failure"
}

// RoundTrip sends req through the breaker of its key. It returns the next
// RoundTripper's response and error as they are, or, when the breaker
// rejects the request, no response and an error matching [ErrOpen].
func (rt *RoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	var called, statusFailure bool
	resp, err := rt.group.Execute(req.Context(), rt.key(req), func(context.Context) (*http.Response, error) {
		called = true
		resp, err := rt.next.RoundTrip(req)
		if err == nil && rt.failure(resp.StatusCode) {
			statusFailure = true
			return resp, &StatusError{StatusCode: resp.StatusCode}
		}
		return resp, err
	})
	if !called {
		// A RoundTripper closes the request body even when it fails.
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	if statusFailure {
		return resp, nil
	}
	return resp, err
}
