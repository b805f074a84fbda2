package scenario

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
	"github.com/bulwarkgo/bulwark/queue"
)

// reply is an answer to a request.
type reply struct {
	status int
	header http.Header
	body   []byte
	sent   time.Time // when the request started
	at     time.Time // when the answer was read
}

// do sends a request to target i. Requests of users and browsers are
// counted (counted); the operator's carry the token (ops).
func (r *run) do(ctx context.Context, method string, target int, path string, hdr http.Header, body any, counted, ops bool) (reply, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return reply{}, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.cfg.Targets[target]+path, rd)
	if err != nil {
		return reply{}, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if ops {
		req.Header.Set("Authorization", "Bearer "+r.cfg.Token)
	}
	if counted {
		r.requests.Add(1)
	}
	rep := reply{sent: time.Now()}
	resp, err := r.hc.Do(req)
	if err != nil {
		return rep, err
	}
	defer resp.Body.Close()
	rep.body, err = io.ReadAll(io.LimitReader(resp.Body, maxBody))
	rep.status, rep.header, rep.at = resp.StatusCode, resp.Header, time.Now()
	return rep, err
}

// getJSON reads a JSON answer (200) into v.
func (r *run) getJSON(ctx context.Context, target int, path string, ops bool, v any) error {
	rep, err := r.do(ctx, http.MethodGet, target, path, nil, nil, false, ops)
	if err != nil {
		return err
	}
	if rep.status != http.StatusOK {
		return statusError("GET "+path, rep)
	}
	if err := json.Unmarshal(rep.body, v); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

func statusError(what string, rep reply) error {
	e := refusalOf(rep)
	hint := ""
	if rep.status == http.StatusUnauthorized || rep.status == http.StatusForbidden {
		hint = " (is Config.Token the operator token?)"
	}
	return fmt.Errorf("%s: %d %s%s", what, rep.status, e.Error, hint)
}

// refusalOf reads a refusal; one without a JSON body is named after its
// status.
func refusalOf(rep reply) api.Error {
	var e api.Error
	_ = json.Unmarshal(rep.body, &e)
	if e.Error == "" {
		e.Error = "http_" + strconv.Itoa(rep.status)
	}
	return e
}

// reasonOf names a refusal in the counts: its code, with rate_limited
// split by scope.
func reasonOf(e api.Error) string {
	if e.Error == "rate_limited" {
		switch e.Scope {
		case "user":
			return "user_limit"
		case "global":
			return "global_limit"
		}
	}
	return e.Error
}

// retryAfter is how long an answer asks the client to wait: its
// Retry-After header, else the seconds in its body, else a second.
func retryAfter(rep reply) time.Duration {
	if s, err := strconv.Atoi(rep.header.Get("Retry-After")); err == nil && s >= 0 {
		return max(time.Duration(s)*time.Second, 100*time.Millisecond)
	}
	var b struct {
		RetryAfter int `json:"retry_after_seconds"`
		PollAfter  int `json:"poll_after_seconds"`
	}
	_ = json.Unmarshal(rep.body, &b)
	if s := max(b.RetryAfter, b.PollAfter); s > 0 {
		return time.Duration(s) * time.Second
	}
	return time.Second
}

// ticketOf reads a ticket answer, taking the ticket and token from the
// headers when the body lacks them.
func ticketOf(rep reply) (queue.TicketView, error) {
	var v queue.TicketView
	if err := json.Unmarshal(rep.body, &v); err != nil {
		return v, fmt.Errorf("ticket answer %d: %w", rep.status, err)
	}
	if v.Ticket == "" {
		v.Ticket = rep.header.Get(queue.TicketHeader)
	}
	if v.Token == "" {
		v.Token = rep.header.Get(queue.AdmissionHeader)
	}
	if rep.status == http.StatusOK {
		v.Admitted = true
	}
	if v.Ticket == "" && !v.Admitted {
		return v, fmt.Errorf("ticket answer %d without a ticket", rep.status)
	}
	return v, nil
}

// stats fetches every target's stats at once.
type statsReply struct {
	s   api.Stats
	at  time.Time
	err error
}

func (r *run) allStats(ctx context.Context, timeout time.Duration) []statsReply {
	out := make([]statsReply, len(r.cfg.Targets))
	var wg sync.WaitGroup
	for i := range r.cfg.Targets {
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			out[i].err = r.getJSON(sctx, i, "/ops/stats", true, &out[i].s)
			out[i].at = time.Now()
		})
	}
	wg.Wait()
	return out
}

// putFault sets a provider's fault on every target at once and returns
// each target's error.
func (r *run) putFault(ctx context.Context, f api.ProviderFault) []error {
	errs := make([]error, len(r.cfg.Targets))
	var wg sync.WaitGroup
	for i := range r.cfg.Targets {
		wg.Go(func() {
			path := "/ops/providers/" + url.PathEscape(f.Name)
			rep, err := r.do(ctx, http.MethodPut, i, path, nil, f, false, true)
			if err == nil && rep.status/100 != 2 {
				err = statusError("PUT "+path, rep)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	return errs
}

// outage is a step of the providers' timeline.
type outage struct {
	at    float64 // fraction of the sale
	fault api.ProviderFault
	down  bool
	say   string
}

var outages = []outage{
	{primaryDown, api.ProviderFault{Name: primary, FailRate: 0.5, HangRate: 0.5, LatencyMS: providerMillis}, true,
		"wxpay starts failing: half its calls fail, half hang"},
	{backupDown, api.ProviderFault{Name: backup, FailRate: 1, LatencyMS: providerMillis}, true,
		"alipay fails too: every breaker opens, payments go to the buffer"},
	{backupUp, healthy(backup), false, "alipay recovers"},
	{primaryUp, healthy(primary), false, "wxpay recovers"},
}

// breakProviders plays the providers' timeline.
func (r *run) breakProviders(ctx context.Context) {
	for _, o := range outages {
		if !sleepUntil(ctx, r.at(o.at), nil) {
			return
		}
		f := Fault{ProviderFault: o.fault, Down: o.down, Sent: time.Now()}
		errs := r.putFault(ctx, o.fault)
		f.Answered = time.Now()
		f.At = f.Sent
		if o.down {
			f.At = f.Answered
		}
		if ctx.Err() != nil {
			return
		}
		var failures []string
		for i, err := range errs {
			if err != nil {
				f.Failed = append(f.Failed, r.names[i])
				failures = append(failures, fmt.Sprintf("%s: %v", r.names[i], err))
			}
		}
		r.mu.Lock()
		r.faults = append(r.faults, f)
		r.mu.Unlock()
		r.event(f.At, "%s", o.say)
		for _, msg := range failures {
			r.event(time.Now(), "  not applied on %s", msg)
		}
	}
}
