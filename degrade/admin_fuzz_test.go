package degrade_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/bulwarkgo/bulwark/degrade"
)

// Routes of FuzzAdmin, by its route argument modulo len(fuzzRoutes).
var fuzzRoutes = []struct {
	method, prefix, action string
}{
	{"PUT", "/api/features/", "set"},
	{"DELETE", "/api/features/", "unpin"},
	{"POST", "/api/shed", "shed"},
	{"POST", "/api/restore", "restore"},
	// The fuzzed name is the whole path: any write the mux may route.
	{"PUT", "/", ""},
	{"POST", "/", ""},
	{"DELETE", "/", ""},
}

var fuzzContentTypes = []string{"application/json", "application/json; charset=utf-8", "", "text/plain", "application/x-www-form-urlencoded", "Application/JSON ; q=1"}

// FuzzAdmin sends an operator's writes with fuzzed bodies, paths and
// content types to the admin handler, over a switchboard that may already
// hold a manual state and a shed. The handler never panics nor answers
// 5xx, and a JSON answer is either the documented error shape or a
// feature or list; a write that is refused changes neither the
// switchboard nor the audit trail, and one that is accepted adds exactly
// one audit entry, by the operator, with the body's reason, saying what
// was done. After every request each feature's status encodes to JSON
// that reads back as a valid state, and every feature still answers.
func FuzzAdmin(f *testing.F) {
	for _, s := range []struct {
		route       uint8
		name, body  string
		ctype, prep uint8
	}{
		{0, "recommend", `{"state":{"mode":"percent","percent":20,"messages":{"en":"Later."}},"reason":"rollout"}`, 0, 0},
		{0, "recommend", `{"state":{"mode":"on","rules":[{"when":[{"attr":"app_version","op":"lt","values":["2.3.0"]},{"attr":"model","op":"in","values":["iPhone8,1"]}],"enabled":false}]},"reason":"crash on old app"}`, 1, 1},
		{0, "checkout", `{"state":{"mode":"off"}}`, 0, 3},
		{0, "recommend", `{"state":{"mode":"percent","percent":150}}`, 0, 0},
		{0, "recommend", `{"state":{"mode":"on","rules":[{"when":[]}]}}`, 0, 0},
		{0, "recommend", `{"state":{"mode":"off"},"reasn":"x"}`, 0, 0},
		{0, "recommend", `{"state":{"mode":"off"}} {}`, 0, 0},
		{0, "recommend", `{"state":null,"reason":"x"}`, 0, 0},
		{0, "nope", `{"state":{"mode":"off"}}`, 0, 0},
		{0, "re%63ommend", `{"state":{"mode":"off"}}`, 0, 0},
		{0, "recommend", `state=off`, 4, 0},
		{0, "recommend", `{"state":{"mode":"off"}}`, 3, 0},
		{1, "recommend", ``, 2, 1},
		{1, "reviews", `{"reason":"done"}`, 0, 0},
		{1, "recommend", `{"reason":7}`, 0, 1},
		{2, "", `{"level":"important","reason":"双11"}`, 0, 0},
		{2, "", `{"level":"core"}`, 0, 0},
		{2, "", `{"level":"none"}`, 0, 2},
		{2, "", `{"level":2}`, 0, 0},
		{3, "", ``, 2, 2},
		{3, "", `{"reason":"over"}`, 5, 3},
		{3, "", `[1]`, 0, 0},
		{4, "api/features/recommend", `{"state":{"mode":"off"}}`, 0, 0},
		{4, "api/features/../features/reviews", `{"state":{"mode":"off"}}`, 0, 0},
		{5, "api/shed", `{"level":"optional"}`, 0, 0},
		{5, "api/events", ``, 2, 0},
		{6, "api/features/search-suggest", ``, 2, 1},
	} {
		f.Add(s.route, s.name, []byte(s.body), s.ctype, s.prep)
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, route uint8, name string, body []byte, ctype, prep uint8) {
		sb, err := degrade.New(adminFeatures)
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Close()
		h, err := degrade.NewAdminHandler(sb, degrade.WithTokens(adminTokens))
		if err != nil {
			t.Fatal(err)
		}
		// Start from a manual state and a shed, or neither.
		if prep&1 != 0 {
			st := degrade.State{Mode: degrade.Off, Rules: []degrade.Rule{{
				When: []degrade.Condition{{Attr: "platform", Op: "in", Values: []string{"ios"}}}, Enabled: true}}}
			if err := sb.Set(ctx, "recommend", st, degrade.Change{By: "setup"}); err != nil {
				t.Fatal(err)
			}
		}
		if prep&2 != 0 {
			if err := sb.Shed(ctx, degrade.Optional, degrade.Change{By: "setup"}); err != nil {
				t.Fatal(err)
			}
		}
		auditBefore := mustAudit(t, sb)
		stateBefore := switchboardJSON(t, sb)

		rt := fuzzRoutes[int(route)%len(fuzzRoutes)]
		target := rt.prefix
		if rt.prefix != "/api/shed" && rt.prefix != "/api/restore" {
			target += name
		}
		u, err := url.Parse(target)
		if err != nil || u.Scheme != "" || u.Host != "" {
			u = &url.URL{Path: target}
		}
		req := &http.Request{
			Method: rt.method, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Authorization": {"Bearer " + operatorToken}},
			Body:   io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body)),
			Host: "admin.example", RemoteAddr: "192.0.2.1:1234", RequestURI: u.RequestURI(),
		}
		if ct := fuzzContentTypes[int(ctype)%len(fuzzContentTypes)]; ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		req = req.WithContext(ctx)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)

		res := rec.Result()
		if res.StatusCode >= 500 {
			t.Fatalf("%s %s %q: %d %s", rt.method, u, body, res.StatusCode, rec.Body)
		}
		if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
			var v map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
				t.Fatalf("%s %s: answer %q is not a JSON object: %v", rt.method, u, rec.Body, err)
			}
			if res.StatusCode >= 400 {
				if code, _ := v["error"].(string); code == "" || v["message"] == nil {
					t.Fatalf("%s %s: error answer %s", rt.method, u, rec.Body)
				}
			} else if v["name"] == nil && v["features"] == nil {
				t.Fatalf("%s %s: %d with %s, neither a feature nor the list", rt.method, u, res.StatusCode, rec.Body)
			}
		}

		// Every feature still has a state that encodes, reads back and
		// answers.
		for _, st := range sb.Features() {
			b, err := json.Marshal(st)
			if err != nil {
				t.Fatalf("status of %s does not encode: %v", st.Name, err)
			}
			var back struct {
				Name    string        `json:"name"`
				Level   degrade.Level `json:"level"`
				State   degrade.State `json:"state"`
				Source  string        `json:"source"`
				Trigger string        `json:"trigger"`
				Changed string        `json:"changed"`
			}
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&back); err != nil || back.Name != st.Name || back.Level != st.Level {
				t.Fatalf("status %s does not read back: %+v, %v", b, back, err)
			}
			switch back.State.Mode {
			case degrade.On, degrade.Off:
			case degrade.Percent:
				if !(back.State.Percent >= 0 && back.State.Percent <= 100) {
					t.Fatalf("status %s: percent out of range", b)
				}
			default:
				t.Fatalf("status %s: no valid mode", b)
			}
			for _, a := range []degrade.Attributes{{}, {Platform: "ios", UserID: "u-1", AppVersion: "2.2.0"}} {
				on := sb.Enabled(degrade.WithAttributes(ctx, a), st.Name)
				if len(back.State.Rules) == 0 && back.State.Mode != degrade.Percent && on != (back.State.Mode == degrade.On) {
					t.Fatalf("%s in state %s: Enabled = %v", st.Name, b, on)
				}
			}
		}

		auditAfter := mustAudit(t, sb)
		if res.StatusCode/100 != 2 {
			if len(auditAfter) != len(auditBefore) {
				t.Fatalf("%s %s answered %d but added to the audit trail: %+v", rt.method, u, res.StatusCode, auditAfter[0])
			}
			if got := switchboardJSON(t, sb); got != stateBefore {
				t.Fatalf("%s %s answered %d but changed the switchboard:\n%s\nto\n%s", rt.method, u, res.StatusCode, stateBefore, got)
			}
			return
		}
		if len(auditAfter) != len(auditBefore)+1 {
			t.Fatalf("%s %s answered %d and the audit trail went from %d to %d entries", rt.method, u, res.StatusCode, len(auditBefore), len(auditAfter))
		}
		e := auditAfter[0]
		var why struct {
			Reason string `json:"reason"`
		}
		_ = json.Unmarshal(body, &why)
		if e.By != "alice" || e.Reason != why.Reason || e.At.IsZero() {
			t.Fatalf("%s %s %q: audit entry %+v, want by alice with reason %q", rt.method, u, body, e, why.Reason)
		}
		switch rt.action {
		case "":
			if e.Action != "set" && e.Action != "unpin" && e.Action != "shed" && e.Action != "restore" {
				t.Fatalf("audit entry %+v: unknown action", e)
			}
		case "set", "unpin":
			// The mux unescapes the name.
			if want := strings.TrimPrefix(u.Path, rt.prefix); e.Action != rt.action || e.Feature != want {
				t.Fatalf("%s %s: audit entry %+v, want %s of %q", rt.method, u, e, rt.action, want)
			}
		default:
			if e.Action != rt.action || e.Feature != "" {
				t.Fatalf("%s %s: audit entry %+v, want %s", rt.method, u, e, rt.action)
			}
		}
		switch e.Action {
		case "set":
			var sent struct {
				State degrade.State `json:"state"`
			}
			if err := json.Unmarshal(body, &sent); err != nil {
				t.Fatal(err)
			}
			st, err := sb.Status(e.Feature)
			if err != nil || st.Source != degrade.SourceManual || mustMarshal(t, st.State) != mustMarshal(t, sent.State) {
				t.Fatalf("after setting %s to %s: %+v, %v", e.Feature, body, st, err)
			}
		case "unpin":
			if st, err := sb.Status(e.Feature); err != nil || st.Source == degrade.SourceManual {
				t.Fatalf("after unpinning %s: %+v, %v", e.Feature, st, err)
			}
		case "shed":
			var sent struct {
				Level degrade.Level `json:"level"`
			}
			if err := json.Unmarshal(body, &sent); err != nil || sb.Shedding() != sent.Level {
				t.Fatalf("after shedding %s: Shedding %v (%v)", body, sb.Shedding(), err)
			}
		case "restore":
			if sb.Shedding() != 0 {
				t.Fatalf("after restore: Shedding %v", sb.Shedding())
			}
		}
	})
}
