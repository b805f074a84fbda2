package degrade_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/degrade"
)

var adminFeatures = []degrade.Feature{
	{Name: "checkout", Level: degrade.Core, Description: "下单 Ordering"},
	{Name: "search-suggest", Level: degrade.Important},
	{Name: "recommend", Level: degrade.Optional, Messages: map[string]string{"zh": "推荐暂不可用"}},
	{Name: "reviews", Level: degrade.Optional, Off: true},
}

const (
	operatorToken = "op-token-0123456789abcdef"
	viewerToken   = "viewer-token-0123456789abcdef"
)

var adminTokens = map[string]degrade.Principal{
	operatorToken: {Name: "alice", Role: degrade.Operator},
	viewerToken:   {Name: "victor", Role: degrade.Viewer},
}

type adminEnv struct {
	sb  *degrade.Switchboard
	srv *httptest.Server
}

// newAdmin serves an admin handler over a new switchboard, with the
// test tokens unless opts are given.
func newAdmin(t *testing.T, sbOpts []degrade.Option, opts ...degrade.AdminOption) *adminEnv {
	t.Helper()
	sb, err := degrade.New(adminFeatures, sbOpts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Close() })
	if len(opts) == 0 {
		opts = []degrade.AdminOption{degrade.WithTokens(adminTokens)}
	}
	h, err := degrade.NewAdminHandler(sb, opts...)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &adminEnv{sb: sb, srv: srv}
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

// errorBody is the API's error answer.
type errorBody struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

func (r reply) err(t *testing.T) errorBody {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("error body %q is not JSON: %v", r.body, err)
	}
	return e
}

// do sends a request with token (none if empty) and body (none if
// empty), and extra headers as name, value pairs.
func (e *adminEnv) do(t *testing.T, method, path, token, body string, hdr ...string) reply {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, e.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return reply{res.StatusCode, res.Header, b}
}

func wantStatus(t *testing.T, r reply, status int) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
}

// apiFeature is a feature as the API shows it.
type apiFeature struct {
	Name        string        `json:"name"`
	Level       string        `json:"level"`
	Description string        `json:"description"`
	Default     string        `json:"default"`
	State       degrade.State `json:"state"`
	Source      string        `json:"source"`
	Trigger     string        `json:"trigger"`
	Changed     time.Time     `json:"changed"`
}

type apiOverview struct {
	Features     []apiFeature `json:"features"`
	Shed         string       `json:"shed"`
	StoreHealthy bool         `json:"store_healthy"`
}

func decode[T any](t *testing.T, r reply) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("body %q: %v", r.body, err)
	}
	return v
}

func audit(t *testing.T, e *adminEnv, n int) []degrade.AuditEntry {
	t.Helper()
	r := e.do(t, "GET", fmt.Sprintf("/api/audit?n=%d", n), viewerToken, "")
	wantStatus(t, r, http.StatusOK)
	return decode[struct{ Entries []degrade.AuditEntry }](t, r).Entries
}

func TestAdminListAndGet(t *testing.T) {
	e := newAdmin(t, nil)
	r := e.do(t, "GET", "/api/features", viewerToken, "")
	wantStatus(t, r, http.StatusOK)
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	ov := decode[apiOverview](t, r)
	if ov.Shed != "none" || !ov.StoreHealthy {
		t.Errorf("shed %q, store healthy %v", ov.Shed, ov.StoreHealthy)
	}
	var got []string
	for _, f := range ov.Features {
		got = append(got, fmt.Sprintf("%s/%s/%s/%s/%s", f.Name, f.Level, f.Default, f.State.Mode, f.Source))
	}
	want := "checkout/core/on/on/default search-suggest/important/on/on/default " +
		"recommend/optional/on/on/default reviews/optional/off/off/default"
	if strings.Join(got, " ") != want {
		t.Errorf("features\n%s\nwant\n%s", strings.Join(got, " "), want)
	}
	if ov.Features[0].Description != "下单 Ordering" {
		t.Errorf("description %q", ov.Features[0].Description)
	}

	r = e.do(t, "GET", "/api/features/recommend", viewerToken, "")
	wantStatus(t, r, http.StatusOK)
	if f := decode[apiFeature](t, r); f.Name != "recommend" || f.State.Mode != degrade.On {
		t.Errorf("got %+v", f)
	}

	r = e.do(t, "GET", "/api/features/nope", viewerToken, "")
	wantStatus(t, r, http.StatusNotFound)
	if b := r.err(t); b.Error != "unknown_feature" || !strings.Contains(b.Message, `"nope"`) {
		t.Errorf("got %+v", b)
	}

	wantStatus(t, e.do(t, "GET", "/api/nothing-here", viewerToken, ""), http.StatusNotFound)
	r = e.do(t, "POST", "/api/features", operatorToken, "")
	wantStatus(t, r, http.StatusMethodNotAllowed)
	if allow := r.header.Get("Allow"); allow != "GET, HEAD" {
		t.Errorf("Allow %q", allow)
	}

	r = e.do(t, "GET", "/api/me", viewerToken, "")
	wantStatus(t, r, http.StatusOK)
	if p := decode[degrade.Principal](t, r); p != (degrade.Principal{Name: "victor", Role: degrade.Viewer}) {
		t.Errorf("me: %+v", p)
	}
}

