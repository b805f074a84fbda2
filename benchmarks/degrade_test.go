package benchmarks

import (
	"context"
	"testing"

	"github.com/open-feature/go-sdk/openfeature"
	"github.com/open-feature/go-sdk/openfeature/memprovider"

	"github.com/bulwarkgo/bulwark/degrade"
)

// featureCheck is one library's answer to "is this feature on for this
// request?", for a request whose attributes were put in ctx once, as
// middleware does.
type featureCheck func(ctx context.Context) bool

// featureLib builds one library's switch for a scenario and returns the
// check and the per-request context it reads.
type featureLib struct {
	name  string
	build func(b *testing.B, sc featureScenario) (featureCheck, context.Context)
}

// featureScenario is a feature and the answer the benchmark request must
// get: a plain flag that is on, or a flag off for one device model below
// app version 2.3.0 (the request matches, so it is off).
type featureScenario struct {
	name      string
	targeting bool
	want      bool
}

var featureScenarios = []featureScenario{
	{name: "plain", want: true},
	{name: "targeting", targeting: true, want: false},
}

// featureRequest is the benchmark request's attributes.
var featureRequest = struct{ user, platform, model, version string }{
	"u-1234567", "android", "HUAWEI-P30", "2.2.1",
}

// featureFillers is how many other flags each library holds, so a lookup
// by name is a realistic one in a map of 32.
const featureFillers = 30

var featureLibs = []featureLib{
	{"bulwark", func(b *testing.B, sc featureScenario) (featureCheck, context.Context) {
		sb, ctx := bulwarkBoard(b)
		name := sc.name
		return func(ctx context.Context) bool { return sb.Enabled(ctx, name) }, ctx
	}},
	{"bulwark-switch", func(b *testing.B, sc featureScenario) (featureCheck, context.Context) {
		// The same, through a Switch found once at start-up.
		sb, ctx := bulwarkBoard(b)
		sw := sb.Switch(sc.name)
		return func(ctx context.Context) bool { return sw.Enabled(ctx) }, ctx
	}},
	{"openfeature", func(b *testing.B, sc featureScenario) (featureCheck, context.Context) {
		variants := func() map[string]any { return map[string]any{"on": true, "off": false} }
		// The targeting rule as an in-memory provider takes it: a Go
		// function over the flattened evaluation context, written as
		// cheaply as it can be (no allocation, no parsing library).
		rule := memprovider.ContextEvaluator(new(func(_ memprovider.InMemoryFlag, fc openfeature.FlattenedContext) (any, openfeature.ProviderResolutionDetail) {
			model, _ := fc["model"].(string)
			version, _ := fc["app_version"].(string)
			if (model == "HUAWEI-P30" || model == "HUAWEI-P40") && versionBefore(version, 2, 3, 0) {
				return false, openfeature.ProviderResolutionDetail{Reason: openfeature.TargetingMatchReason, Variant: "off"}
			}
			return true, openfeature.ProviderResolutionDetail{Reason: openfeature.DefaultReason, Variant: "on"}
		}))
		flags := map[string]memprovider.InMemoryFlag{
			"plain":     {Key: "plain", State: memprovider.Enabled, DefaultVariant: "on", Variants: variants()},
			"targeting": {Key: "targeting", State: memprovider.Enabled, DefaultVariant: "on", Variants: variants(), ContextEvaluator: rule},
		}
		for i := range featureFillers {
			n := fillerName(i)
			flags[n] = memprovider.InMemoryFlag{Key: n, State: memprovider.Enabled, DefaultVariant: "on", Variants: variants()}
		}
		if err := openfeature.SetProviderAndWait(memprovider.NewInMemoryProvider(flags)); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(openfeature.Shutdown)
		client := openfeature.NewDefaultClient()
		// The per-request attributes go in the transaction context, once,
		// as Bulwark's go in the context with WithAttributes.
		ctx := openfeature.WithTransactionContext(context.Background(),
			openfeature.NewEvaluationContext(featureRequest.user, map[string]any{
				"platform": featureRequest.platform, "model": featureRequest.model,
				"app_version": featureRequest.version,
			}))
		name := sc.name
		none := openfeature.EvaluationContext{}
		return func(ctx context.Context) bool { return client.Boolean(ctx, name, !sc.want, none) }, ctx
	}},
}

