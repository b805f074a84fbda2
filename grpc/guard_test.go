package bulwarkgrpc_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/degrade"
	bulwarkgrpc "github.com/bulwarkgo/bulwark/grpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
)

func newSwitchboard(t testing.TB) *degrade.Switchboard {
	t.Helper()
	sb, err := degrade.New([]degrade.Feature{
		{Name: "checkout", Level: degrade.Core},
		{Name: "recommendations", Level: degrade.Optional, Messages: map[string]string{
			"zh": "推荐暂时不可用",
			"en": "Recommendations are unavailable.",
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Close() })
	return sb
}

// attributesEcho answers with the attributes the handler sees and whether
// recommendations are on for them.
func attributesEcho(sb *degrade.Switchboard) func(context.Context, string) (string, error) {
	return func(ctx context.Context, _ string) (string, error) {
		a, _ := degrade.AttributesFrom(ctx)
		on := "off"
		if sb.Enabled(ctx, "recommendations") {
			on = "on"
		}
		return strings.Join([]string{a.Platform, a.Model, a.AppVersion, a.Region, a.UserID, a.Locale, on}, "|"), nil
	}
}

func TestGuardDegradesByAttributesFromTheClient(t *testing.T) {
	sb := newSwitchboard(t)
	ctx := ctxTimeout(t, 10*time.Second)
	// Off for phone model X1 before app version 2.3.0.
	err := sb.Set(ctx, "recommendations", degrade.State{Mode: degrade.On, Rules: []degrade.Rule{{
		When: []degrade.Condition{
			{Attr: "model", Op: "in", Values: []string{"X1"}},
			{Attr: "app_version", Op: "lt", Values: []string{"2.3.0"}},
		},
		Enabled: false,
	}}}, degrade.Change{By: "test", Reason: "X1 crashes on the carousel"})
	if err != nil {
		t.Fatal(err)
	}
	guard, err := bulwarkgrpc.NewGuard(sb, map[string]string{methodCall: "recommendations", methodChat: "recommendations"})
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{call: attributesEcho(sb)}
	cc := serve(t, s,
		[]grpc.ServerOption{
			grpc.ChainUnaryInterceptor(bulwarkgrpc.UnaryServerAttributes(nil), guard.Unary()),
			grpc.ChainStreamInterceptor(bulwarkgrpc.StreamServerAttributes(nil), guard.Stream()),
		},
		grpc.WithChainUnaryInterceptor(bulwarkgrpc.UnaryClientAttributes()),
		grpc.WithChainStreamInterceptor(bulwarkgrpc.StreamClientAttributes()))

	oldX1 := degrade.WithAttributes(ctx, degrade.Attributes{
		Platform: "android", Model: "X1", AppVersion: "2.2.9", Region: "cn-shanghai", UserID: "u42", Locale: "zh-CN",
	})
	var trailer metadata.MD
	_, err = call(oldX1, cc, "hi", grpc.Trailer(&trailer))
	st := wantCode(t, err, codes.Unavailable)
	if st.Message() != "推荐暂时不可用" {
		t.Errorf("message %q, want the feature's zh message", st.Message())
	}
	info, retry, _ := details(t, st)
	if info.GetReason() != bulwarkgrpc.ReasonDegraded || info.GetDomain() != bulwarkgrpc.ErrorDomain ||
		info.GetMetadata()["feature"] != "recommendations" || info.GetMetadata()["level"] != "optional" {
		t.Errorf("ErrorInfo %v", info)
	}
	if retry != nil {
		t.Errorf("RetryInfo %v, want none", retry)
	}
	if got := trailer.Get("grpc-retry-pushback-ms"); len(got) != 1 || got[0] != "-1" {
		t.Errorf("pushback trailer %q, want -1 (do not retry)", got)
	}
	if n := s.calls.Load(); n != 0 {
		t.Errorf("handler called %d times, want 0", n)
	}

	_, err = chat(oldX1, cc, "hi")
	wantCode(t, err, codes.Unavailable)

	newX1 := degrade.WithAttributes(ctx, degrade.Attributes{
		Platform: "android", Model: "X1", AppVersion: "2.3.1", Region: "cn-shanghai", UserID: "u42", Locale: "en-US",
	})
	got, err := call(newX1, cc, "hi")
	if err != nil {
		t.Fatal(err)
	}
	if want := "android|X1|2.3.1|cn-shanghai|u42|en-US|on"; got != want {
		t.Errorf("the handler saw %q, want %q", got, want)
	}
	cs, err := chat(newX1, cc, "hi")
	if err != nil {
		t.Fatal(err)
	}
	closeChat(t, cs)

	// Shedding the level turns it off for everyone, in their language,
	// once the operator's own setting is unpinned.
	if err := sb.Unpin(ctx, "recommendations", degrade.Change{By: "test", Reason: "fixed"}); err != nil {
		t.Fatal(err)
	}
	if err := sb.Shed(ctx, degrade.Optional, degrade.Change{By: "test", Reason: "大促模式"}); err != nil {
		t.Fatal(err)
	}
	_, err = call(newX1, cc, "hi")
	if st := wantCode(t, err, codes.Unavailable); st.Message() != "Recommendations are unavailable." {
		t.Errorf("message %q, want the feature's en message", st.Message())
	}
}

func TestGuardServiceEntry(t *testing.T) {
	sb := newSwitchboard(t)
	ctx := ctxTimeout(t, 10*time.Second)
	guard, err := bulwarkgrpc.NewGuard(sb, map[string]string{
		"/bulwark.test.Echo/": "recommendations",
		methodCall:            "checkout", // the method's own entry wins
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.Shed(ctx, degrade.Important, degrade.Change{By: "test", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	cc := serve(t, &echoServer{}, []grpc.ServerOption{
		grpc.UnaryInterceptor(guard.Unary()), grpc.StreamInterceptor(guard.Stream()),
	})
	if _, err := call(ctx, cc, "hi"); err != nil {
		t.Errorf("Call, guarded by checkout (core, never shed): %v", err)
	}
	_, err = chat(ctx, cc, "hi")
	wantCode(t, err, codes.Unavailable)
}

func TestIncomingAttributes(t *testing.T) {
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(
		"X-Platform", "ios", "x-device-model", "iPhone15,2", "x-app-version", "3.1.0",
		"x-region", "cn-beijing", "x-user-id", "u1", "accept-language", " zh-CN,zh;q=0.9,en;q=0.8",
	))
	got := bulwarkgrpc.IncomingAttributes(ctx)
	want := degrade.Attributes{Platform: "ios", Model: "iPhone15,2", AppVersion: "3.1.0", Region: "cn-beijing", UserID: "u1", Locale: "zh-CN"}
	if got.Platform != want.Platform || got.Model != want.Model || got.AppVersion != want.AppVersion ||
		got.Region != want.Region || got.UserID != want.UserID || got.Locale != want.Locale || got.Custom != nil {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if got := bulwarkgrpc.IncomingAttributes(context.Background()); got.Platform != "" || got.Locale != "" {
		t.Errorf("without metadata: %+v", got)
	}
}

func TestServerAttributesFromYourOwnFunction(t *testing.T) {
	from := func(ctx context.Context) degrade.Attributes {
		a := bulwarkgrpc.IncomingAttributes(ctx)
		a.UserID = "authenticated-user" // never the client's claim
		return a
	}
	s := &echoServer{call: attributesEcho(newSwitchboard(t))}
	cc := serve(t, s, []grpc.ServerOption{grpc.UnaryInterceptor(bulwarkgrpc.UnaryServerAttributes(from))})
	ctx := metadata.AppendToOutgoingContext(ctxTimeout(t, 5*time.Second), "x-user-id", "forged", "x-platform", "web")
	got, err := call(ctx, cc, "hi")
	if err != nil {
		t.Fatal(err)
	}
	if want := "web||||authenticated-user||on"; got != want {
		t.Errorf("the handler saw %q, want %q", got, want)
	}
}

func TestNewGuardValidates(t *testing.T) {
	sb := newSwitchboard(t)
	for _, tc := range []struct {
		name     string
		sb       *degrade.Switchboard
		features map[string]string
		mention  string
	}{
		{"nil switchboard", nil, map[string]string{methodCall: "checkout"}, "sb"},
		{"no features", sb, nil, "features"},
		{"unknown feature", sb, map[string]string{methodCall: "reviews"}, `"reviews"`},
		{"no leading slash", sb, map[string]string{"bulwark.test.Echo/Call": "checkout"}, "bulwark.test.Echo/Call"},
		{"no method", sb, map[string]string{"/bulwark.test.Echo": "checkout"}, "/bulwark.test.Echo"},
		{"empty", sb, map[string]string{"": "checkout"}, `features[""]`},
	} {
		_, err := bulwarkgrpc.NewGuard(tc.sb, tc.features)
		if !errors.Is(err, bulwarkgrpc.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: got %v, want ErrInvalidConfig naming %s", tc.name, err, tc.mention)
		}
	}
}
