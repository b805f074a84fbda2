package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bulwarkgo/bulwark/queue"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

func newSigner(t *testing.T) *queue.Signer {
	t.Helper()
	s, err := queue.NewSigner(testKey)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func okHandler(served *int, mu *sync.Mutex) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		*served++
		mu.Unlock()
		_, _ = io.WriteString(w, "served")
	})
}

func decode[T any](t *testing.T, rec *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	return v
}

type refusalBody struct {
	Error      string `json:"error"`
	Message    string `json:"message"`
	RetryAfter int    `json:"retry_after_seconds"`
}

func TestWaitMiddlewareServesInTurnAndRefusesWhenFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 1, queue.WithMaxLength(1), queue.WithRejectTooLong(false))
		var (
			mu     sync.Mutex
			served int
		)
		h := queue.WaitMiddleware(r, queue.WithRetryAfter(30*time.Second),
			queue.WithMessage("queue_full", "排队人数已满，请稍后再试"))(okHandler(&served, &mu))

		// First request: admitted at once. Second: waits 1s.
		rec1 := httptest.NewRecorder()
		h.ServeHTTP(rec1, httptest.NewRequest("GET", "/sale", nil))
		if rec1.Code != 200 {
			t.Fatalf("first request: %d", rec1.Code)
		}
		rec2 := httptest.NewRecorder()
		done := make(chan struct{})
		go func() {
			h.ServeHTTP(rec2, httptest.NewRequest("GET", "/sale", nil))
			close(done)
		}()
		synctest.Wait()
		// The line (length 1) is full: a third is refused at once.
		rec3 := httptest.NewRecorder()
		h.ServeHTTP(rec3, httptest.NewRequest("GET", "/sale", nil))
		if rec3.Code != http.StatusServiceUnavailable {
			t.Fatalf("third request: %d, want 503", rec3.Code)
		}
		if got := rec3.Header().Get("Retry-After"); got != "30" {
			t.Fatalf("Retry-After %q, want 30", got)
		}
		body := decode[refusalBody](t, rec3)
		if body.Error != "queue_full" || body.Message != "排队人数已满，请稍后再试" || body.RetryAfter != 30 {
			t.Fatalf("refusal body %+v", body)
		}
		<-done
		if rec2.Code != 200 {
			t.Fatalf("second request: %d", rec2.Code)
		}
		if served != 2 {
			t.Fatalf("served %d, want 2", served)
		}
	})
}

func TestWaitMiddlewareTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 1, queue.WithMaxActive(1), queue.WithMaxWait(2*time.Second), queue.WithRejectTooLong(false))
		block := make(chan struct{})
		h := queue.WaitMiddleware(r)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-block }))
		go h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
		synctest.Wait()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
		close(block)
		if rec.Code != 503 || decode[refusalBody](t, rec).Error != "wait_timeout" {
			t.Fatalf("got %d %s", rec.Code, rec.Body)
		}
	})
}

func TestWaitMiddlewareClientGone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 1)
		var (
			mu     sync.Mutex
			served int
		)
		h := queue.WaitMiddleware(r)(okHandler(&served, &mu))
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
		ctx, cancel := context.WithCancel(context.Background())
		rec := httptest.NewRecorder()
		done := make(chan struct{})
		go func() {
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil).WithContext(ctx))
			close(done)
		}()
		synctest.Wait()
		cancel()
		<-done
		if served != 1 || rec.Body.Len() != 0 {
			t.Fatalf("served %d, body %q: a gone client is dropped", served, rec.Body)
		}
		if s, _ := r.Stats(context.Background()); s.Length != 0 {
			t.Fatalf("gone client still in line")
		}
	})
}

// client keeps what a mini-program keeps: the headers the server sent.
type client struct {
	ticket, token string
}

