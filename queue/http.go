package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
)

// Names under which tickets and admission tokens travel. Each is accepted
// from a header (for clients that keep state themselves, as mini-programs
// do) or from a cookie (for browsers); the status endpoint also reads the
// ticket from the "ticket" query parameter.
const (
	TicketHeader    = "Bulwark-Ticket"
	AdmissionHeader = "Bulwark-Admission"
	TicketCookie    = "bulwark_ticket"
	AdmissionCookie = "bulwark_admission"
)

// HTTPOption configures the handlers and middleware of this package.
type HTTPOption interface{ applyHTTP(*httpConfig) }

type httpOptionFunc func(*httpConfig)

func (f httpOptionFunc) applyHTTP(c *httpConfig) { f(c) }

type httpConfig struct {
	retryAfter time.Duration
	refuse     func(http.ResponseWriter, *http.Request, error)
	messages   map[string]string
	cookie     http.Cookie
}

func newHTTPConfig(opts []HTTPOption) *httpConfig {
	c := &httpConfig{
		retryAfter: 10 * time.Second,
		messages:   make(map[string]string, len(defaultMessages)),
		cookie:     http.Cookie{Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode},
	}
	for k, v := range defaultMessages {
		c.messages[k] = v
	}
	for _, o := range opts {
		o.applyHTTP(c)
	}
	if c.refuse == nil {
		c.refuse = c.writeRefusal
	}
	return c
}

// WithRetryAfter sets the Retry-After of a refusal (a full line, a wait too
// long, a store that cannot be reached). The default is 10 seconds.
func WithRetryAfter(d time.Duration) HTTPOption {
	return httpOptionFunc(func(c *httpConfig) { c.retryAfter = d })
}

// WithMessage replaces the user-facing message sent with the error code
// code: "queue_full", "wait_timeout", "wait_too_long", "unavailable",
// "waiting", "admitted", "ticket_expired", "token_missing",
// "token_invalid", "token_expired" or "token_replayed". The defaults are
// short English sentences; a service for Chinese users sets its own.
func WithMessage(code, message string) HTTPOption {
	return httpOptionFunc(func(c *httpConfig) { c.messages[code] = message })
}

// WithRefusalHandler replaces how a refused request is answered. h receives
// the error, which matches one of the package's sentinels (ErrFull,
// ErrWaitTimeout, ErrWaitTooLong, ErrUnavailable, ErrClosed,
// ErrTicketExpired, ErrTokenInvalid, ErrTokenExpired, ErrTokenReplayed,
// or ErrNoToken). The default writes a JSON body with an error code and
// message: 503 with Retry-After for the line's refusals, 410 for an
// expired ticket, 403 for a missing or bad token.
func WithRefusalHandler(h func(w http.ResponseWriter, r *http.Request, err error)) HTTPOption {
	return httpOptionFunc(func(c *httpConfig) { c.refuse = h })
}

// WithCookie sets the attributes of the cookies the handlers set (Path,
// Domain, Secure, SameSite; Name, Value and Expires are the handlers'). The
// default is Path "/", HttpOnly, SameSite Lax, and Secure when the request
// came over TLS. Behind a proxy that terminates TLS, set Secure here: the
// request the handlers see then came over plain HTTP.
func WithCookie(template http.Cookie) HTTPOption {
	return httpOptionFunc(func(c *httpConfig) { c.cookie = template })
}

// ErrNoToken means a request to an endpoint that requires admission carried
// no admission token.
var ErrNoToken = errors.New("queue: no admission token")

var defaultMessages = map[string]string{
	"queue_full":     "The line is full. Please try again shortly.",
	"wait_timeout":   "Sorry, your turn did not come in time. Please try again shortly.",
	"wait_too_long":  "The line is too long right now. Please try again shortly.",
	"unavailable":    "The line is unavailable right now. Please try again shortly.",
	"waiting":        "You are in line. Please keep this page open.",
	"admitted":       "It is your turn.",
	"ticket_expired": "Your place in line has expired. Please join again.",
	"token_missing":  "Please join the line first.",
	"token_invalid":  "This admission is not valid. Please join the line again.",
	"token_expired":  "Your admission has expired. Please join the line again.",
	"token_replayed": "This admission has already been used.",
}