func TestAdminSetAndUnpin(t *testing.T) {
	e := newAdmin(t, nil)
	r := e.do(t, "PUT", "/api/features/recommend", operatorToken,
		`{"state":{"mode":"percent","percent":20,"messages":{"en":"Later."}},"reason":"rollout"}`)
	wantStatus(t, r, http.StatusOK)
	f := decode[apiFeature](t, r)
	if f.Source != "manual" || f.State.Mode != degrade.Percent || f.State.Percent != 20 || f.Changed.IsZero() {
		t.Errorf("answer %+v", f)
	}
	st, err := e.sb.Status("recommend")
	if err != nil {
		t.Fatal(err)
	}
	if st.Source != degrade.SourceManual || st.State.Percent != 20 || st.State.Messages["en"] != "Later." {
		t.Errorf("switchboard: %+v", st)
	}

	r = e.do(t, "DELETE", "/api/features/recommend", operatorToken, `{"reason":"done"}`)
	wantStatus(t, r, http.StatusOK)
	if f := decode[apiFeature](t, r); f.Source != "default" || f.State.Mode != degrade.On {
		t.Errorf("after unpin: %+v", f)
	}
	// A body is optional for unpin.
	wantStatus(t, e.do(t, "DELETE", "/api/features/reviews", operatorToken, ""), http.StatusOK)

	entries := audit(t, e, 10)
	if len(entries) != 3 {
		t.Fatalf("audit has %d entries, want 3: %+v", len(entries), entries)
	}
	set, unpin := entries[2], entries[1]
	if set.Action != "set" || set.By != "alice" || set.Feature != "recommend" || set.Reason != "rollout" ||
		set.Before != nil || !strings.Contains(string(set.After), `"percent":20`) {
		t.Errorf("set entry %+v (after %s)", set, set.After)
	}
	if unpin.Action != "unpin" || unpin.By != "alice" || unpin.Reason != "done" || unpin.After != nil ||
		!strings.Contains(string(unpin.Before), `"percent":20`) {
		t.Errorf("unpin entry %+v", unpin)
	}
	if unpin.At.Before(set.At) {
		t.Errorf("audit is not newest first: %v before %v", unpin.At, set.At)
	}
}

func TestAdminShedAndRestore(t *testing.T) {
	e := newAdmin(t, nil)
	r := e.do(t, "POST", "/api/shed", operatorToken, `{"level":"important","reason":"双11"}`)
	wantStatus(t, r, http.StatusOK)
	if ov := decode[apiOverview](t, r); ov.Shed != "important" {
		t.Errorf("shed %q", ov.Shed)
	}
	for name, want := range map[string]degrade.Source{
		"checkout": degrade.SourceDefault, "search-suggest": degrade.SourceShed, "recommend": degrade.SourceShed,
	} {
		st, _ := e.sb.Status(name)
		if st.Source != want {
			t.Errorf("%s: source %s, want %s", name, st.Source, want)
		}
	}
	if e.sb.Shedding() != degrade.Important {
		t.Errorf("Shedding %v", e.sb.Shedding())
	}

	r = e.do(t, "POST", "/api/restore", operatorToken, `{"reason":"over"}`)
	wantStatus(t, r, http.StatusOK)
	if ov := decode[apiOverview](t, r); ov.Shed != "none" || ov.Features[2].Source != "default" {
		t.Errorf("after restore: %+v", ov)
	}
	// Restore needs no body.
	wantStatus(t, e.do(t, "POST", "/api/restore", operatorToken, ""), http.StatusOK)

	entries := audit(t, e, 2)
	if len(entries) != 2 || entries[0].Action != "restore" || entries[1].Action != "restore" {
		t.Fatalf("audit: %+v", entries)
	}
	all := audit(t, e, 100)
	if shed := all[2]; shed.Action != "shed" || shed.Reason != "双11" || string(shed.After) != `"important"` || shed.By != "alice" {
		t.Errorf("shed entry %+v", shed)
	}
}

func TestAdminAuditPaging(t *testing.T) {
	e := newAdmin(t, nil)
	for i := range 3 {
		body := fmt.Sprintf(`{"state":{"mode":"off"},"reason":"r%d"}`, i)
		wantStatus(t, e.do(t, "PUT", "/api/features/recommend", operatorToken, body), http.StatusOK)
	}
	if got := audit(t, e, 1); len(got) != 1 || got[0].Reason != "r2" {
		t.Errorf("n=1: %+v", got)
	}
	if got := audit(t, e, 5000); len(got) != 3 {
		t.Errorf("n=5000 (capped): %d entries", len(got))
	}
	r := e.do(t, "GET", "/api/audit", viewerToken, "")
	wantStatus(t, r, http.StatusOK)
	for _, n := range []string{"0", "-1", "ten", "1.5"} {
		r := e.do(t, "GET", "/api/audit?n="+n, viewerToken, "")
		wantStatus(t, r, http.StatusBadRequest)
		if msg := r.err(t).Message; !strings.Contains(msg, "n must be") || !strings.Contains(msg, n) {
			t.Errorf("n=%s: %q", n, msg)
		}
	}
}

