package degrade_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/degrade"
	"github.com/bulwarkgo/bulwark/internal/israce"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

var shopFeatures = []degrade.Feature{
	{Name: "checkout", Level: degrade.Core},
	{Name: "map-navigation", Level: degrade.Important},
	{Name: "recommendations", Level: degrade.Optional, Messages: map[string]string{
		"zh": "推荐暂时不可用", "en": "Recommendations are unavailable for now.",
	}},
	{Name: "animations", Level: degrade.Optional},
	{Name: "beta-search", Level: degrade.Optional, Off: true},
}

func newBoard(t *testing.T, opts ...degrade.Option) *degrade.Switchboard {
	t.Helper()
	sb, err := degrade.New(shopFeatures, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Close() })
	return sb
}

var ops = degrade.Change{By: "alice", Reason: "incident 42"}

func user(id string) context.Context {
	return degrade.WithAttributes(context.Background(), degrade.Attributes{UserID: id})
}

func TestDefaults(t *testing.T) {
	sb := newBoard(t)
	ctx := context.Background()
	for name, want := range map[string]bool{"checkout": true, "recommendations": true, "beta-search": false} {
		if got := sb.Enabled(ctx, name); got != want {
			t.Errorf("Enabled(%s) = %v, want %v", name, got, want)
		}
		st, err := sb.Status(name)
		if err != nil || st.Source != degrade.SourceDefault {
			t.Errorf("Status(%s) = %+v, %v", name, st, err)
		}
	}
}

func TestSetCheckAndMessages(t *testing.T) {
	sb := newBoard(t)
	ctx := context.Background()
	if err := sb.Set(ctx, "recommendations", degrade.State{Mode: degrade.Off}, ops); err != nil {
		t.Fatal(err)
	}
	if sb.Enabled(ctx, "recommendations") {
		t.Fatal("on after Set off")
	}
	for locale, want := range map[string]string{
		"zh-CN": "推荐暂时不可用",
		"en":    "Recommendations are unavailable for now.",
		"en_GB": "Recommendations are unavailable for now.",
		"fr":    "当前系统繁忙，部分功能暂不可用", // no French message, no "" message: the default
		"":      "当前系统繁忙，部分功能暂不可用",
	} {
		err := sb.Check(degrade.WithAttributes(ctx, degrade.Attributes{Locale: locale}), "recommendations")
		var de *degrade.DegradedError
		if !errors.Is(err, degrade.ErrDegraded) || !errors.As(err, &de) {
			t.Fatalf("Check: %v, want a DegradedError", err)
		}
		if de.Feature != "recommendations" || de.Level != degrade.Optional || de.Message != want {
			t.Errorf("locale %q: %+v, want message %q", locale, de, want)
		}
	}
	if err := sb.Check(ctx, "checkout"); err != nil {
		t.Fatalf("Check of an enabled feature: %v", err)
	}
	st, _ := sb.Status("recommendations")
	if st.Source != degrade.SourceManual || st.Changed.IsZero() {
		t.Fatalf("status after Set: %+v", st)
	}
	// Unpin returns to the default.
	if err := sb.Unpin(ctx, "recommendations", ops); err != nil {
		t.Fatal(err)
	}
	if !sb.Enabled(ctx, "recommendations") {
		t.Fatal("off after Unpin")
	}
	// A state's own message wins over the feature's.
	_ = sb.Set(ctx, "animations", degrade.State{Mode: degrade.Off, Messages: map[string]string{"": "动画已关闭"}}, ops)
	var de *degrade.DegradedError
	if errors.As(sb.Check(ctx, "animations"), &de); de == nil || de.Message != "动画已关闭" {
		t.Fatalf("state message: %+v", de)
	}
}