func (c *client) do(h http.Handler, method, target string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, nil)
	if c.ticket != "" {
		req.Header.Set(queue.TicketHeader, c.ticket)
	}
	if c.token != "" {
		req.Header.Set(queue.AdmissionHeader, c.token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if v := rec.Header().Get(queue.TicketHeader); v != "" {
		c.ticket = v
	}
	if v := rec.Header().Get(queue.AdmissionHeader); v != "" {
		c.token = v
	}
	return rec
}

func TestTicketFlow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 1, queue.WithSigner(newSigner(t)), queue.WithTicketTTL(10*time.Second),
			queue.WithPollInterval(time.Second, 5*time.Second))
		var (
			mu     sync.Mutex
			served int
		)
		checkout := queue.TicketMiddleware(r)(okHandler(&served, &mu))
		status := queue.StatusHandler(r)
		mux := http.NewServeMux()
		mux.Handle("POST /checkout", checkout)
		mux.Handle("/queue", status)

		// Someone is admitted first and holds the first slot of the rate.
		first := &client{}
		if rec := first.do(mux, "POST", "/checkout"); rec.Code != 200 || served != 1 {
			t.Fatalf("first checkout: %d %s", rec.Code, rec.Body)
		}
		// The next user gets a ticket: 202, position 1, ~1s.
		u := &client{}
		rec := u.do(mux, "POST", "/checkout")
		if rec.Code != http.StatusAccepted {
			t.Fatalf("joining: %d %s", rec.Code, rec.Body)
		}
		v := decode[queue.TicketView](t, rec)
		if v.Ticket == "" || v.Ticket != u.ticket || v.Number != 2 || v.Position != 1 || v.Admitted || v.PollAfterSeconds < 1 {
			t.Fatalf("ticket view %+v", v)
		}
		if rec.Header().Get("Retry-After") == "" {
			t.Fatal("no Retry-After on 202")
		}
		var ticketCookie bool
		for _, ck := range rec.Result().Cookies() {
			ticketCookie = ticketCookie || (ck.Name == queue.TicketCookie && ck.Value == v.Ticket && ck.HttpOnly)
		}
		if !ticketCookie {
			t.Fatal("no ticket cookie")
		}
		// Polling the status endpoint: admitted after 1s, with a token
		// in body, header and cookie.
		time.Sleep(time.Second)
		rec = u.do(mux, "GET", "/queue")
		v = decode[queue.TicketView](t, rec)
		if rec.Code != 200 || !v.Admitted || v.Token == "" || u.token != v.Token || v.Number != 2 {
			t.Fatalf("status after 1s: %d %+v", rec.Code, v)
		}
		var tokenCookie bool
		for _, ck := range rec.Result().Cookies() {
			tokenCookie = tokenCookie || (ck.Name == queue.AdmissionCookie && ck.Value == v.Token)
		}
		if !tokenCookie {
			t.Fatal("no admission cookie")
		}
		// The token admits one checkout, and only one.
		if rec = u.do(mux, "POST", "/checkout"); rec.Code != 200 || served != 2 {
			t.Fatalf("checkout with token: %d %s", rec.Code, rec.Body)
		}
		rec = u.do(mux, "POST", "/checkout")
		if rec.Code != http.StatusForbidden || decode[refusalBody](t, rec).Error != "token_replayed" {
			t.Fatalf("replayed token: %d %s", rec.Code, rec.Body)
		}
		if served != 2 {
			t.Fatalf("served %d after a replay, want 2", served)
		}
	})
}

func TestTicketMiddlewareServesAdmittedTicketDirectly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 1, queue.WithSigner(newSigner(t)))
		var (
			mu     sync.Mutex
			served int
		)
		h := queue.TicketMiddleware(r)(okHandler(&served, &mu))
		(&client{}).do(h, "POST", "/") // takes the first slot
		u := &client{}
		if rec := u.do(h, "POST", "/"); rec.Code != 202 {
			t.Fatalf("join: %d", rec.Code)
		}
		time.Sleep(time.Second)
		// Polling the protected endpoint itself with the ticket.
		if rec := u.do(h, "POST", "/"); rec.Code != 200 || served != 2 {
			t.Fatalf("poll after turn: %d %s", rec.Code, rec.Body)
		}
	})
}

func TestTicketExpiredRejoins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 1, queue.WithSigner(newSigner(t)), queue.WithMaxActive(1),
			queue.WithTicketTTL(2*time.Second), queue.WithPollInterval(time.Second, time.Second))
		status := queue.StatusHandler(r)
		holder := &client{}
		holder.do(status, "POST", "/queue") // admitted, holds the slot
		u := &client{}
		u.do(status, "POST", "/queue")
		old := u.ticket
		time.Sleep(3 * time.Second)
		rec := u.do(status, "GET", "/queue?ticket="+old)
		if rec.Code != http.StatusGone || decode[refusalBody](t, rec).Error != "ticket_expired" {
			t.Fatalf("expired ticket: %d %s", rec.Code, rec.Body)
		}
		h := queue.TicketMiddleware(r)(http.NotFoundHandler())
		rec = u.do(h, "POST", "/checkout")
		if rec.Code != 202 || u.ticket == old {
			t.Fatalf("rejoin with an expired ticket: %d %s", rec.Code, rec.Body)
		}
		// DELETE leaves.
		if rec = u.do(status, "DELETE", "/queue"); rec.Code != http.StatusNoContent {
			t.Fatalf("leave: %d", rec.Code)
		}
		if s, _ := r.Stats(context.Background()); s.Length != 0 {
			t.Fatalf("length %d after leaving", s.Length)
		}
	})
}