func TestAdminAuth(t *testing.T) {
	e := newAdmin(t, nil)
	setBody := `{"state":{"mode":"off"}}`
	for _, tc := range []struct {
		name, method, path, token, body string
		auth                            string // an Authorization header of its own
		status                          int
		challenge                       string
	}{
		{name: "no token", method: "GET", path: "/api/features", status: 401, challenge: `Bearer realm="bulwark degrade"`},
		{name: "wrong token", method: "GET", path: "/api/features", token: "not-a-valid-token-at-all", status: 401,
			challenge: `Bearer realm="bulwark degrade", error="invalid_token"`},
		{name: "token prefix", method: "GET", path: "/api/features", token: operatorToken[:20], status: 401},
		{name: "basic", method: "GET", path: "/api/features", auth: "Basic YWxpY2U6c2VjcmV0", status: 401},
		{name: "empty bearer", method: "GET", path: "/api/features", auth: "Bearer ", status: 401},
		{name: "no token write", method: "PUT", path: "/api/features/recommend", body: setBody, status: 401},
		{name: "no token events", method: "GET", path: "/api/events", status: 401},
		{name: "viewer read", method: "GET", path: "/api/features", token: viewerToken, status: 200},
		{name: "viewer audit", method: "GET", path: "/api/audit", token: viewerToken, status: 200},
		{name: "viewer set", method: "PUT", path: "/api/features/recommend", token: viewerToken, body: setBody, status: 403},
		{name: "viewer unpin", method: "DELETE", path: "/api/features/recommend", token: viewerToken, status: 403},
		{name: "viewer shed", method: "POST", path: "/api/shed", token: viewerToken, body: `{"level":"optional"}`, status: 403},
		{name: "viewer restore", method: "POST", path: "/api/restore", token: viewerToken, status: 403},
		{name: "lower-case scheme", method: "GET", path: "/api/features", auth: "bearer " + viewerToken, status: 200},
		{name: "operator set", method: "PUT", path: "/api/features/recommend", token: operatorToken, body: setBody, status: 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.auth != "" {
				hdr = []string{"Authorization", tc.auth}
			}
			r := e.do(t, tc.method, tc.path, tc.token, tc.body, hdr...)
			wantStatus(t, r, tc.status)
			if tc.status == 401 {
				if got := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") ||
					(tc.challenge != "" && got != tc.challenge) {
					t.Errorf("WWW-Authenticate %q, want %q", got, tc.challenge)
				}
			}
			if tc.status == 403 && r.err(t).Error != "forbidden" {
				t.Errorf("body %s", r.body)
			}
		})
	}
	// Only the operator's change went through.
	if got := audit(t, e, 10); len(got) != 1 || got[0].By != "alice" {
		t.Errorf("audit %+v", got)
	}
}

func TestAdminCrossOrigin(t *testing.T) {
	e := newAdmin(t, nil)
	setBody := `{"state":{"mode":"off"},"reason":"x"}`
	for _, tc := range []struct {
		name, method, path, body string
		hdr                      []string
		status                   int
	}{
		{"cross-site PUT", "PUT", "/api/features/recommend", setBody, []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"same-site PUT", "PUT", "/api/features/recommend", setBody, []string{"Sec-Fetch-Site", "same-site"}, 403},
		{"foreign origin POST", "POST", "/api/shed", `{"level":"optional"}`, []string{"Origin", "https://evil.example"}, 403},
		{"cross-site DELETE", "DELETE", "/api/features/recommend", "", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"cross-site restore", "POST", "/api/restore", "", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"cross-site GET", "GET", "/api/features", "", []string{"Sec-Fetch-Site", "cross-site"}, 200},
		{"same-origin PUT", "PUT", "/api/features/recommend", setBody, []string{"Sec-Fetch-Site", "same-origin"}, 200},
		{"own origin POST", "POST", "/api/restore", "", []string{"Origin", e.srv.URL}, 200},
		{"non-browser PUT", "PUT", "/api/features/reviews", setBody, nil, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(audit(t, e, 100))
			r := e.do(t, tc.method, tc.path, operatorToken, tc.body, tc.hdr...)
			wantStatus(t, r, tc.status)
			after := len(audit(t, e, 100))
			if tc.status == 403 {
				if b := r.err(t); b.Error != "cross_origin" {
					t.Errorf("body %+v", b)
				}
				if after != before {
					t.Errorf("a refused request changed state: %d audit entries, then %d", before, after)
				}
			}
		})
	}
}