// codeOf maps an error to its code and HTTP status.
func codeOf(err error) (string, int) {
	switch {
	case errors.Is(err, ErrUnavailable):
		// First: a store failure may wrap the error it caused.
		return "unavailable", http.StatusServiceUnavailable
	case errors.Is(err, ErrFull):
		return "queue_full", http.StatusServiceUnavailable
	case errors.Is(err, ErrWaitTimeout):
		return "wait_timeout", http.StatusServiceUnavailable
	case errors.Is(err, ErrWaitTooLong):
		return "wait_too_long", http.StatusServiceUnavailable
	case errors.Is(err, ErrTicketExpired):
		return "ticket_expired", http.StatusGone
	case errors.Is(err, ErrNoToken):
		return "token_missing", http.StatusForbidden
	case errors.Is(err, ErrTokenInvalid):
		return "token_invalid", http.StatusForbidden
	case errors.Is(err, ErrTokenExpired):
		return "token_expired", http.StatusForbidden
	case errors.Is(err, ErrTokenReplayed):
		return "token_replayed", http.StatusForbidden
	}
	return "unavailable", http.StatusServiceUnavailable
}

// refusal is the JSON body of a refused request.
type refusal struct {
	Error      string `json:"error"`
	Message    string `json:"message"`
	RetryAfter int    `json:"retry_after_seconds,omitempty"`
}

func (c *httpConfig) writeRefusal(w http.ResponseWriter, _ *http.Request, err error) {
	code, status := codeOf(err)
	body := refusal{Error: code, Message: c.messages[code]}
	if status == http.StatusServiceUnavailable {
		body.RetryAfter = seconds(c.retryAfter)
		w.Header().Set("Retry-After", strconv.Itoa(body.RetryAfter))
	}
	if status == http.StatusGone || status == http.StatusForbidden {
		// The ticket or token is no good: drop it so the client does
		// not keep sending it.
		c.clearCookies(w)
	}
	writeJSON(w, status, body)
}

// seconds rounds d up to whole seconds, at least 1, as Retry-After needs.
func seconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (c *httpConfig) setCookie(w http.ResponseWriter, r *http.Request, name, value string, expires time.Time) {
	ck := c.cookie
	ck.Name, ck.Value, ck.Expires = name, value, expires
	if r.TLS != nil {
		ck.Secure = true
	}
	http.SetCookie(w, &ck)
}

func (c *httpConfig) clearCookies(w http.ResponseWriter) {
	for _, name := range [...]string{TicketCookie, AdmissionCookie} {
		ck := c.cookie
		ck.Name, ck.MaxAge = name, -1
		http.SetCookie(w, &ck)
	}
}

// fromRequest returns the value of a header, else of a cookie.
func fromRequest(r *http.Request, header, cookie string) string {
	if v := r.Header.Get(header); v != "" {
		return v
	}
	if ck, err := r.Cookie(cookie); err == nil {
		return ck.Value
	}
	return ""
}

// TicketView is the JSON a client polls: its place in line, or its
// admission.
type TicketView struct {
	Ticket           string `json:"ticket"`
	Number           uint64 `json:"number"`
	Position         int    `json:"position"`
	ETASeconds       int    `json:"eta_seconds"`
	PollAfterSeconds int    `json:"poll_after_seconds"`
	Admitted         bool   `json:"admitted"`
	Token            string `json:"token,omitempty"`
	Message          string `json:"message"`
}

func (c *httpConfig) view(t Ticket) TicketView {
	v := TicketView{
		Ticket:           t.ID,
		Number:           t.Number,
		Position:         t.Position,
		ETASeconds:       int(math.Ceil(t.ETA.Seconds())),
		PollAfterSeconds: seconds(t.PollAfter),
		Admitted:         t.Admitted,
		Token:            t.Token,
		Message:          c.messages["waiting"],
	}
	if t.Admitted {
		v.Message = c.messages["admitted"]
	}
	return v
}

