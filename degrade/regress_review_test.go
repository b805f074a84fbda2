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
