package bulwarkgrpc_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bulwarkgrpc "github.com/bulwarkgo/bulwark/grpc"
	"github.com/bulwarkgo/bulwark/limiter"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// recordingLimiter passes decisions through to next, or returns err, and
// keeps the last decision and key.
type recordingLimiter struct {
	next limiter.Limiter
	err  error

	mu   sync.Mutex
	last limiter.Decision
	key  string
}

func (r *recordingLimiter) Allow(ctx context.Context, key string) (limiter.Decision, error) {
	return r.AllowN(ctx, key, 1)
}

func (r *recordingLimiter) AllowN(ctx context.Context, key string, n int) (limiter.Decision, error) {
	if r.err != nil {
		return limiter.Decision{}, r.err
	}
	d, err := r.next.AllowN(ctx, key, n)
	r.mu.Lock()
	r.last, r.key = d, key
	r.mu.Unlock()
	return d, err
}

func (r *recordingLimiter) lastDecision() limiter.Decision {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

func withUser(user string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), bulwarkgrpc.MetadataUserID, user)
}

func newRateLimit(t *testing.T, l limiter.Limiter, key bulwarkgrpc.KeyFunc, opts ...bulwarkgrpc.RateLimitOption) *bulwarkgrpc.RateLimit {
	t.Helper()
	rl, err := bulwarkgrpc.NewRateLimit(l, key, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return rl
}

func TestRateLimitRefusalCarriesTheDecision(t *testing.T) {
	local, err := limiter.NewLocal(limiter.PerMinute(1, 2))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingLimiter{next: local}
	rl := newRateLimit(t, rec, bulwarkgrpc.KeyByMetadata(bulwarkgrpc.MetadataUserID),
		bulwarkgrpc.WithMessage("请求过于频繁，请稍后再试"))
	s := &echoServer{}
	cc := serve(t, s, []grpc.ServerOption{grpc.UnaryInterceptor(rl.Unary())})

	for range 2 {
		if _, err := call(withUser("u1"), cc, "hi"); err != nil {
			t.Fatal(err)
		}
	}
	var trailer metadata.MD
	_, err = call(withUser("u1"), cc, "hi", grpc.Trailer(&trailer))
	st := wantCode(t, err, codes.ResourceExhausted)
	if st.Message() != "请求过于频繁，请稍后再试" {
		t.Errorf("message %q", st.Message())
	}
	d := rec.lastDecision()
	if d.Allowed || d.RetryAfter <= 0 {
		t.Fatalf("last decision %+v, want a refusal", d)
	}
	info, retry, quota := details(t, st)
	if retry == nil || retry.GetRetryDelay().AsDuration() != d.RetryAfter {
		t.Errorf("RetryInfo %v, want the decision's RetryAfter %v", retry, d.RetryAfter)
	}
	if quota == nil || len(quota.GetViolations()) != 1 || quota.GetViolations()[0].GetSubject() != "u1" {
		t.Errorf("QuotaFailure %v, want one violation for u1", quota)
	}
	if info.GetReason() != bulwarkgrpc.ReasonRateLimited || info.GetDomain() != bulwarkgrpc.ErrorDomain {
		t.Errorf("ErrorInfo %v", info)
	}
	wantMs := (d.RetryAfter + time.Millisecond - 1) / time.Millisecond
	if got := trailer.Get("grpc-retry-pushback-ms"); len(got) != 1 || got[0] != strconv.FormatInt(int64(wantMs), 10) {
		t.Errorf("pushback trailer %q, want %d", got, wantMs)
	}
	if n := s.calls.Load(); n != 2 {
		t.Errorf("handler called %d times, want 2", n)
	}
	// Another user has a bucket of their own.
	if _, err := call(withUser("u2"), cc, "hi"); err != nil {
		t.Errorf("another user: %v", err)
	}
}

func TestRateLimitStream(t *testing.T) {
	local, err := limiter.NewLocal(limiter.PerMinute(1, 1))
	if err != nil {
		t.Fatal(err)
	}
	rl := newRateLimit(t, local, bulwarkgrpc.KeyByMethod)
	s := &echoServer{}
	cc := serve(t, s, []grpc.ServerOption{grpc.StreamInterceptor(rl.Stream())})

	cs, err := chat(ctxTimeout(t, 5*time.Second), cc, "first")
	if err != nil {
		t.Fatal(err)
	}
	closeChat(t, cs)
	_, err = chat(ctxTimeout(t, 5*time.Second), cc, "second")
	st := wantCode(t, err, codes.ResourceExhausted)
	if _, retry, _ := details(t, st); retry == nil || retry.GetRetryDelay().AsDuration() <= 0 {
		t.Errorf("RetryInfo %v", retry)
	}
	if n := s.calls.Load(); n != 1 {
		t.Errorf("handler called %d times, want 1", n)
	}
}

func TestRateLimitErrorPolicy(t *testing.T) {
	broken := &recordingLimiter{err: errors.New("backend down")}
	local, _ := limiter.NewLocal(limiter.PerSecond(100, 100))
	for _, tc := range []struct {
		name    string
		l       limiter.Limiter
		key     bulwarkgrpc.KeyFunc
		policy  limiter.ErrorPolicy
		want    codes.Code
		wantErr error
	}{
		{"limiter error, serve", broken, bulwarkgrpc.KeyByMethod, limiter.ServeOnError, codes.OK, broken.err},
		{"limiter error, reject", broken, bulwarkgrpc.KeyByMethod, limiter.RejectOnError, codes.Unavailable, broken.err},
		{"no key, serve", local, bulwarkgrpc.KeyByMetadata("x-api-key"), limiter.ServeOnError, codes.OK, limiter.ErrNoKey},
		{"no key, reject", local, bulwarkgrpc.KeyByMetadata("x-api-key"), limiter.RejectOnError, codes.Unavailable, limiter.ErrNoKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				mu     sync.Mutex
				onErrs []error
			)
			rl := newRateLimit(t, tc.l, tc.key, bulwarkgrpc.WithErrorPolicy(tc.policy),
				bulwarkgrpc.WithOnError(func(_ context.Context, method string, err error) {
					mu.Lock()
					defer mu.Unlock()
					if method != methodCall {
						t.Errorf("OnError method %q", method)
					}
					onErrs = append(onErrs, err)
				}))
			cc := serve(t, &echoServer{}, []grpc.ServerOption{grpc.UnaryInterceptor(rl.Unary())})
			_, err := call(ctxTimeout(t, 5*time.Second), cc, "hi")
			st := wantCode(t, err, tc.want)
			if tc.want == codes.Unavailable {
				if info, _, _ := details(t, st); info.GetReason() != bulwarkgrpc.ReasonLimiterUnavailable {
					t.Errorf("ErrorInfo %v", info)
				}
				if st.Message() != limiter.DefaultErrorMessage {
					t.Errorf("message %q", st.Message())
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(onErrs) != 1 || !errors.Is(onErrs[0], tc.wantErr) {
				t.Errorf("OnError got %v, want one error matching %v", onErrs, tc.wantErr)
			}
		})
	}
}

func TestRateLimitCancelledCaller(t *testing.T) {
	rl := newRateLimit(t, &recordingLimiter{err: errors.New("unused")}, bulwarkgrpc.KeyByMethod)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := rl.Unary()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: methodCall}, func(context.Context, any) (any, error) {
		t.Error("handler called for a cancelled caller")
		return nil, nil
	})
	wantCode(t, err, codes.Canceled)
}