func TestAdminBadRequests(t *testing.T) {
	e := newAdmin(t, nil)
	big := `{"reason":"` + strings.Repeat("x", 70<<10) + `"}`
	for _, tc := range []struct {
		name, method, path, body, ctype string
		status                          int
		code, msg                       string
	}{
		{"truncated", "PUT", "/api/features/recommend", `{"state":{"mode":"off"}`, "", 400, "bad_request", "not valid JSON: it ends too soon"},
		{"syntax", "PUT", "/api/features/recommend", `{"state":{mode:"off"}}`, "", 400, "bad_request", "not valid JSON: invalid character 'm'"},
		{"empty", "PUT", "/api/features/recommend", "", "", 400, "bad_request", "the body is empty"},
		{"unknown field", "PUT", "/api/features/recommend", `{"state":{"mode":"off"},"reasn":"x"}`, "", 400, "bad_request", `unknown field "reasn"`},
		{"unknown state field", "PUT", "/api/features/recommend", `{"state":{"mode":"percent","percentage":5}}`, "", 400, "bad_request", `unknown field "percentage"`},
		{"wrong type", "PUT", "/api/features/recommend", `{"state":{"mode":"percent","percent":"20"}}`, "", 400, "bad_request", `field "state.percent" must be a number, not a JSON string`},
		{"not an object", "PUT", "/api/features/recommend", `[1]`, "", 400, "bad_request", "must be a JSON object, not a JSON array"},
		{"no state", "PUT", "/api/features/recommend", `{"reason":"x"}`, "", 400, "bad_request", `must hold "state"`},
		{"two values", "PUT", "/api/features/recommend", `{"state":{"mode":"off"}} {}`, "", 400, "bad_request", "more than one JSON value"},
		{"percent 150", "PUT", "/api/features/recommend", `{"state":{"mode":"percent","percent":150}}`, "", 400, "invalid",
			"degrade: invalid configuration: recommend: percent must be between 0 and 100, got 150"},
		{"bad mode", "PUT", "/api/features/recommend", `{"state":{"mode":"sideways"}}`, "", 400, "invalid", `mode must be "on", "off" or "percent"`},
		{"bad rule", "PUT", "/api/features/recommend", `{"state":{"mode":"on","rules":[{"when":[{"attr":"app_version","op":"lt","values":["x.y"]}]}]}}`, "", 400, "invalid", "rules[0].when[0]"},
		{"unknown feature", "PUT", "/api/features/nope", `{"state":{"mode":"off"}}`, "", 404, "unknown_feature", `"nope"`},
		{"unpin unknown", "DELETE", "/api/features/nope", "", "", 404, "unknown_feature", `"nope"`},
		{"form", "PUT", "/api/features/recommend", `state=off`, "application/x-www-form-urlencoded", 415, "unsupported_media_type", "application/json"},
		{"too large", "POST", "/api/restore", big, "", 413, "too_large", "64 KiB"},
		{"shed core", "POST", "/api/shed", `{"level":"core"}`, "", 400, "invalid", "core features are never shed"},
		{"shed bogus", "POST", "/api/shed", `{"level":"bogus"}`, "", 400, "invalid", "level is not optional, important or core, got bogus"},
		{"shed nothing", "POST", "/api/shed", `{"reason":"x"}`, "", 400, "bad_request", `must hold "level"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.ctype != "" {
				hdr = []string{"Content-Type", tc.ctype}
			}
			r := e.do(t, tc.method, tc.path, operatorToken, tc.body, hdr...)
			wantStatus(t, r, tc.status)
			if b := r.err(t); b.Error != tc.code || !strings.Contains(b.Message, tc.msg) {
				t.Errorf("got %+v, want code %q and a message with %q", b, tc.code, tc.msg)
			}
		})
	}
	// The 400 for an invalid state carries the switchboard's own error.
	err := e.sb.Set(t.Context(), "recommend", degrade.State{Mode: degrade.Percent, Percent: 150}, degrade.Change{})
	if !errors.Is(err, degrade.ErrInvalidConfig) {
		t.Fatalf("Set: %v", err)
	}
	r := e.do(t, "PUT", "/api/features/recommend", operatorToken, `{"state":{"mode":"percent","percent":150}}`)
	if got := r.err(t).Message; got != err.Error() {
		t.Errorf("message %q, want %q", got, err.Error())
	}
	if got := audit(t, e, 100); len(got) != 0 {
		t.Errorf("bad requests changed state: %+v", got)
	}
}

// flakyStore is a memory store whose writes and audit fail while down.
type flakyStore struct {
	degrade.Store
	down atomic.Bool
}

var errStoreDown = fmt.Errorf("%w: connection refused", degrade.ErrUnavailable)

func (s *flakyStore) Update(ctx context.Context, fn func(degrade.Stored) (degrade.Stored, degrade.AuditEntry, error)) (degrade.Stored, error) {
	if s.down.Load() {
		return degrade.Stored{}, errStoreDown
	}
	return s.Store.Update(ctx, fn)
}

func (s *flakyStore) Audit(ctx context.Context, n int) ([]degrade.AuditEntry, error) {
	if s.down.Load() {
		return nil, errStoreDown
	}
	return s.Store.Audit(ctx, n)
}

func TestAdminStoreUnavailable(t *testing.T) {
	st := &flakyStore{Store: degrade.NewMemoryStore(0)}
	e := newAdmin(t, []degrade.Option{degrade.WithStore(st)})
	st.down.Store(true)
	for _, tc := range []struct{ method, path, body string }{
		{"PUT", "/api/features/recommend", `{"state":{"mode":"off"}}`},
		{"DELETE", "/api/features/recommend", ""},
		{"POST", "/api/shed", `{"level":"optional"}`},
		{"POST", "/api/restore", ""},
		{"GET", "/api/audit", ""},
	} {
		r := e.do(t, tc.method, tc.path, operatorToken, tc.body)
		wantStatus(t, r, http.StatusServiceUnavailable)
		if b := r.err(t); b.Error != "unavailable" || !strings.Contains(b.Message, "connection refused") {
			t.Errorf("%s %s: %+v", tc.method, tc.path, b)
		}
		if r.header.Get("Retry-After") == "" {
			t.Errorf("%s %s: no Retry-After", tc.method, tc.path)
		}
	}
	// Reading the features goes on from the last known state.
	wantStatus(t, e.do(t, "GET", "/api/features", viewerToken, ""), http.StatusOK)
	st.down.Store(false)
	wantStatus(t, e.do(t, "PUT", "/api/features/recommend", operatorToken, `{"state":{"mode":"off"}}`), http.StatusOK)
}

func TestAdminAuthenticator(t *testing.T) {
	byHeader := func(r *http.Request) (degrade.Principal, error) {
		switch u := r.Header.Get("X-User"); u {
		case "":
			return degrade.Principal{}, degrade.ErrUnauthenticated
		case "mallory":
			return degrade.Principal{}, fmt.Errorf("%w: mallory is banned", degrade.ErrForbidden)
		case "sso-down":
			return degrade.Principal{}, fmt.Errorf("%w: sso", degrade.ErrUnavailable)
		case "nameless":
			return degrade.Principal{Role: degrade.Operator}, nil
		case "roleless":
			return degrade.Principal{Name: "roleless"}, nil
		case "dave":
			return degrade.Principal{Name: "dave@sso", Role: degrade.Operator}, nil
		default:
			return degrade.Principal{}, errors.New("no such user")
		}
	}
	e := newAdmin(t, nil, degrade.WithTokens(adminTokens), degrade.WithAuthenticator(byHeader))
	for _, tc := range []struct {
		user, token string
		status      int
	}{
		{"dave", "", 200},
		{"", operatorToken, 200},                // tokens first
		{"dave", "wrong-token-0123456789", 200}, // then the authenticator
		{"", "", 401},
		{"eve", "", 401},
		{"mallory", "", 403},
		{"sso-down", "", 503},
		{"nameless", "", 500},
		{"roleless", "", 403},
	} {
		var hdr []string
		if tc.user != "" {
			hdr = []string{"X-User", tc.user}
		}
		r := e.do(t, "PUT", "/api/features/recommend", tc.token, `{"state":{"mode":"off"},"reason":"sso"}`, hdr...)
		if r.status != tc.status {
			t.Errorf("user %q token %q: status %d, want %d; %s", tc.user, tc.token, r.status, tc.status, r.body)
		}
	}
	got := audit(t, e, 10)
	if len(got) != 3 || got[2].By != "dave@sso" || got[1].By != "alice" || got[0].By != "dave@sso" {
		t.Errorf("audit %+v", got)
	}
}

func TestNewAdminHandlerErrors(t *testing.T) {
	sb, err := degrade.New(adminFeatures)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	const short = "short-secret"
	for _, tc := range []struct {
		name string
		sb   *degrade.Switchboard
		opts []degrade.AdminOption
		want string
	}{
		{"no auth", sb, nil, "WithTokens or WithAuthenticator must be given"},
		{"empty tokens", sb, []degrade.AdminOption{degrade.WithTokens(nil)}, "WithTokens or WithAuthenticator must be given"},
		{"nil switchboard", nil, []degrade.AdminOption{degrade.WithTokens(adminTokens)}, "sb must not be nil"},
		{"short token", sb, []degrade.AdminOption{degrade.WithTokens(map[string]degrade.Principal{short: {Name: "a", Role: degrade.Viewer}})},
			`WithTokens[0] ("a"): token must be at least 16 characters, got 12 characters`},
		{"space in token", sb, []degrade.AdminOption{degrade.WithTokens(map[string]degrade.Principal{"0123456789 abcdef": {Name: "a", Role: degrade.Viewer}})},
			"printable ASCII without spaces"},
		{"no name", sb, []degrade.AdminOption{degrade.WithTokens(map[string]degrade.Principal{operatorToken: {Role: degrade.Viewer}})},
			"WithTokens[0]: Name must not be empty"},
		{"no role", sb, []degrade.AdminOption{degrade.WithTokens(map[string]degrade.Principal{operatorToken: {Name: "a"}})},
			"Role must be Viewer or Operator"},
		{"nil authenticator", sb, []degrade.AdminOption{degrade.WithAuthenticator(nil)}, "WithAuthenticator must not be nil"},
		{"nil protection", sb, []degrade.AdminOption{degrade.WithTokens(adminTokens), degrade.WithCrossOriginProtection(nil)},
			"WithCrossOriginProtection must not be nil"},
		{"relative prefix", sb, []degrade.AdminOption{degrade.WithTokens(adminTokens), degrade.WithMountPrefix("admin/")}, `must start with "/"`},
		{"pattern prefix", sb, []degrade.AdminOption{degrade.WithTokens(adminTokens), degrade.WithMountPrefix("/admin/{x}/")}, "plain path"},
		{"escaped prefix", sb, []degrade.AdminOption{degrade.WithTokens(adminTokens), degrade.WithMountPrefix("/admin%zz/")}, "plain path"},
		{"double slash", sb, []degrade.AdminOption{degrade.WithTokens(adminTokens), degrade.WithMountPrefix("/admin//x/")}, "plain path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := degrade.NewAdminHandler(tc.sb, tc.opts...)
			if h != nil || !errors.Is(err, degrade.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, %v; want ErrInvalidConfig with %q", h, err, tc.want)
			}
			if strings.Contains(err.Error(), short) {
				t.Errorf("the error gives the token away: %v", err)
			}
		})
	}
}

func TestAdminMountPrefix(t *testing.T) {
	e := newAdmin(t, nil, degrade.WithTokens(adminTokens), degrade.WithMountPrefix("/admin/degrade"))
	wantStatus(t, e.do(t, "GET", "/admin/degrade/api/features", viewerToken, ""), http.StatusOK)
	wantStatus(t, e.do(t, "GET", "/api/features", viewerToken, ""), http.StatusNotFound)
	r := e.do(t, "GET", "/admin/degrade/", "", "")
	wantStatus(t, r, http.StatusOK)

	// Without its slash, the console's root redirects, so that its
	// relative links reach the API.
	c := *e.srv.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	res, err := c.Get(e.srv.URL + "/admin/degrade")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if loc := res.Header.Get("Location"); res.StatusCode/100 != 3 || loc != "/admin/degrade/" {
		t.Errorf("status %d, Location %q", res.StatusCode, loc)
	}

	// A handler mounted with StripPrefix keeps the default prefix.
	sb := e.sb
	h, err := degrade.NewAdminHandler(sb, degrade.WithTokens(adminTokens))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ops/", http.StripPrefix("/ops", h))
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/ops/api/features/checkout", nil)
	req.Header.Set("Authorization", "Bearer "+viewerToken)
	mux.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Errorf("behind StripPrefix: %d %s", rec.Code, rec.Body)
	}
}

func TestAdminConsole(t *testing.T) {
	e := newAdmin(t, nil)
	for _, f := range []struct{ path, ctype, has string }{
		{"/", "text/html", `<script src="app.js"`},
		{"/app.js", "text/javascript", "api/features"},
		{"/style.css", "text/css", "input.toggle"},
	} {
		// No credentials: the console holds no data.
		r := e.do(t, "GET", f.path, "", "")
		wantStatus(t, r, http.StatusOK)
		if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, f.ctype) {
			t.Errorf("%s: Content-Type %q, want %s", f.path, ct, f.ctype)
		}
		csp := r.header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("%s: Content-Security-Policy %q", f.path, csp)
		}
		body := string(r.body)
		if !strings.Contains(body, f.has) {
			t.Errorf("%s does not hold %q", f.path, f.has)
		}
		// Nothing from elsewhere: no absolute or protocol-relative URL,
		// no CSS import or url().
		for _, bad := range []string{"http:", "https:", `="//`, "url(", "@import"} {
			if strings.Contains(body, bad) {
				t.Errorf("%s holds %q", f.path, bad)
			}
		}
		// Data goes into the page as text only.
		for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("} {
			if strings.Contains(body, bad) {
				t.Errorf("%s uses %s", f.path, bad)
			}
		}
		if etag := r.header.Get("ETag"); etag == "" {
			t.Errorf("%s: no ETag", f.path)
		} else {
			wantStatus(t, e.do(t, "GET", f.path, "", "", "If-None-Match", etag), http.StatusNotModified)
		}
	}
	wantStatus(t, e.do(t, "GET", "/nope.js", "", ""), http.StatusNotFound)

	off := newAdmin(t, nil, degrade.WithTokens(adminTokens), degrade.WithConsole(false))
	wantStatus(t, off.do(t, "GET", "/", "", ""), http.StatusNotFound)
	wantStatus(t, off.do(t, "GET", "/api/features", viewerToken, ""), http.StatusOK)
}

// openEvents opens the event stream and reads past its first comment.
func openEvents(t *testing.T, ctx context.Context, e *adminEnv) (*http.Response, *bufio.Reader) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/api/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+viewerToken)
	res, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, Content-Type %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	br := bufio.NewReader(res.Body)
	if line, err := br.ReadString('\n'); err != nil || line != ": connected\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	return res, br
}