func TestRequireAdmissionRefusesBadTokens(t *testing.T) {
	signer := newSigner(t)
	r := newRoom(t, 100, queue.WithSigner(signer))
	var (
		mu     sync.Mutex
		served int
	)
	var seen queue.Claims
	h := queue.RequireAdmission(r)(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		seen, _ = queue.AdmissionFromContext(req.Context())
		okHandler(&served, &mu).ServeHTTP(w, req)
	}))
	tk, err := r.Join(t.Context())
	if err != nil || !tk.Admitted {
		t.Fatalf("join: %+v %v", tk, err)
	}
	tk, _ = r.Status(t.Context(), tk.ID)
	other, _ := queue.NewSigner([]byte("another key, also 32 bytes long!"))
	cases := []struct {
		name, token, code string
	}{
		{"missing", "", "token_missing"},
		{"garbage", "not-a-token", "token_invalid"},
		{"forged", other.Issue(r.Name(), tk.ID, time.Now()), "token_invalid"},
		{"other room", signer.Issue("another-room", tk.ID, time.Now()), "token_invalid"},
		{"expired", signer.Issue(r.Name(), tk.ID, time.Now().Add(-time.Hour)), "token_expired"},
		{"altered", tk.Token[:5] + strings.ToUpper(tk.Token[5:6]) + tk.Token[6:], "token_invalid"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "altered" && c.token == tk.Token {
				t.Skip("the altered character was already upper case")
			}
			rec := (&client{token: c.token}).do(h, "POST", "/checkout")
			if rec.Code != http.StatusForbidden || decode[refusalBody](t, rec).Error != c.code {
				t.Fatalf("got %d %s, want 403 %s", rec.Code, rec.Body, c.code)
			}
		})
	}
	// Token in a cookie.
	req := httptest.NewRequest("POST", "/checkout", nil)
	req.AddCookie(&http.Cookie{Name: queue.AdmissionCookie, Value: tk.Token})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 200 || served != 1 || seen.Ticket != tk.ID || seen.Room != r.Name() {
		t.Fatalf("valid token: %d, served %d, claims %+v", rec.Code, served, seen)
	}
	rec = (&client{token: tk.Token}).do(h, "POST", "/checkout")
	if rec.Code != http.StatusForbidden || decode[refusalBody](t, rec).Error != "token_replayed" {
		t.Fatalf("replay: %d %s", rec.Code, rec.Body)
	}
}

func TestMiddlewareNeedsSigner(t *testing.T) {
	r := newRoom(t, 1)
	for name, f := range map[string]func(){
		"TicketMiddleware": func() { queue.TicketMiddleware(r) },
		"StatusHandler":    func() { queue.StatusHandler(r) },
		"RequireAdmission": func() { queue.RequireAdmission(r) },
		"WaitMiddleware":   func() { queue.WaitMiddleware(nil) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				err, _ := recover().(error)
				if !errors.Is(err, queue.ErrInvalidConfig) {
					t.Fatalf("recovered %v, want ErrInvalidConfig", err)
				}
			}()
			f()
		})
	}
}

func TestTokenOfAnEndedAdmissionIsRefused(t *testing.T) {
	for _, end := range []string{"leave", "done"} {
		t.Run(end, func(t *testing.T) {
			r := newRoom(t, 1e6, queue.WithSigner(newSigner(t)), queue.WithMaxActive(1))
			var (
				mu     sync.Mutex
				served int
			)
			h := queue.RequireAdmission(r)(okHandler(&served, &mu))
			ctx := t.Context()
			a, err := r.Join(ctx)
			if err != nil || !a.Admitted || a.Token == "" {
				t.Fatalf("join: %+v %v", a, err)
			}
			// The holder ends its admission but keeps the token; the
			// slot goes to the next user.
			if end == "leave" {
				err = r.Leave(ctx, a.ID)
			} else {
				err = r.Done(ctx, a.ID)
			}
			if err != nil {
				t.Fatal(err)
			}
			b, err := r.Join(ctx)
			if err != nil || !b.Admitted {
				t.Fatalf("next user: %+v %v", b, err)
			}
			rec := (&client{token: a.Token}).do(h, "POST", "/checkout")
			if rec.Code != http.StatusForbidden || decode[refusalBody](t, rec).Error != "token_expired" {
				t.Fatalf("token of an ended admission: %d %s", rec.Code, rec.Body)
			}
			if rec = (&client{token: b.Token}).do(h, "POST", "/checkout"); rec.Code != 200 || served != 1 {
				t.Fatalf("the next user's token: %d %s", rec.Code, rec.Body)
			}
		})
	}
}