func TestTargeting(t *testing.T) {
	sb := newBoard(t)
	ctx := context.Background()
	// Off for the device model that crashes, on versions before 2.3.0.
	st := degrade.State{Mode: degrade.On, Rules: []degrade.Rule{{
		When: []degrade.Condition{
			{Attr: "model", Op: "in", Values: []string{"HUAWEI-P30", "OPPO-R17"}},
			{Attr: "app_version", Op: "lt", Values: []string{"2.3.0"}},
		},
		Enabled: false,
	}, {
		When:    []degrade.Condition{{Attr: "tenant", Op: "in", Values: []string{"vip"}}},
		Enabled: true,
	}}}
	if err := sb.Set(ctx, "map-navigation", st, ops); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		a    degrade.Attributes
		want bool
	}{
		{degrade.Attributes{Model: "HUAWEI-P30", AppVersion: "2.2.9"}, false},
		{degrade.Attributes{Model: "OPPO-R17", AppVersion: "2.3.0-beta"}, false},
		{degrade.Attributes{Model: "HUAWEI-P30", AppVersion: "2.3.0"}, true},
		{degrade.Attributes{Model: "HUAWEI-P30", AppVersion: "2.10.0"}, true},
		{degrade.Attributes{Model: "iPhone14,2", AppVersion: "2.0.0"}, true},
		{degrade.Attributes{Model: "HUAWEI-P30"}, true}, // no version: lt does not hold
		{degrade.Attributes{Model: "HUAWEI-P30", AppVersion: "not-a-version"}, true},
		{degrade.Attributes{Custom: map[string]string{"tenant": "vip"}}, true},
		{degrade.Attributes{}, true},
	}
	for _, c := range cases {
		if got := sb.Enabled(degrade.WithAttributes(ctx, c.a), "map-navigation"); got != c.want {
			t.Errorf("%+v: Enabled = %v, want %v", c.a, got, c.want)
		}
	}
	if !sb.Enabled(ctx, "map-navigation") {
		t.Error("no attributes at all: want the mode (on)")
	}
	// not_in holds for a request without the attribute.
	_ = sb.Set(ctx, "animations", degrade.State{Mode: degrade.Off, Rules: []degrade.Rule{{
		When: []degrade.Condition{{Attr: "platform", Op: "not_in", Values: []string{"android"}}}, Enabled: true,
	}}}, ops)
	for platform, want := range map[string]bool{"android": false, "ios": true, "": true} {
		ctx := degrade.WithAttributes(ctx, degrade.Attributes{Platform: platform})
		if got := sb.Enabled(ctx, "animations"); got != want {
			t.Errorf("platform %q: %v, want %v", platform, got, want)
		}
	}
}

func TestPercentageIsStablePerUser(t *testing.T) {
	sb := newBoard(t)
	ctx := context.Background()
	const users = 20000
	onAt := func(p float64) map[int]bool {
		if err := sb.Set(ctx, "recommendations", degrade.State{Mode: degrade.Percent, Percent: p}, ops); err != nil {
			t.Fatal(err)
		}
		on := make(map[int]bool)
		for i := range users {
			if sb.Enabled(user(fmt.Sprint("user-", i)), "recommendations") {
				on[i] = true
			}
		}
		return on
	}
	prev := map[int]bool{}
	for _, p := range []float64{0, 10, 30, 50, 100} {
		on := onAt(p)
		share := float64(len(on)) / users * 100
		if share < p-1.5 || share > p+1.5 {
			t.Errorf("at %v%%: %.2f%% of users on", p, share)
		}
		for u := range prev {
			if !on[u] {
				t.Fatalf("user %d was on at a lower percentage and is off at %v%%", u, p)
			}
		}
		prev = on
	}
	// Without a user id there is nobody to place: off, short of 100%.
	_ = sb.Set(ctx, "recommendations", degrade.State{Mode: degrade.Percent, Percent: 99}, ops)
	if sb.Enabled(ctx, "recommendations") {
		t.Error("percentage feature on for a request without a user")
	}
	// Another feature places users independently.
	_ = sb.Set(ctx, "animations", degrade.State{Mode: degrade.Percent, Percent: 50}, ops)
	_ = sb.Set(ctx, "recommendations", degrade.State{Mode: degrade.Percent, Percent: 50}, ops)
	same := 0
	for i := range 2000 {
		c := user(fmt.Sprint("user-", i))
		if sb.Enabled(c, "animations") == sb.Enabled(c, "recommendations") {
			same++
		}
	}
	if same < 800 || same > 1200 {
		t.Errorf("two 50%% features agree for %d of 2000 users: not independent", same)
	}
}

func TestShedAndRestore(t *testing.T) {
	sb := newBoard(t)
	ctx := context.Background()
	// An operator keeps map navigation on by hand during the sale.
	_ = sb.Set(ctx, "map-navigation", degrade.State{Mode: degrade.On}, ops)
	if err := sb.Shed(ctx, degrade.Important, degrade.Change{By: "bob", Reason: "大促模式"}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"checkout": true, "map-navigation": true, "recommendations": false, "animations": false} {
		if got := sb.Enabled(ctx, name); got != want {
			t.Errorf("shed important: Enabled(%s) = %v, want %v", name, got, want)
		}
	}
	if st, _ := sb.Status("animations"); st.Source != degrade.SourceShed {
		t.Errorf("source %q, want shed", st.Source)
	}
	if sb.Shedding() != degrade.Important {
		t.Errorf("Shedding = %v", sb.Shedding())
	}
	if err := sb.Shed(ctx, degrade.Core, ops); !errors.Is(err, degrade.ErrInvalidConfig) {
		t.Errorf("shedding core: %v", err)
	}
	if err := sb.Restore(ctx, ops); err != nil {
		t.Fatal(err)
	}
	if !sb.Enabled(ctx, "animations") || sb.Shedding() != 0 {
		t.Error("still shed after Restore")
	}
}

