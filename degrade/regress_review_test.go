package degrade_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bulwarkgo/bulwark/degrade"
	"github.com/bulwarkgo/bulwark/internal/israce"
	"github.com/bulwarkgo/bulwark/internal/redistest"
)

// Events reach listeners in the order the changes were made, even when
// changes race.
func TestRegressionEventsInOrder(t *testing.T) {
	sb := newBoard(t)
	var (
		mu     sync.Mutex
		events []degrade.Event
	)
	stop := sb.Subscribe(func(e degrade.Event) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	})
	defer stop()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 30 {
				st := degrade.State{Mode: degrade.Percent, Percent: float64(g*30+i) / 3}
				if err := sb.Set(context.Background(), "animations", st, ops); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(events)
		last := degrade.Status{}
		if n > 0 {
			last = events[n-1].After
		}
		mu.Unlock()
		if st, _ := sb.Status("animations"); n > 0 && last.State.Percent == st.State.Percent && last.Changed.Equal(st.Changed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the last event does not show the final state")
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(events); i++ {
		if !events[i].Before.Changed.Equal(events[i-1].After.Changed) {
			t.Fatalf("event %d follows a state that is not the previous event's", i)
		}
	}
}

func TestRegressionDuplicateTriggerNames(t *testing.T) {
	sig := degrade.SignalFunc(func() float64 { return 0 })
	_, err := degrade.New(shopFeatures,
		degrade.WithTrigger(degrade.Trigger{Name: "errors", Signal: sig, Above: 1, Off: []string{"animations"}}),
		degrade.WithTrigger(degrade.Trigger{Name: "errors", Signal: sig, Above: 1, Off: []string{"recommendations"}}))
	if !errors.Is(err, degrade.ErrInvalidConfig) || !strings.Contains(err.Error(), "given twice") {
		t.Fatalf("two triggers named alike: %v", err)
	}
}

// A caller's later edits to the slices of a State it set do not reach the
// switchboard.
func TestRegressionSetCopiesTheState(t *testing.T) {
	sb := newBoard(t)
	values := []string{"HUAWEI-P30"}
	st := degrade.State{Mode: degrade.On, Rules: []degrade.Rule{{
		When: []degrade.Condition{{Attr: "model", Op: "in", Values: values}}, Enabled: false}}}
	if err := sb.Set(context.Background(), "map-navigation", st, ops); err != nil {
		t.Fatal(err)
	}
	values[0] = "iPhone15,2"
	st.Rules[0].Enabled = true
	p30 := degrade.WithAttributes(context.Background(), degrade.Attributes{Model: "HUAWEI-P30"})
	if sb.Enabled(p30, "map-navigation") {
		t.Fatal("the caller's edit changed the switchboard's rule")
	}
	got, _ := sb.Status("map-navigation")
	got.State.Rules[0].When[0].Values[0] = "changed"
	if again, _ := sb.Status("map-navigation"); again.State.Rules[0].When[0].Values[0] != "HUAWEI-P30" {
		t.Fatal("editing a returned Status changed the switchboard's")
	}
}

func TestRegressionUnknownNameAllocatesOnce(t *testing.T) {
	if israce.Enabled {
		t.Skip("the race detector allocates")
	}
	sb := newBoard(t)
	ctx := context.Background()
	sb.Enabled(ctx, "no-such-feature")
	if n := testing.AllocsPerRun(100, func() { sb.Enabled(ctx, "no-such-feature") }); n != 0 {
		t.Fatalf("%v allocations per check of a known-unknown name", n)
	}
	// Names from an unbounded source are counted, not all remembered.
	for i := range 5000 {
		sb.Enabled(ctx, fmt.Sprint("generated-", i))
	}
}

// A body without a Content-Type cannot change anything: a no-cors fetch
// from another site sends one without a preflight.
func TestRegressionAdminRefusesBodyWithoutContentType(t *testing.T) {
	sb := newBoard(t)
	const token = "operator-token-0123456789"
	h, err := degrade.NewAdminHandler(sb, degrade.WithTokens(map[string]degrade.Principal{token: {Name: "alice", Role: degrade.Operator}}))
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("POST", "/api/shed", strings.NewReader(`{"level":"important","reason":"x"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusUnsupportedMediaType || sb.Shedding() != 0 {
		t.Fatalf("POST without Content-Type: %d, shedding %v", rec.Code, sb.Shedding())
	}
}

// A trigger's shed names the trigger in the statuses it decides, and an
// operator's shed of the same level keeps its own source.
func TestRegressionTriggerShedIsNamed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sb, err := degrade.New(shopFeatures, degrade.WithEvaluationInterval(100*time.Millisecond),
			degrade.WithTrigger(degrade.Trigger{Name: "latency", Signal: degrade.SignalFunc(func() float64 { return 1 }),
				Above: 0.5, Below: 0.1, Shed: degrade.Important}))
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Close()
		time.Sleep(150 * time.Millisecond)
		st, _ := sb.Status("map-navigation")
		if st.Source != degrade.SourceTrigger || st.Trigger != "latency" {
			t.Fatalf("status %+v, want source trigger named latency", st)
		}
		_ = sb.Shed(context.Background(), degrade.Optional, ops)
		if st, _ := sb.Status("animations"); st.Source != degrade.SourceShed {
			t.Fatalf("an operator-shed feature shows source %q", st.Source)
		}
		if st, _ := sb.Status("map-navigation"); st.Source != degrade.SourceTrigger || st.Trigger != "latency" {
			t.Fatalf("status %+v", st)
		}
	})
}

// A body with a stray closing bracket after its object is not JSON, and
// changes nothing: the decoder's More stops at '}' and ']', so the check
// for a second value alone let such a body through.
func TestRegressionAdminRefusesTrailingBracket(t *testing.T) {
	e := newAdmin(t, nil)
	for _, tc := range []struct{ method, path, body string }{
		{"PUT", "/api/features/recommend", `{"state":{"mode":"off"}}}`},
		{"PUT", "/api/features/recommend", `{"state":{"mode":"off"}} ]`},
		{"DELETE", "/api/features/recommend", `{"reason":"x"}}`},
		{"POST", "/api/shed", `{"level":"optional"}]`},
		{"POST", "/api/restore", "{}\n}"},
	} {
		r := e.do(t, tc.method, tc.path, operatorToken, tc.body)
		wantStatus(t, r, http.StatusBadRequest)
		if b := r.err(t); b.Error != "bad_request" || !strings.Contains(b.Message, "not valid JSON") {
			t.Errorf("%s %s %q: %+v", tc.method, tc.path, tc.body, b)
		}
	}
	if got := audit(t, e, 100); len(got) != 0 {
		t.Errorf("bodies that are not JSON changed state: %+v", got)
	}
	if st, _ := e.sb.Status("recommend"); st.Source != degrade.SourceDefault || e.sb.Shedding() != 0 {
		t.Errorf("recommend %+v, shedding %v", st, e.sb.Shedding())
	}
}

// A state is stored and shared as JSON, which cannot carry a string that
// is not UTF-8: a rule on the byte "\xcd" was accepted, the store held it
// as "\ufffd", and once read back (at once on every other instance, at
// the next notification or refresh on the one that made the change) the
// rule no longer matched what it was set for. Such a state is refused.
func TestRegressionStateStringsMustBeUTF8(t *testing.T) {
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	a := newRedisBoard(t, addr, prefix)
	b := newRedisBoard(t, addr, prefix)
	req := degrade.WithAttributes(t.Context(), degrade.Attributes{Model: "\xcd"})
	st := degrade.State{Mode: degrade.On, Rules: []degrade.Rule{{
		When: []degrade.Condition{{Attr: "model", Op: "in", Values: []string{"\xcd"}}}, Enabled: false}}}
	err := a.Set(t.Context(), "search", st, degrade.Change{By: "alice"})
	if err == nil {
		waitFor(t, 5*time.Second, "b sees the change", func() bool {
			s, _ := b.Status("search")
			return s.Source == degrade.SourceManual
		})
		s, _ := b.Status("search")
		t.Fatalf("Set accepted a value that is not UTF-8; the store holds %q, and for that model, which the rule turns off, the instances decide %v and %v",
			s.State.Rules[0].When[0].Values, a.Enabled(req, "search"), b.Enabled(req, "search"))
	}
	if !errors.Is(err, degrade.ErrInvalidConfig) || !strings.Contains(err.Error(), "UTF-8") {
		t.Fatalf("Set: %v, want ErrInvalidConfig saying UTF-8", err)
	}
	for _, bad := range []degrade.State{
		{Mode: degrade.On, Rules: []degrade.Rule{{When: []degrade.Condition{{Attr: "\xff", Op: "in", Values: []string{"x"}}}}}},
		{Mode: degrade.Off, Messages: map[string]string{"zh\xff": "稍后"}},
		{Mode: degrade.Off, Messages: map[string]string{"zh": "稍\xff后"}},
	} {
		if err := a.Set(t.Context(), "search", bad, degrade.Change{By: "alice"}); !errors.Is(err, degrade.ErrInvalidConfig) {
			t.Errorf("Set(%+v): %v, want ErrInvalidConfig", bad, err)
		}
	}
	if s, _ := a.Status("search"); s.Source != degrade.SourceDefault {
		t.Errorf("refused states changed the feature: %+v", s)
	}
}