// writeTicket answers with a ticket: 202 while it waits, 200 with the
// admission token (in the body, a header and a cookie) once admitted.
func (c *httpConfig) writeTicket(w http.ResponseWriter, r *http.Request, t Ticket) {
	h := w.Header()
	h.Set(TicketHeader, t.ID)
	c.setCookie(w, r, TicketCookie, t.ID, t.ExpiresAt)
	if !t.Admitted {
		h.Set("Retry-After", strconv.Itoa(seconds(t.PollAfter)))
		writeJSON(w, http.StatusAccepted, c.view(t))
		return
	}
	if t.Token != "" {
		h.Set(AdmissionHeader, t.Token)
		c.setCookie(w, r, AdmissionCookie, t.Token, t.ExpiresAt)
	}
	writeJSON(w, http.StatusOK, c.view(t))
}

// WaitMiddleware holds each request in the room's line until it is
// admitted, then serves it and frees its active slot when the handler
// returns. A request refused by the room (ErrFull, ErrWaitTooLong,
// ErrWaitTimeout, ErrUnavailable, ErrClosed) gets 503 with Retry-After and
// a JSON body with an error code and a friendly message. A request whose
// client goes away while waiting is dropped without an answer.
//
// It panics if room is nil.
func WaitMiddleware(room *Room, opts ...HTTPOption) func(http.Handler) http.Handler {
	if room == nil {
		panic(configError("room", "must not be nil", nil))
	}
	c := newHTTPConfig(opts)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a, err := room.Wait(r.Context())
			if err != nil {
				if r.Context().Err() != nil && !errors.Is(err, ErrWaitTimeout) {
					return
				}
				c.refuse(w, r, err)
				return
			}
			defer a.Done()
			next.ServeHTTP(w, r)
		})
	}
}

// TicketMiddleware puts each request to the protected endpoint through the
// room in ticket mode, for clients that poll rather than hold a connection:
//
//   - A request with a valid admission token (header Bulwark-Admission or
//     cookie bulwark_admission) is served; the token is redeemed, so it
//     cannot be used again, and the admission ends when the handler
//     returns. A bad, expired or reused token gets 403.
//   - A request with a ticket (header Bulwark-Ticket or cookie
//     bulwark_ticket) whose turn has come is served the same way; one
//     still in line gets 202 with its place (see [TicketView]); an expired
//     one gets 410.
//   - Any other request joins the line and gets 202 with its new ticket, in
//     the body, a header and a cookie; Retry-After says when to poll.
//
// Clients poll the protected endpoint itself, or the [StatusHandler].
// It panics if room is nil or has no [Signer].
func TicketMiddleware(room *Room, opts ...HTTPOption) func(http.Handler) http.Handler {
	requireSigner(room)
	c := newHTTPConfig(opts)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if tok := fromRequest(r, AdmissionHeader, AdmissionCookie); tok != "" {
				serveAdmitted(c, room, tok, false, next, w, r)
				return
			}
			ctx := r.Context()
			var (
				t   Ticket
				err error
			)
			if id := fromRequest(r, TicketHeader, TicketCookie); id != "" {
				t, err = room.Status(ctx, id)
				if errors.Is(err, ErrTicketExpired) {
					// A lapsed ticket from an earlier visit: join
					// again rather than turn the user away.
					t, err = room.Join(ctx)
				}
			} else {
				t, err = room.Join(ctx)
			}
			if err != nil {
				c.refuse(w, r, err)
				return
			}
			if !t.Admitted {
				c.writeTicket(w, r, t)
				return
			}
			serveAdmitted(c, room, t.Token, true, next, w, r)
		})
	}
}

