package openfeature_test

import (
	"context"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/degrade"
	bof "github.com/bulwarkgo/bulwark/degrade/openfeature"
	"github.com/bulwarkgo/bulwark/internal/redistest"
	of "github.com/open-feature/go-sdk/openfeature"
	"github.com/open-feature/go-sdk/openfeature/isolated"
)

func TestMain(m *testing.M) { redistest.Main(m) }

var features = []degrade.Feature{
	{Name: "recommendations", Level: degrade.Optional,
		Messages: map[string]string{"": "Recommendations are resting.", "zh": "推荐暂停"}},
	{Name: "reviews", Level: degrade.Important},
	{Name: "checkout", Level: degrade.Core},
}

// setup returns a switchboard, and an OpenFeature client whose provider
// answers from it, on an API of the test's own.
func setup(t *testing.T, opts ...degrade.Option) (*degrade.Switchboard, *of.Client, *of.EvaluationAPI) {
	t.Helper()
	sb, err := degrade.New(features, opts...)
	if err != nil {
		t.Fatal(err)
	}
	api := isolated.NewAPI()
	p := bof.NewProvider(sb, bof.WithHealthInterval(20*time.Millisecond))
	if err := api.SetProviderAndWait(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = api.Shutdown(context.Background())
		_ = sb.Close()
	})
	return sb, api.NewClient(), api
}

var change = degrade.Change{By: "test", Reason: "test"}

func TestBooleanEvaluation(t *testing.T) {
	sb, client, _ := setup(t)
	ctx := t.Context()
	user := of.NewEvaluationContext("user-42", map[string]any{"platform": "ios", "appVersion": "3.2.0", "locale": "zh-CN"})

	d, err := client.BooleanValueDetails(ctx, "recommendations", false, user)
	if err != nil || !d.Value || d.Variant != "on" || d.Reason != of.StaticReason {
		t.Fatalf("default state: %+v, %v", d, err)
	}
	if lvl, _ := d.FlagMetadata.GetString("level"); lvl != "optional" {
		t.Fatalf("level %q", lvl)
	}
	if src, _ := d.FlagMetadata.GetString("source"); src != "default" {
		t.Fatalf("source %q", src)
	}

	// Off for iOS below 3.3, by a rule: the message in the user's locale.
	st := degrade.State{Mode: degrade.On, Rules: []degrade.Rule{{
		When:    []degrade.Condition{{Attr: "platform", Op: "in", Values: []string{"ios"}}, {Attr: "app_version", Op: "lt", Values: []string{"3.3.0"}}},
		Enabled: false,
	}}}
	if err := sb.Set(ctx, "recommendations", st, change); err != nil {
		t.Fatal(err)
	}
	d, _ = client.BooleanValueDetails(ctx, "recommendations", true, user)
	if d.Value || d.Variant != "off" || d.Reason != of.TargetingMatchReason {
		t.Fatalf("rule for iOS 3.2: %+v", d)
	}
	if msg, _ := d.FlagMetadata.GetString("message"); msg != "推荐暂停" {
		t.Fatalf("message %q", msg)
	}
	android := of.NewEvaluationContext("user-42", map[string]any{"platform": "android", "app_version": "3.2.0"})
	if on, _ := client.BooleanValue(ctx, "recommendations", false, android); !on {
		t.Fatal("the rule turned Android off")
	}

	// A percentage rollout: each user's answer is the switchboard's.
	if err := sb.Set(ctx, "reviews", degrade.State{Mode: degrade.Percent, Percent: 30}, change); err != nil {
		t.Fatal(err)
	}
	on := 0
	for i := range 200 {
		id := "u" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		d, _ := client.BooleanValueDetails(ctx, "reviews", false, of.NewEvaluationContext(id, nil))
		want := sb.Enabled(degrade.WithAttributes(ctx, degrade.Attributes{UserID: id}), "reviews")
		if d.Value != want || d.Reason != of.SplitReason {
			t.Fatalf("%s: %+v, the switchboard says %v", id, d, want)
		}
		if d.Value {
			on++
		}
	}
	if on < 30 || on > 90 {
		t.Fatalf("%d of 200 users in a 30%% rollout", on)
	}

	// Shedding: disabled, source shed; core is never shed.
	if err := sb.Set(ctx, "reviews", degrade.State{Mode: degrade.On}, change); err != nil {
		t.Fatal(err)
	}
	if err := sb.Unpin(ctx, "reviews", change); err != nil {
		t.Fatal(err)
	}
	if err := sb.Shed(ctx, degrade.Important, change); err != nil {
		t.Fatal(err)
	}
	d, _ = client.BooleanValueDetails(ctx, "reviews", true, user)
	if d.Value || d.Reason != of.DisabledReason {
		t.Fatalf("shed: %+v", d)
	}
	if src, _ := d.FlagMetadata.GetString("source"); src != "shed" {
		t.Fatalf("source of a shed feature %q", src)
	}
	if on, _ := client.BooleanValue(ctx, "checkout", false, user); !on {
		t.Fatal("core feature shed")
	}
}