func TestAdminEvents(t *testing.T) {
	e := newAdmin(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	res, br := openEvents(t, ctx, e)

	if err := e.sb.Set(ctx, "recommend", degrade.State{Mode: degrade.Off}, degrade.Change{By: "test"}); err != nil {
		t.Fatal(err)
	}
	var event, data string
	for event == "" || data == "" {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		if v, ok := strings.CutPrefix(line, "event: "); ok {
			event = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "data: "); ok {
			data = v
		}
	}
	var ev struct {
		Feature       string
		Before, After apiFeature
	}
	if err := json.Unmarshal([]byte(data), &ev); err != nil {
		t.Fatal(err)
	}
	if event != "change" || ev.Feature != "recommend" || ev.Before.State.Mode != degrade.On ||
		ev.After.State.Mode != degrade.Off || ev.After.Source != "manual" {
		t.Errorf("event %q: %+v", event, ev)
	}
	// Ending the request ends the stream's handler; TestMain checks that
	// no goroutine is left.
	cancel()
	res.Body.Close()

	// HEAD answers the headers and ends.
	r := e.do(t, "HEAD", "/api/events", viewerToken, "")
	wantStatus(t, r, http.StatusOK)
	if ct := r.header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("HEAD: Content-Type %q", ct)
	}
}