func TestRateLimitFilter(t *testing.T) {
	local, _ := limiter.NewLocal(limiter.PerMinute(1, 1))
	rl := newRateLimit(t, local, bulwarkgrpc.KeyByMethod,
		bulwarkgrpc.WithFilter(func(m string) bool { return m != methodCall }))
	cc := serve(t, &echoServer{}, []grpc.ServerOption{grpc.UnaryInterceptor(rl.Unary())})
	for range 3 {
		if _, err := call(ctxTimeout(t, 5*time.Second), cc, "hi"); err != nil {
			t.Fatal(err)
		}
	}
}

func TestKeyByPeer(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 5000}, "192.0.2.1"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 5000}, "192.0.2.1"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 5000, Zone: "eth0"}, "2001:db8::1"},
		{&net.UDPAddr{IP: net.ParseIP("198.51.100.7"), Port: 53}, "198.51.100.7"},
		{&net.UnixAddr{Name: "/run/app.sock", Net: "unix"}, ""},
		{nil, ""},
	} {
		ctx := context.Background()
		if tc.addr != nil {
			ctx = peer.NewContext(ctx, &peer.Peer{Addr: tc.addr})
		}
		got, err := bulwarkgrpc.KeyByPeer(ctx, methodCall)
		if tc.want == "" {
			if !errors.Is(err, limiter.ErrNoKey) {
				t.Errorf("%v: got %q, %v; want ErrNoKey", tc.addr, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%v: got %q, %v; want %q", tc.addr, got, err, tc.want)
		}
	}
}

func TestKeyByMetadataAndKeyOr(t *testing.T) {
	key := bulwarkgrpc.KeyOr(bulwarkgrpc.KeyByMetadata("X-User-Id"), bulwarkgrpc.KeyByMethod)
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("x-user-id", "u9"))
	if got, err := key(ctx, methodCall); err != nil || got != "u9" {
		t.Errorf("with metadata: %q, %v", got, err)
	}
	if got, err := key(context.Background(), methodCall); err != nil || got != methodCall {
		t.Errorf("without metadata: %q, %v; want the method", got, err)
	}
	failing := bulwarkgrpc.KeyOr(func(context.Context, string) (string, error) { return "", errTest }, bulwarkgrpc.KeyByMethod)
	if _, err := failing(ctx, methodCall); !errors.Is(err, errTest) {
		t.Errorf("KeyOr replaced an error that is not ErrNoKey: %v", err)
	}
}