func TestUnknownFlagsAndOtherTypes(t *testing.T) {
	_, client, _ := setup(t)
	ctx := t.Context()
	d, err := client.BooleanValueDetails(ctx, "no-such-feature", true, of.EvaluationContext{})
	if err == nil || !d.Value || d.ErrorCode != of.FlagNotFoundCode {
		t.Fatalf("unknown flag: %+v, %v", d, err)
	}
	s, err := client.StringValueDetails(ctx, "recommendations", "dflt", of.EvaluationContext{})
	if err == nil || s.Value != "dflt" || s.ErrorCode != of.TypeMismatchCode {
		t.Fatalf("string evaluation: %+v, %v", s, err)
	}
	n, err := client.IntValueDetails(ctx, "recommendations", 7, of.EvaluationContext{})
	if err == nil || n.Value != 7 || n.ErrorCode != of.TypeMismatchCode {
		t.Fatalf("int evaluation: %+v, %v", n, err)
	}
	if m := client.Metadata(); m.Domain() != "" {
		t.Fatalf("client metadata %+v", m)
	}
}

func TestAttributes(t *testing.T) {
	a := bof.Attributes(of.FlattenedContext{
		of.TargetingKey: "u1", "platform": "wechat-miniprogram", "model": "iPhone15", "appVersion": "3.2.0",
		"region": "cn-shanghai", "locale": "zh", "tier": "gold", "age": 30,
	})
	want := degrade.Attributes{UserID: "u1", Platform: "wechat-miniprogram", Model: "iPhone15", AppVersion: "3.2.0",
		Region: "cn-shanghai", Locale: "zh", Custom: map[string]string{"tier": "gold"}}
	if a.UserID != want.UserID || a.Platform != want.Platform || a.Model != want.Model || a.AppVersion != want.AppVersion ||
		a.Region != want.Region || a.Locale != want.Locale || len(a.Custom) != 1 || a.Custom["tier"] != "gold" {
		t.Fatalf("attributes %+v", a)
	}
}

// events collects the provider events the API delivers.
func events(t *testing.T, api *of.EvaluationAPI, types ...of.EventType) <-chan of.EventDetails {
	ch := make(chan of.EventDetails, 100)
	for _, typ := range types {
		cb := func(d of.EventDetails) {
			d.EventMetadata = map[string]any{"type": string(typ)}
			select {
			case ch <- d:
			default:
			}
		}
		api.AddHandler(typ, &cb)
	}
	return ch
}

func waitEvent(t *testing.T, ch <-chan of.EventDetails, typ of.EventType, check func(of.EventDetails) bool) of.EventDetails {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case d := <-ch:
			if d.EventMetadata["type"] == string(typ) && (check == nil || check(d)) {
				return d
			}
		case <-deadline:
			t.Fatalf("no %s event", typ)
		}
	}
}

func TestConfigurationChangedEvents(t *testing.T) {
	sb, _, api := setup(t)
	ch := events(t, api, of.ProviderConfigChange)
	if err := sb.Set(t.Context(), "reviews", degrade.State{Mode: degrade.Off}, change); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, ch, of.ProviderConfigChange, func(d of.EventDetails) bool {
		return len(d.FlagChanges) == 1 && d.FlagChanges[0] == "reviews"
	})
}

func TestStaleWhileTheRedisStoreIsDown(t *testing.T) {
	// The switchboard keeps answering from the last state it read while
	// its Redis is down; the provider says so with PROVIDER_STALE, and
	// PROVIDER_READY once the store is read again. A change made on
	// another instance then arrives as a configuration change.
	srv := redistest.StartServer(t)
	prefix := redistest.Prefix(t)
	store := func() degrade.Store {
		st, err := degrade.NewRedisStore(redistest.NewClient(t, srv.Addr), degrade.WithRedisPrefix(prefix))
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	sb, client, api := setup(t, degrade.WithStore(store()), degrade.WithRefresh(100*time.Millisecond))
	ch := events(t, api, of.ProviderStale, of.ProviderReady, of.ProviderConfigChange)
	ctx := t.Context()
	if err := sb.Set(ctx, "recommendations", degrade.State{Mode: degrade.Off}, change); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, ch, of.ProviderConfigChange, nil)

	srv.Kill()
	waitEvent(t, ch, of.ProviderStale, nil)
	if on, _ := client.BooleanValue(ctx, "recommendations", true, of.EvaluationContext{}); on {
		t.Fatal("the last known state was lost while Redis is down")
	}
	srv.Start(t)
	waitEvent(t, ch, of.ProviderReady, nil)

	other, err := degrade.New(features, degrade.WithStore(store()))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Set(ctx, "recommendations", degrade.State{Mode: degrade.On}, change); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, ch, of.ProviderConfigChange, func(d of.EventDetails) bool {
		return len(d.FlagChanges) == 1 && d.FlagChanges[0] == "recommendations"
	})
	if on, _ := client.BooleanValue(ctx, "recommendations", false, of.EvaluationContext{}); !on {
		t.Fatal("the change made on another instance is not seen")
	}
}

func TestShutdownStopsTheProvider(t *testing.T) {
	sb, err := degrade.New(features)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	p := bof.NewProvider(sb)
	if err := p.InitWithContext(t.Context(), of.EvaluationContext{}); err != nil {
		t.Fatal(err)
	}
	if err := p.InitWithContext(t.Context(), of.EvaluationContext{}); err != nil {
		t.Fatal(err)
	}
	p.Shutdown()
	p.Shutdown()
	// No goroutine is left behind: TestMain's leak check fails otherwise.
}