// StatusHandler serves the status endpoint of the ticket mode. GET (or
// HEAD) with a ticket (query parameter "ticket", header Bulwark-Ticket or
// cookie bulwark_ticket) answers 202 with its place while it waits and 200
// with the admission token once admitted (in the body, the
// Bulwark-Admission header and the bulwark_admission cookie), or 410 when
// the ticket expired. POST joins the line (202 with a new ticket). DELETE
// leaves it (204).
//
// It panics if room is nil or has no [Signer].
func StatusHandler(room *Room, opts ...HTTPOption) http.Handler {
	requireSigner(room)
	c := newHTTPConfig(opts)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		id := r.URL.Query().Get("ticket")
		if id == "" {
			id = fromRequest(r, TicketHeader, TicketCookie)
		}
		switch r.Method {
		case http.MethodPost:
			t, err := room.Join(ctx)
			if err != nil {
				c.refuse(w, r, err)
				return
			}
			c.writeTicket(w, r, t)
		case http.MethodGet, http.MethodHead:
			if id == "" {
				c.refuse(w, r, fmt.Errorf("%w: no ticket in request", ErrTicketExpired))
				return
			}
			t, err := room.Status(ctx, id)
			if err != nil {
				c.refuse(w, r, err)
				return
			}
			c.writeTicket(w, r, t)
		case http.MethodDelete:
			if id != "" {
				if err := room.Leave(ctx, id); err != nil {
					c.refuse(w, r, err)
					return
				}
			}
			c.clearCookies(w)
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Allow", "GET, HEAD, POST, DELETE")
			http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
		}
	})
}

// RequireAdmission serves only requests that carry a valid admission token
// from the room (header Bulwark-Admission or cookie bulwark_admission), as
// handed out by [StatusHandler] or [Room.Status]. The token is redeemed, so
// a second request with it is refused (403, "token_replayed"), as are
// forged or altered (403, "token_invalid"), expired (403,
// "token_expired") and missing (403, "token_missing") tokens. The
// admission ends when the handler returns, freeing its active slot; the
// handler finds the token's claims with [AdmissionFromContext].
//
// It panics if room is nil or has no [Signer].
func RequireAdmission(room *Room, opts ...HTTPOption) func(http.Handler) http.Handler {
	requireSigner(room)
	c := newHTTPConfig(opts)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tok := fromRequest(r, AdmissionHeader, AdmissionCookie)
			if tok == "" {
				c.refuse(w, r, ErrNoToken)
				return
			}
			serveAdmitted(c, room, tok, false, next, w, r)
		})
	}
}

// serveAdmitted redeems tok and serves the request with its claims, ending
// the admission afterwards. live reports that the caller has just seen the
// admission in the room.
func serveAdmitted(c *httpConfig, room *Room, tok string, live bool, next http.Handler, w http.ResponseWriter, r *http.Request) {
	claims, err := room.cfg.signer.Redeem(r.Context(), room.name, tok)
	if err != nil {
		c.refuse(w, r, err)
		return
	}
	if !live {
		// A token outlives nothing: an admission given up with Leave,
		// ended with Done or lapsed no longer admits, or the holder
		// would get in beside whoever took its active slot.
		t, err := room.Status(r.Context(), claims.Ticket)
		if err == nil && !t.Admitted || errors.Is(err, ErrTicketExpired) && !errors.Is(err, ErrUnavailable) {
			err = fmt.Errorf("%w: the admission has ended", ErrTokenExpired)
		}
		if err != nil {
			c.refuse(w, r, err)
			return
		}
	}
	// The admission ends with the request, even if the client is gone.
	defer room.Done(context.WithoutCancel(r.Context()), claims.Ticket)
	next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), claimsKey{}, claims)))
}

type claimsKey struct{}

// AdmissionFromContext returns the claims of the admission token that let
// the request in, in a handler behind [RequireAdmission] or
// [TicketMiddleware].
func AdmissionFromContext(ctx context.Context) (Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(Claims)
	return c, ok
}

func requireSigner(room *Room) {
	if room == nil {
		panic(configError("room", "must not be nil", nil))
	}
	if room.cfg.signer == nil {
		panic(configError("room", "needs a Signer (WithSigner) to issue admission tokens", room.name))
	}
}
