package bulwarkgrpc_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	bulwarkgrpc "github.com/bulwarkgo/bulwark/grpc"
	"github.com/bulwarkgo/bulwark/limiter"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

func newAdaptive(t *testing.T, opts ...limiter.AdaptiveOption) *limiter.Adaptive {
	t.Helper()
	a, err := limiter.NewAdaptive(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func newConcurrencyLimit(t *testing.T, a *limiter.Adaptive, opts ...bulwarkgrpc.ConcurrencyLimitOption) *bulwarkgrpc.ConcurrencyLimit {
	t.Helper()
	cl, err := bulwarkgrpc.NewConcurrencyLimit(a, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// blocking returns a handler that holds "block" calls until release is
// closed.
func blocking(release <-chan struct{}) func(context.Context, string) (string, error) {
	return func(ctx context.Context, in string) (string, error) {
		if in == "block" {
			select {
			case <-release:
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
		return "ok", nil
	}
}

func TestConcurrencyLimitShedsPastItsLimit(t *testing.T) {
	a := newAdaptive(t, limiter.WithInitialLimit(1), limiter.WithMaxLimit(1))
	cl := newConcurrencyLimit(t, a)
	release := make(chan struct{})
	s := &echoServer{call: blocking(release)}
	cc := serve(t, s, []grpc.ServerOption{grpc.UnaryInterceptor(cl.Unary())})

	first := make(chan error, 1)
	go func() {
		_, err := call(ctxTimeout(t, 5*time.Second), cc, "block")
		first <- err
	}()
	eventually(t, "the first call to hold the permit", func() bool { return a.Inflight() == 1 })

	start := time.Now()
	_, err := call(ctxTimeout(t, 5*time.Second), cc, "hi")
	st := wantCode(t, err, codes.ResourceExhausted)
	if d := time.Since(start); d > time.Second {
		t.Errorf("shedding took %v, want at once", d)
	}
	if st.Message() != bulwarkgrpc.DefaultShedMessage {
		t.Errorf("message %q", st.Message())
	}
	if info, retry, _ := details(t, st); info.GetReason() != bulwarkgrpc.ReasonOverloaded || retry != nil {
		t.Errorf("details %v, %v; want ErrorInfo OVERLOADED and no RetryInfo", info, retry)
	}
	if n := s.calls.Load(); n != 1 {
		t.Errorf("handler called %d times, want 1", n)
	}

	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if n := a.Inflight(); n != 0 {
		t.Fatalf("%d permits in flight after the call, want 0", n)
	}
	if _, err := call(ctxTimeout(t, 5*time.Second), cc, "hi"); err != nil {
		t.Fatalf("after the first call ended: %v", err)
	}
}

func TestConcurrencyLimitStream(t *testing.T) {
	a := newAdaptive(t, limiter.WithInitialLimit(1), limiter.WithMaxLimit(1))
	cl := newConcurrencyLimit(t, a, bulwarkgrpc.WithMessage("系统繁忙"))
	s := &echoServer{}
	cc := serve(t, s, []grpc.ServerOption{grpc.StreamInterceptor(cl.Stream())})

	open, err := chat(ctxTimeout(t, 5*time.Second), cc, "first")
	if err != nil {
		t.Fatal(err)
	}
	_, err = chat(ctxTimeout(t, 5*time.Second), cc, "second")
	if st := wantCode(t, err, codes.ResourceExhausted); st.Message() != "系统繁忙" {
		t.Errorf("message %q", st.Message())
	}
	closeChat(t, open)
	eventually(t, "the stream's permit to be released", func() bool { return a.Inflight() == 0 })
	cs, err := chat(ctxTimeout(t, 5*time.Second), cc, "third")
	if err != nil {
		t.Fatalf("after the first stream ended: %v", err)
	}
	closeChat(t, cs)
}

// TestConcurrencyLimitOutcomes checks how each outcome finishes the
// permit: every one gives the slot back, and only overload signals lower
// the limit.
func TestConcurrencyLimitOutcomes(t *testing.T) {
	info := &grpc.UnaryServerInfo{FullMethod: methodCall}
	for _, tc := range []struct {
		name      string
		err       error
		cancelled bool
		lowers    bool
	}{
		{"success", nil, false, false},
		{"business error", codeErr(codes.InvalidArgument), false, false},
		{"plain error", errTest, false, false},
		{"downstream refusal", codeErr(codes.ResourceExhausted), false, false},
		{"deadline status", codeErr(codes.DeadlineExceeded), false, true},
		{"deadline error", context.DeadlineExceeded, false, true},
		{"shed downstream", limiter.ErrLimited, false, true},
		{"cancelled status", codeErr(codes.Canceled), false, false},
		{"cancelled caller", codeErr(codes.Unavailable), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A huge latency tolerance keeps noise in the timing of these
			// tiny calls from moving the limit: only drops may lower it.
			a := newAdaptive(t, limiter.WithInitialLimit(100), limiter.WithSampleWindow(time.Millisecond),
				limiter.WithLatencyTolerance(1e9))
			cl := newConcurrencyLimit(t, a)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancelled {
				cancel()
			}
			handler := func(context.Context, any) (any, error) { return nil, tc.err }
			// Enough outcomes, over enough time, to close several windows.
			for range 40 {
				time.Sleep(200 * time.Microsecond)
				p, err := cl.Unary()(ctx, nil, info, handler)
				if tc.cancelled {
					wantCode(t, err, codes.Canceled) // refused before the handler
					break
				}
				if err != tc.err || p != nil {
					t.Fatalf("interceptor returned %v, %v; want the handler's %v", p, err, tc.err)
				}
			}
			if n := a.Inflight(); n != 0 {
				t.Fatalf("%d permits in flight, want 0", n)
			}
			// Each window with a drop multiplies the limit by 0.9.
			if lowered := a.Limit() <= 90; lowered != tc.lowers {
				t.Errorf("limit %d after the calls; lowered %v, want %v", a.Limit(), lowered, tc.lowers)
			}
		})
	}
}

func TestConcurrencyLimitCallerCancelledInHandler(t *testing.T) {
	a := newAdaptive(t, limiter.WithInitialLimit(100), limiter.WithSampleWindow(time.Millisecond),
		limiter.WithLatencyTolerance(1e9))
	cl := newConcurrencyLimit(t, a)
	info := &grpc.UnaryServerInfo{FullMethod: methodCall}
	for range 40 {
		time.Sleep(200 * time.Microsecond)
		ctx, cancel := context.WithCancel(context.Background())
		_, err := cl.Unary()(ctx, nil, info, func(ctx context.Context, _ any) (any, error) {
			cancel() // the caller leaves while the handler runs
			return nil, codeErr(codes.DeadlineExceeded)
		})
		wantCode(t, err, codes.DeadlineExceeded)
	}
	if a.Inflight() != 0 || a.Limit() <= 90 {
		t.Errorf("inflight %d, limit %d; want 0 and 100: a cancelled caller is ignored", a.Inflight(), a.Limit())
	}
}

func TestConcurrencyLimitPanicGivesThePermitBack(t *testing.T) {
	a := newAdaptive(t)
	cl := newConcurrencyLimit(t, a)
	func() {
		defer func() {
			if recover() == nil {
				t.Error("the panic did not reach the caller")
			}
		}()
		_, _ = cl.Unary()(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: methodCall},
			func(context.Context, any) (any, error) { panic(errors.New("boom")) })
	}()
	if n := a.Inflight(); n != 0 {
		t.Errorf("%d permits in flight after a panic, want 0", n)
	}
}

func TestNewConcurrencyLimitValidates(t *testing.T) {
	if _, err := bulwarkgrpc.NewConcurrencyLimit(nil); !errors.Is(err, bulwarkgrpc.ErrInvalidConfig) || !strings.Contains(err.Error(), "NewConcurrencyLimit a") {
		t.Errorf("nil limiter: %v", err)
	}
	a := newAdaptive(t)
	if _, err := bulwarkgrpc.NewConcurrencyLimit(a, bulwarkgrpc.WithFilter(nil)); !errors.Is(err, bulwarkgrpc.ErrInvalidConfig) || !strings.Contains(err.Error(), "WithFilter") {
		t.Errorf("nil filter: %v", err)
	}
}

func TestConcurrencyLimitFilter(t *testing.T) {
	a := newAdaptive(t, limiter.WithInitialLimit(1), limiter.WithMaxLimit(1))
	cl := newConcurrencyLimit(t, a, bulwarkgrpc.WithFilter(func(m string) bool { return m != methodCall }))
	release := make(chan struct{})
	cc := serve(t, &echoServer{call: blocking(release)}, []grpc.ServerOption{grpc.UnaryInterceptor(cl.Unary())})
	held := make(chan error, 1)
	go func() { _, err := call(ctxTimeout(t, 5*time.Second), cc, "block"); held <- err }()
	// The filtered method takes no permit, so a second call is not shed.
	if _, err := call(ctxTimeout(t, 5*time.Second), cc, "hi"); err != nil {
		t.Error(err)
	}
	close(release)
	if err := <-held; err != nil {
		t.Error(err)
	}
	if a.Inflight() != 0 {
		t.Errorf("inflight %d", a.Inflight())
	}
}