func TestAuditTrail(t *testing.T) {
	sb := newBoard(t, degrade.WithStore(degrade.NewMemoryStore(3)))
	ctx := context.Background()
	_ = sb.Set(ctx, "recommendations", degrade.State{Mode: degrade.Off}, degrade.Change{By: "alice", Reason: "reviews DB down"})
	_ = sb.Set(ctx, "recommendations", degrade.State{Mode: degrade.Percent, Percent: 20}, degrade.Change{By: "bob", Reason: "ramping up"})
	_ = sb.Shed(ctx, degrade.Optional, degrade.Change{By: "carol", Reason: "noon sale"})
	_ = sb.Unpin(ctx, "recommendations", degrade.Change{By: "dave", Reason: "recovered"})
	got, err := sb.Audit(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("%d entries, want the newest 3", len(got))
	}
	if got[0].By != "dave" || got[0].Action != "unpin" || got[0].After != nil || got[2].By != "bob" {
		t.Fatalf("order or content: %+v", got)
	}
	var before, after degrade.Manual
	_ = json.Unmarshal(got[2].Before, &before)
	_ = json.Unmarshal(got[2].After, &after)
	if before.State.Mode != degrade.Off || after.State.Mode != degrade.Percent || after.State.Percent != 20 ||
		got[2].Reason != "ramping up" || got[2].Feature != "recommendations" || got[2].At.IsZero() {
		t.Fatalf("entry: %+v (before %+v, after %+v)", got[2], before, after)
	}
}

func TestSubscribe(t *testing.T) {
	sb := newBoard(t)
	var (
		mu     sync.Mutex
		events []degrade.Event
	)
	got := make(chan struct{}, 10)
	stop := sb.Subscribe(func(e degrade.Event) {
		// A listener may call back into the switchboard: no lock is held.
		_, _ = sb.Status(e.Feature)
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
		got <- struct{}{}
	})
	ctx := context.Background()
	_ = sb.Set(ctx, "animations", degrade.State{Mode: degrade.Off}, ops)
	<-got
	stop()
	_ = sb.Set(ctx, "animations", degrade.State{Mode: degrade.On}, ops)
	time.Sleep(20 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 1 || events[0].Feature != "animations" || events[0].Before.State.Mode != degrade.On ||
		events[0].After.State.Mode != degrade.Off || events[0].After.Source != degrade.SourceManual {
		t.Fatalf("events %+v", events)
	}
}

func TestUnknownFeature(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	sb := newBoard(t, degrade.WithMeterProvider(mp))
	ctx := context.Background()
	for range 3 {
		if !sb.Enabled(ctx, "recomendations") || sb.Check(ctx, "recomendations") != nil {
			t.Fatal("an unknown feature is not on")
		}
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	var unknown int64 = -1
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == "bulwark.degrade.unknown" {
				unknown = m.Data.(metricdata.Sum[int64]).DataPoints[0].Value
			}
		}
	}
	if unknown != 1 {
		t.Fatalf("unknown counted %d times, want once", unknown)
	}
	if err := sb.Set(ctx, "recomendations", degrade.State{Mode: degrade.Off}, ops); !errors.Is(err, degrade.ErrUnknownFeature) {
		t.Fatalf("Set of an unknown feature: %v", err)
	}
	if _, err := sb.Status("nope"); !errors.Is(err, degrade.ErrUnknownFeature) {
		t.Fatalf("Status of an unknown feature: %v", err)
	}
}

func TestValidation(t *testing.T) {
	bad := []struct {
		name     string
		features []degrade.Feature
		opts     []degrade.Option
		field    string
	}{
		{"empty name", []degrade.Feature{{Level: degrade.Core}}, nil, "Name"},
		{"no level", []degrade.Feature{{Name: "a"}}, nil, "Level"},
		{"twice", []degrade.Feature{{Name: "a", Level: degrade.Core}, {Name: "a", Level: degrade.Core}}, nil, "given twice"},
		{"refresh", shopFeatures, []degrade.Option{degrade.WithRefresh(time.Millisecond)}, "WithRefresh"},
		{"trigger feature", shopFeatures, []degrade.Option{degrade.WithTrigger(degrade.Trigger{
			Name: "t", Signal: degrade.SignalFunc(func() float64 { return 0 }), Above: 1, Off: []string{"nope"}})}, "unknown feature"},
		{"trigger hysteresis", shopFeatures, []degrade.Option{degrade.WithTrigger(degrade.Trigger{
			Name: "t", Signal: degrade.SignalFunc(func() float64 { return 0 }), Above: 1, Below: 2, Off: []string{"animations"}})}, "Below"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			_, err := degrade.New(c.features, c.opts...)
			if !errors.Is(err, degrade.ErrInvalidConfig) || !strings.Contains(err.Error(), c.field) {
				t.Fatalf("got %v, want ErrInvalidConfig naming %s", err, c.field)
			}
		})
	}
	sb := newBoard(t)
	ctx := context.Background()
	for _, st := range []degrade.State{
		{Mode: "maybe"},
		{Mode: degrade.Percent, Percent: 150},
		{Mode: degrade.On, Rules: []degrade.Rule{{}}},
		{Mode: degrade.On, Rules: []degrade.Rule{{When: []degrade.Condition{{Attr: "app_version", Op: "lt", Values: []string{"x.y"}}}}}},
		{Mode: degrade.On, Rules: []degrade.Rule{{When: []degrade.Condition{{Attr: "model", Op: "like", Values: []string{"a"}}}}}},
	} {
		if err := sb.Set(ctx, "animations", st, ops); !errors.Is(err, degrade.ErrInvalidConfig) {
			t.Errorf("Set(%+v): %v, want ErrInvalidConfig", st, err)
		}
	}
}