func TestAdminEventsEndWithSwitchboard(t *testing.T) {
	e := newAdmin(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	res, br := openEvents(t, ctx, e)
	defer res.Body.Close()
	if err := e.sb.Close(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(br); err != nil {
		t.Fatalf("the stream did not end cleanly: %v (read %q)", err, rest)
	}
}
func mustAudit(t *testing.T, sb *degrade.Switchboard) []degrade.AuditEntry {
	t.Helper()
	entries, err := sb.Audit(context.Background(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

func mustMarshal(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// switchboardJSON is what the switchboard holds: every status and the
// shed level.
func switchboardJSON(t *testing.T, sb *degrade.Switchboard) string {
	t.Helper()
	return mustMarshal(t, struct {
		Features []degrade.Status
		Shed     degrade.Level
	}{sb.Features(), sb.Shedding()})
}

// Writes that are refused, for want of credentials, of the operator role,
// of the console's origin or of a body of a sane size, change neither the
// switchboard nor the audit trail, whatever they would have changed.
func TestAdminRefusedWritesChangeNothing(t *testing.T) {
	e := newAdmin(t, nil)
	ctx := t.Context()
	// Something for each write to undo or redo.
	if err := e.sb.Set(ctx, "reviews", degrade.State{Mode: degrade.On}, degrade.Change{By: "setup", Reason: "setup"}); err != nil {
		t.Fatal(err)
	}
	if err := e.sb.Shed(ctx, degrade.Optional, degrade.Change{By: "setup", Reason: "setup"}); err != nil {
		t.Fatal(err)
	}
	huge := `{"state":{"mode":"off"},"reason":"` + strings.Repeat("x", 64<<10) + `"}`
	writes := []struct{ method, path, body string }{
		{"PUT", "/api/features/recommend", `{"state":{"mode":"off"},"reason":"r"}`},
		{"DELETE", "/api/features/reviews", `{"reason":"r"}`},
		{"DELETE", "/api/features/reviews", ""},
		{"POST", "/api/shed", `{"level":"important","reason":"r"}`},
		{"POST", "/api/restore", `{"reason":"r"}`},
		{"POST", "/api/restore", ""},
	}
	type refusal struct {
		name   string
		token  string
		hdr    []string
		status int
		code   string
	}
	refusals := []refusal{
		{"no credentials", "", nil, 401, "unauthenticated"},
		{"wrong token", "not-a-valid-token-at-all", nil, 401, "unauthenticated"},
		{"operator token prefix", operatorToken[:len(operatorToken)-1], nil, 401, "unauthenticated"},
		{"basic auth", "", []string{"Authorization", "Basic YWxpY2U6c2VjcmV0"}, 401, "unauthenticated"},
		{"viewer", viewerToken, nil, 403, "forbidden"},
		{"viewer from the console", viewerToken, []string{"Sec-Fetch-Site", "same-origin"}, 403, "forbidden"},
		{"operator cross-site", operatorToken, []string{"Sec-Fetch-Site", "cross-site"}, 403, "cross_origin"},
		{"operator same-site", operatorToken, []string{"Sec-Fetch-Site", "same-site"}, 403, "cross_origin"},
		{"operator from another origin", operatorToken, []string{"Origin", "https://evil.example"}, 403, "cross_origin"},
		{"no credentials cross-site", "", []string{"Sec-Fetch-Site", "cross-site"}, 403, "cross_origin"},
	}
	before := switchboardJSON(t, e.sb)
	entries := len(mustAudit(t, e.sb))
	for _, w := range writes {
		for _, rf := range refusals {
			r := e.do(t, w.method, w.path, rf.token, w.body, rf.hdr...)
			if r.status != rf.status || r.err(t).Error != rf.code {
				t.Errorf("%s %s %s: %d %s, want %d %s", rf.name, w.method, w.path, r.status, r.body, rf.status, rf.code)
			}
		}
		// Too large, from an operator: refused before it is read through.
		if w.body != "" {
			r := e.do(t, w.method, w.path, operatorToken, huge)
			if r.status != http.StatusRequestEntityTooLarge || r.err(t).Error != "too_large" {
				t.Errorf("oversized %s %s: %d %s", w.method, w.path, r.status, r.body)
			}
		}
		if got := switchboardJSON(t, e.sb); got != before {
			t.Fatalf("refused %s %s changed the switchboard:\n%s\nto\n%s", w.method, w.path, before, got)
		}
		if got := mustAudit(t, e.sb); len(got) != entries {
			t.Fatalf("refused %s %s added to the audit trail: %+v", w.method, w.path, got[0])
		}
	}
	// The same writes from the operator go through.
	for _, w := range writes {
		wantStatus(t, e.do(t, w.method, w.path, operatorToken, w.body), http.StatusOK)
	}
	if got := mustAudit(t, e.sb); len(got) != entries+len(writes) {
		t.Errorf("%d audit entries after %d accepted writes, want %d", len(got), len(writes), entries+len(writes))
	}
}

// The body limit is 64 KiB exactly: a body of that size is read, one
// byte more is refused with 413 and changes nothing.
func TestAdminBodyLimit(t *testing.T) {
	e := newAdmin(t, nil)
	const limit = 64 << 10
	body := func(size int) string {
		const head, tail = `{"state":{"mode":"off"},"reason":"`, `"}`
		return head + strings.Repeat("x", size-len(head)-len(tail)) + tail
	}
	before := switchboardJSON(t, e.sb)
	r := e.do(t, "PUT", "/api/features/recommend", operatorToken, body(limit+1))
	wantStatus(t, r, http.StatusRequestEntityTooLarge)
	if b := r.err(t); b.Error != "too_large" || !strings.Contains(b.Message, "64 KiB") {
		t.Errorf("got %+v", b)
	}
	if got := switchboardJSON(t, e.sb); got != before || len(mustAudit(t, e.sb)) != 0 {
		t.Fatalf("an oversized body changed state:\n%s\nto\n%s", before, got)
	}
	// A body of exactly the limit, also with JSON whitespace after it.
	wantStatus(t, e.do(t, "PUT", "/api/features/recommend", operatorToken, body(limit)), http.StatusOK)
	wantStatus(t, e.do(t, "PUT", "/api/features/reviews", operatorToken, body(limit-2)+"\r\n"), http.StatusOK)
	if got := mustAudit(t, e.sb); len(got) != 2 || len(got[0].Reason) != limit-2-36 || got[0].Feature != "reviews" {
		t.Errorf("audit after bodies at the limit: %d entries", len(got))
	}
}

// Every accepted change, of every kind, by whichever operator, is one
// audit entry, newest first, saying who, what, why, and the state before
// and after; refused changes in between leave no entry.
func TestAdminAuditRecordsEveryChange(t *testing.T) {
	const bobToken = "bob-token-0123456789abcdef"
	tokens := map[string]degrade.Principal{
		operatorToken: {Name: "alice", Role: degrade.Operator},
		bobToken:      {Name: "bob", Role: degrade.Operator},
		viewerToken:   {Name: "victor", Role: degrade.Viewer},
	}
	e := newAdmin(t, nil, degrade.WithTokens(tokens))
	type change struct {
		token, method, path, body string
		by, action, feature, why  string
	}
	changes := []change{
		{operatorToken, "PUT", "/api/features/recommend", `{"state":{"mode":"percent","percent":20},"reason":"rollout 20%"}`, "alice", "set", "recommend", "rollout 20%"},
		{bobToken, "PUT", "/api/features/recommend", `{"state":{"mode":"percent","percent":50},"reason":"rollout 50%"}`, "bob", "set", "recommend", "rollout 50%"},
		{operatorToken, "POST", "/api/shed", `{"level":"optional","reason":"大促"}`, "alice", "shed", "", "大促"},
		{bobToken, "PUT", "/api/features/search-suggest", `{"state":{"mode":"off","rules":[{"when":[{"attr":"platform","op":"in","values":["ios"]}],"enabled":true}]},"reason":"slow backend"}`, "bob", "set", "search-suggest", "slow backend"},
		{operatorToken, "POST", "/api/shed", `{"level":"important","reason":"more"}`, "alice", "shed", "", "more"},
		{bobToken, "DELETE", "/api/features/recommend", `{"reason":"done"}`, "bob", "unpin", "recommend", "done"},
		{operatorToken, "POST", "/api/restore", `{"reason":"over"}`, "alice", "restore", "", "over"},
		{bobToken, "DELETE", "/api/features/search-suggest", "", "bob", "unpin", "search-suggest", ""},
		{operatorToken, "POST", "/api/restore", "", "alice", "restore", "", ""},
		{bobToken, "PUT", "/api/features/checkout", `{"state":{"mode":"on"},"reason":"pin"}`, "bob", "set", "checkout", "pin"},
	}
	refused := [][]string{
		{viewerToken, "PUT", "/api/features/recommend", `{"state":{"mode":"off"},"reason":"viewer"}`},
		{"", "POST", "/api/shed", `{"level":"optional","reason":"anonymous"}`},
		{operatorToken, "PUT", "/api/features/recommend", `{"state":{"mode":"percent","percent":101},"reason":"invalid"}`},
		{bobToken, "POST", "/api/shed", `{"level":"core","reason":"invalid"}`},
		{operatorToken, "PUT", "/api/features/nope", `{"state":{"mode":"off"},"reason":"unknown"}`},
	}
	for i, c := range changes {
		wantStatus(t, e.do(t, c.method, c.path, c.token, c.body), http.StatusOK)
		rf := refused[i%len(refused)]
		if r := e.do(t, rf[1], rf[2], rf[0], rf[3]); r.status/100 == 2 {
			t.Fatalf("%v: %d", rf, r.status)
		}
	}

	entries := audit(t, e, 100)
	if len(entries) != len(changes) {
		t.Fatalf("%d audit entries for %d accepted changes: %+v", len(entries), len(changes), entries)
	}
	// The state after each change, by feature ("" for the shed level), to
	// check each entry's before against the entry before it.
	after := map[string]string{"": `"none"`}
	for i := len(changes) - 1; i >= 0; i-- {
		c, got := changes[len(changes)-1-i], entries[i]
		if got.By != c.by || got.Action != c.action || got.Feature != c.feature || got.Reason != c.why {
			t.Errorf("entry %d (newest first) is %s %q by %s because %q; want %s %q by %s because %q",
				i, got.Action, got.Feature, got.By, got.Reason, c.action, c.feature, c.by, c.why)
		}
		if i+1 < len(entries) && got.At.Before(entries[i+1].At) {
			t.Errorf("entry %d at %v is older than the entry after it, at %v", i, got.At, entries[i+1].At)
		}
		if got.At.IsZero() {
			t.Errorf("entry %d has no time", i)
		}
		if prev := after[c.feature]; string(got.Before) != prev {
			t.Errorf("entry %d (%s %s): before %s, want %s", i, c.action, c.feature, got.Before, prev)
		}
		switch c.action {
		case "set":
			var m degrade.Manual
			if err := json.Unmarshal(got.After, &m); err != nil || m.By != c.by || m.Reason != c.why {
				t.Errorf("entry %d: after %s (%v)", i, got.After, err)
			}
			var sent struct{ State degrade.State }
			_ = json.Unmarshal([]byte(c.body), &sent)
			if mustMarshal(t, m.State) != mustMarshal(t, sent.State) {
				t.Errorf("entry %d: state after %s, want %s", i, mustMarshal(t, m.State), mustMarshal(t, sent.State))
			}
		case "unpin":
			if got.After != nil {
				t.Errorf("entry %d: unpin with after %s", i, got.After)
			}
		case "shed", "restore":
			var sent struct{ Level degrade.Level }
			_ = json.Unmarshal([]byte(c.body), &sent)
			if want := `"` + sent.Level.String() + `"`; sent.Level != 0 && string(got.After) != want {
				t.Errorf("entry %d: after %s, want %s", i, got.After, want)
			}
			if c.action == "restore" && string(got.After) != `"none"` {
				t.Errorf("entry %d: restore to %s", i, got.After)
			}
		}
		after[c.feature] = string(got.After)
	}
}