func TestNewRateLimitValidates(t *testing.T) {
	local, _ := limiter.NewLocal(limiter.PerSecond(1, 1))
	for _, tc := range []struct {
		name    string
		l       limiter.Limiter
		key     bulwarkgrpc.KeyFunc
		opts    []bulwarkgrpc.RateLimitOption
		mention string
	}{
		{"nil limiter", nil, bulwarkgrpc.KeyByMethod, nil, "NewRateLimit l"},
		{"nil key", local, nil, nil, "NewRateLimit key"},
		{"bad policy", local, bulwarkgrpc.KeyByMethod, []bulwarkgrpc.RateLimitOption{bulwarkgrpc.WithErrorPolicy(7)}, "WithErrorPolicy"},
		{"nil OnError", local, bulwarkgrpc.KeyByMethod, []bulwarkgrpc.RateLimitOption{bulwarkgrpc.WithOnError(nil)}, "WithOnError"},
		{"nil filter", local, bulwarkgrpc.KeyByMethod, []bulwarkgrpc.RateLimitOption{bulwarkgrpc.WithFilter(nil)}, "WithFilter"},
		{"nil option", local, bulwarkgrpc.KeyByMethod, []bulwarkgrpc.RateLimitOption{bulwarkgrpc.WithMessage("x"), nil}, "opts[1]"},
	} {
		_, err := bulwarkgrpc.NewRateLimit(tc.l, tc.key, tc.opts...)
		if !errors.Is(err, bulwarkgrpc.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: got %v, want ErrInvalidConfig naming %s", tc.name, err, tc.mention)
		}
	}
	defer func() {
		if err, _ := recover().(error); !errors.Is(err, bulwarkgrpc.ErrInvalidConfig) {
			t.Errorf("KeyByMetadata(\"\") panicked with %v, want ErrInvalidConfig", err)
		}
	}()
	bulwarkgrpc.KeyByMetadata("")
}