func TestClose(t *testing.T) {
	sb, err := degrade.New(shopFeatures)
	if err != nil {
		t.Fatal(err)
	}
	_ = sb.Set(context.Background(), "animations", degrade.State{Mode: degrade.Off}, ops)
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sb.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if sb.Enabled(context.Background(), "animations") {
		t.Error("a closed switchboard forgot its state")
	}
	if err := sb.Set(context.Background(), "animations", degrade.State{Mode: degrade.On}, ops); !errors.Is(err, degrade.ErrClosed) {
		t.Errorf("Set after Close: %v", err)
	}
}

func TestEnabledAllocatesNothing(t *testing.T) {
	if israce.Enabled {
		t.Skip("the race detector allocates")
	}
	sb := newBoard(t)
	ctx := context.Background()
	_ = sb.Set(ctx, "recommendations", degrade.State{Mode: degrade.Percent, Percent: 40}, ops)
	_ = sb.Set(ctx, "map-navigation", degrade.State{Mode: degrade.On, Rules: []degrade.Rule{{
		When: []degrade.Condition{{Attr: "app_version", Op: "lt", Values: []string{"2.3.0"}}}}}}, ops)
	_ = sb.Set(ctx, "animations", degrade.State{Mode: degrade.Off}, ops)
	rctx := degrade.WithAttributes(ctx, degrade.Attributes{UserID: "u-1", AppVersion: "2.2.0", Locale: "zh-CN"})
	n := testing.AllocsPerRun(1000, func() {
		sb.Enabled(rctx, "checkout")
		sb.Enabled(rctx, "recommendations")
		sb.Enabled(rctx, "map-navigation")
		_ = sb.Check(rctx, "animations")
	})
	if n != 0 {
		t.Fatalf("%v allocations per check", n)
	}
}

func TestGuard(t *testing.T) {
	sb := newBoard(t)
	ctx := context.Background()
	h := degrade.WithRequestAttributes(degrade.HeaderAttributes)(
		degrade.Guard(sb, "recommendations", 30*time.Second)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a, _ := degrade.AttributesFrom(r.Context())
			fmt.Fprint(w, "recommended for ", a.UserID)
		})))
	req := func() *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", "/recs", nil)
		r.Header.Set("X-User-Id", "u-7")
		r.Header.Set("Accept-Language", "en-US,en;q=0.8")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		return rec
	}
	if rec := req(); rec.Code != 200 || rec.Body.String() != "recommended for u-7" {
		t.Fatalf("on: %d %q", rec.Code, rec.Body)
	}
	_ = sb.Set(ctx, "recommendations", degrade.State{Mode: degrade.Off}, ops)
	rec := req()
	var body struct{ Error, Feature, Message string }
	_ = json.Unmarshal(rec.Body.Bytes(), &body)
	if rec.Code != 503 || rec.Header().Get("Retry-After") != "30" || body.Error != "degraded" ||
		body.Feature != "recommendations" || body.Message != "Recommendations are unavailable for now." {
		t.Fatalf("off: %d %v %q", rec.Code, rec.Header(), rec.Body)
	}
}

func TestSwitch(t *testing.T) {
	sb := newBoard(t)
	ctx := context.Background()
	recs := sb.Switch("recommendations")
	if recs.Name() != "recommendations" || !recs.Enabled(ctx) || recs.Check(ctx) != nil {
		t.Fatal("a new switch is not on")
	}
	_ = sb.Set(ctx, "recommendations", degrade.State{Mode: degrade.Off}, ops)
	if recs.Enabled(ctx) || !errors.Is(recs.Check(ctx), degrade.ErrDegraded) {
		t.Fatal("the switch did not follow the change")
	}
	if !sb.Switch("no-such-feature").Enabled(ctx) {
		t.Fatal("an unknown switch is not on")
	}
}