// bulwarkBoard is the switchboard of both Bulwark entries, with the
// request's attributes in a context.
func bulwarkBoard(b *testing.B) (*degrade.Switchboard, context.Context) {
	fs := []degrade.Feature{
		{Name: "plain", Level: degrade.Optional},
		{Name: "targeting", Level: degrade.Important},
	}
	for i := range featureFillers {
		fs = append(fs, degrade.Feature{Name: fillerName(i), Level: degrade.Optional})
	}
	sb, err := degrade.New(fs)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sb.Close() })
	if err := sb.Set(context.Background(), "targeting", degrade.State{Mode: degrade.On, Rules: []degrade.Rule{{
		When: []degrade.Condition{
			{Attr: "model", Op: "in", Values: []string{"HUAWEI-P30", "HUAWEI-P40"}},
			{Attr: "app_version", Op: "lt", Values: []string{"2.3.0"}},
		},
	}}}, degrade.Change{By: "bench"}); err != nil {
		b.Fatal(err)
	}
	ctx := degrade.WithAttributes(context.Background(), degrade.Attributes{
		UserID: featureRequest.user, Platform: featureRequest.platform,
		Model: featureRequest.model, AppVersion: featureRequest.version,
	})
	return sb, ctx
}

func fillerName(i int) string { return "filler-" + string(rune('a'+i/26)) + string(rune('a'+i%26)) }

// versionBefore reports whether the dotted version v is before
// major.minor.patch; an unparsable version is not.
func versionBefore(v string, want ...int) bool {
	if v == "" {
		return false
	}
	part := 0
	for _, w := range want {
		n, digits := 0, 0
		for part < len(v) && v[part] >= '0' && v[part] <= '9' {
			n = n*10 + int(v[part]-'0')
			part++
			digits++
		}
		if digits == 0 && part < len(v) {
			return false
		}
		if n != w {
			return n < w
		}
		if part < len(v) && v[part] == '.' {
			part++
		}
	}
	return false
}

// BenchmarkFeatureEnabled measures one feature decision for a request
// whose attributes are already in its context: Bulwark's Enabled against
// the OpenFeature Go SDK's Boolean evaluation with its in-memory provider.
func BenchmarkFeatureEnabled(b *testing.B) {
	for _, sc := range featureScenarios {
		b.Run("scenario="+sc.name, func(b *testing.B) {
			for _, lib := range featureLibs {
				b.Run("lib="+lib.name, func(b *testing.B) {
					benchFeature(b, lib, sc)
				})
			}
		})
	}
}

func benchFeature(b *testing.B, lib featureLib, sc featureScenario) {
	b.Run("mode=serial", func(b *testing.B) {
		check, ctx := lib.build(b, sc)
		if got := check(ctx); got != sc.want {
			b.Fatalf("%s answers %v for %s, want %v", lib.name, got, sc.name, sc.want)
		}
		var t tally
		var got counts
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			got.note(check(ctx) == sc.want, nil)
		}
		b.StopTimer()
		t.add(got)
		t.check(b, "the expected answer")
	})
	b.Run("mode=parallel", func(b *testing.B) {
		check, ctx := lib.build(b, sc)
		if got := check(ctx); got != sc.want {
			b.Fatalf("%s answers %v for %s, want %v", lib.name, got, sc.name, sc.want)
		}
		var t tally
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			var got counts
			for pb.Next() {
				got.note(check(ctx) == sc.want, nil)
			}
			t.add(got)
		})
		b.StopTimer()
		t.check(b, "the expected answer")
	})
}

func TestVersionBefore(t *testing.T) {
	for v, want := range map[string]bool{
		"2.2.1": true, "2.2": true, "1.9.9": true, "2.3.0": false, "2.3": false,
		"2.10.0": false, "10.0.0": false, "x": false, "": false,
	} {
		if got := versionBefore(v, 2, 3, 0); got != want {
			t.Errorf("versionBefore(%q, 2.3.0) = %v, want %v", v, got, want)
		}
	}
}
