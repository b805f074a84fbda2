package bulwarkgrpc_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
	bulwarkgrpc "github.com/bulwarkgo/bulwark/grpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func tripAfter(n int) *breaker.Group[struct{}] {
	return breaker.NewGroup[struct{}]("grpc", breaker.WithBreakerOptions(
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(n)),
		breaker.WithOpenTimeout(time.Hour)))
}

func newCircuitBreaker(t *testing.T, opts ...bulwarkgrpc.CircuitBreakerOption) *bulwarkgrpc.CircuitBreaker {
	t.Helper()
	cb, err := bulwarkgrpc.NewCircuitBreaker(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return cb
}

// answering returns a handler that answers every call with err.
func answering(err error) func(context.Context, string) (string, error) {
	return func(context.Context, string) (string, error) { return "", err }
}

// wantOpen checks that err is the refusal of an open breaker.
func wantOpen(t *testing.T, err error, name string) {
	t.Helper()
	if !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("got %v, want an error matching breaker.ErrOpen", err)
	}
	st := wantCode(t, err, codes.Unavailable)
	if !strings.Contains(st.Message(), name) {
		t.Errorf("message %q does not name the breaker %s", st.Message(), name)
	}
	var oe *bulwarkgrpc.OpenError
	if !errors.As(err, &oe) || oe.Breaker != name {
		t.Errorf("got %#v, want an *OpenError of breaker %s", err, name)
	}
}

func TestCircuitBreakerOpensOnFailureCodes(t *testing.T) {
	for _, c := range []codes.Code{codes.Unavailable, codes.DeadlineExceeded, codes.Internal} {
		t.Run(c.String(), func(t *testing.T) {
			group := tripAfter(2)
			cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
			s := &echoServer{call: answering(codeErr(c))}
			cc := serve(t, s, nil, grpc.WithUnaryInterceptor(cb.Unary()))
			for range 2 {
				_, err := call(ctxTimeout(t, 5*time.Second), cc, "hi")
				wantCode(t, err, c)
			}
			if st := group.State(methodCall[1:]); st != breaker.StateOpen {
				t.Fatalf("breaker %v after two %v, want open", st, c)
			}
			_, err := call(ctxTimeout(t, 5*time.Second), cc, "hi")
			wantOpen(t, err, "grpc/"+methodCall[1:])
			if n := s.calls.Load(); n != 2 {
				t.Errorf("the server saw %d calls, want 2: a refused call is not sent", n)
			}
		})
	}
}

func TestCircuitBreakerOpensOnTheCallersDeadline(t *testing.T) {
	group := tripAfter(2)
	cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
	release := make(chan struct{})
	defer close(release)
	s := &echoServer{call: blocking(release)}
	cc := serve(t, s, nil, grpc.WithUnaryInterceptor(cb.Unary()))
	for range 2 {
		_, err := call(ctxTimeout(t, 20*time.Millisecond), cc, "block")
		wantCode(t, err, codes.DeadlineExceeded)
	}
	_, err := call(ctxTimeout(t, 5*time.Second), cc, "hi")
	wantOpen(t, err, "grpc/"+methodCall[1:])
}

func TestCircuitBreakerCountsAnswersAsSuccesses(t *testing.T) {
	for _, err := range []error{
		codeErr(codes.InvalidArgument), codeErr(codes.NotFound), codeErr(codes.AlreadyExists),
		codeErr(codes.PermissionDenied), codeErr(codes.FailedPrecondition), codeErr(codes.ResourceExhausted),
		codeErr(codes.Unauthenticated), errTest, // a plain error is Unknown
	} {
		t.Run(status.Code(err).String(), func(t *testing.T) {
			group := tripAfter(1)
			cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
			cc := serve(t, &echoServer{call: answering(err)}, nil, grpc.WithUnaryInterceptor(cb.Unary()))
			for range 5 {
				_, got := call(ctxTimeout(t, 5*time.Second), cc, "hi")
				wantCode(t, got, status.Code(err))
			}
			if st := group.State(methodCall[1:]); st != breaker.StateClosed {
				t.Errorf("breaker %v, want closed", st)
			}
			if c := group.Get(methodCall[1:]).Counts(); c.TotalSuccesses != 5 {
				t.Errorf("counts %+v, want 5 successes", c)
			}
		})
	}
}

func TestCircuitBreakerIgnoresACancelledCaller(t *testing.T) {
	group := tripAfter(1)
	cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
	g := newGate()
	cc := serve(t, &echoServer{call: g.call}, nil,
		grpc.WithUnaryInterceptor(cb.Unary()), grpc.WithStreamInterceptor(cb.Stream()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := call(ctx, cc, "hi"); done <- err }()
	<-g.entered
	cancel()
	wantCode(t, <-done, codes.Canceled)
	if c := group.Get(methodCall[1:]).Counts(); c.TotalFailures != 0 {
		t.Errorf("counts %+v, want the cancelled call ignored", c)
	}
	if st := group.State(methodCall[1:]); st != breaker.StateClosed {
		t.Errorf("breaker %v, want closed", st)
	}
	// A context that is done before the call is refused with its status.
	_, err := call(ctx, cc, "hi")
	wantCode(t, err, codes.Canceled)
}

func TestCircuitBreakerStream(t *testing.T) {
	group := tripAfter(2)
	cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
	s := &echoServer{chat: func(_ context.Context, in string) error {
		if in == "fail" {
			return codeErr(codes.Unavailable)
		}
		if in == "refuse" {
			return codeErr(codes.PermissionDenied)
		}
		return nil
	}}
	cc := serve(t, s, nil, grpc.WithStreamInterceptor(cb.Stream()))

	// Answers, and streams read to their end, count for the server.
	for range 3 {
		_, err := chat(ctxTimeout(t, 5*time.Second), cc, "refuse")
		wantCode(t, err, codes.PermissionDenied)
		cs, err := chat(ctxTimeout(t, 5*time.Second), cc, "hi")
		if err != nil {
			t.Fatal(err)
		}
		closeChat(t, cs)
	}
	// A stream counts once the server has answered: abandoned by
	// cancelling its context after that, it has counted; before, it is
	// not counted.
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := chat(ctx, cc, "hi"); err != nil {
		t.Fatal(err)
	}
	cancel()
	ctx, cancel = context.WithCancel(context.Background())
	if _, err := cc.NewStream(ctx, &echoDesc.Streams[0], methodChat); err != nil {
		t.Fatal(err)
	}
	cancel()
	b := group.Get(methodChat[1:])
	eventually(t, "the unanswered stream to be let go", func() bool { return b.Counts().Requests == 8 })
	if c := b.Counts(); c.TotalSuccesses != 7 || c.TotalFailures != 0 {
		t.Errorf("counts %+v, want 7 successes", c)
	}

	for range 2 {
		_, err := chat(ctxTimeout(t, 5*time.Second), cc, "fail")
		wantCode(t, err, codes.Unavailable)
	}
	before := s.calls.Load()
	_, err := chat(ctxTimeout(t, 5*time.Second), cc, "hi")
	wantOpen(t, err, "grpc/"+methodChat[1:])
	if n := s.calls.Load(); n != before {
		t.Errorf("the server saw %d more streams, want none", n-before)
	}
}

func TestCircuitBreakerHalfOpenStreamProbe(t *testing.T) {
	group := breaker.NewGroup[struct{}]("grpc", breaker.WithBreakerOptions(
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
		breaker.WithOpenTimeout(20*time.Millisecond)))
	cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
	var failing atomic.Bool
	failing.Store(true)
	s := &echoServer{chat: func(context.Context, string) error {
		if failing.Load() {
			return codeErr(codes.Unavailable)
		}
		return nil
	}}
	cc := serve(t, s, nil, grpc.WithStreamInterceptor(cb.Stream()))
	_, err := chat(ctxTimeout(t, 5*time.Second), cc, "hi")
	wantCode(t, err, codes.Unavailable)
	failing.Store(false) // the server handles no stream until the next one opens
	eventually(t, "half-open", func() bool { return group.State(methodChat[1:]) == breaker.StateHalfOpen })

	// The probe's caller gives up on it before the server answers: the
	// probe slot must come back.
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := cc.NewStream(ctx, &echoDesc.Streams[0], methodChat); err != nil {
		t.Fatal(err)
	}
	if _, err := chat(ctxTimeout(t, 5*time.Second), cc, "hi"); !errors.Is(err, breaker.ErrTooManyRequests) {
		t.Fatalf("got %v while the probe is out, want ErrTooManyRequests", err)
	}
	cancel()
	eventually(t, "another probe to be admitted", func() bool {
		cs, err := chat(ctxTimeout(t, 5*time.Second), cc, "hi")
		if err != nil {
			return false
		}
		closeChat(t, cs)
		return true
	})
	if st := group.State(methodChat[1:]); st != breaker.StateClosed {
		t.Errorf("breaker %v after a successful probe, want closed", st)
	}
}

func TestCircuitBreakerOneBreakerAndKeys(t *testing.T) {
	one := breaker.New[struct{}]("billing", breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(time.Hour))
	cb := newCircuitBreaker(t, bulwarkgrpc.WithBreaker(one))
	if cb.Group() != nil {
		t.Error("Group() is not nil with WithBreaker")
	}
	cc := serve(t, &echoServer{call: answering(codeErr(codes.Unavailable))}, nil,
		grpc.WithUnaryInterceptor(cb.Unary()), grpc.WithStreamInterceptor(cb.Stream()))
	_, err := call(ctxTimeout(t, 5*time.Second), cc, "hi")
	wantCode(t, err, codes.Unavailable)
	_, err = chat(ctxTimeout(t, 5*time.Second), cc, "hi") // another method, the same breaker
	wantOpen(t, err, "billing")

	group := tripAfter(1)
	byTarget := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group), bulwarkgrpc.WithBreakerKey(bulwarkgrpc.BreakerByTarget))
	cc = serve(t, &echoServer{call: answering(codeErr(codes.Internal))}, nil,
		grpc.WithUnaryInterceptor(byTarget.Unary()), grpc.WithStreamInterceptor(byTarget.Stream()))
	_, err = call(ctxTimeout(t, 5*time.Second), cc, "hi")
	wantCode(t, err, codes.Internal)
	_, err = chat(ctxTimeout(t, 5*time.Second), cc, "hi")
	wantOpen(t, err, "grpc/"+cc.Target())
}

func TestCircuitBreakerFailureCodes(t *testing.T) {
	group := tripAfter(1)
	cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group),
		bulwarkgrpc.WithFailureCodes(codes.Unavailable, codes.ResourceExhausted))
	cc := serve(t, &echoServer{call: answering(codeErr(codes.ResourceExhausted))}, nil, grpc.WithUnaryInterceptor(cb.Unary()))
	_, err := call(ctxTimeout(t, 5*time.Second), cc, "hi")
	wantCode(t, err, codes.ResourceExhausted)
	_, err = call(ctxTimeout(t, 5*time.Second), cc, "hi")
	wantOpen(t, err, "grpc/"+methodCall[1:])
}

func TestNewCircuitBreakerValidates(t *testing.T) {
	one := breaker.New[struct{}]("one")
	for _, tc := range []struct {
		name    string
		opts    []bulwarkgrpc.CircuitBreakerOption
		mention string
	}{
		{"breaker and group", []bulwarkgrpc.CircuitBreakerOption{bulwarkgrpc.WithBreaker(one), bulwarkgrpc.WithGroup(tripAfter(1))}, "WithGroup"},
		{"breaker and key", []bulwarkgrpc.CircuitBreakerOption{bulwarkgrpc.WithBreaker(one), bulwarkgrpc.WithBreakerKey(bulwarkgrpc.BreakerByTarget)}, "WithBreakerKey"},
		{"nil group", []bulwarkgrpc.CircuitBreakerOption{bulwarkgrpc.WithGroup(nil)}, "WithGroup"},
		{"nil breaker", []bulwarkgrpc.CircuitBreakerOption{bulwarkgrpc.WithBreaker(nil)}, "WithBreaker"},
		{"nil key", []bulwarkgrpc.CircuitBreakerOption{bulwarkgrpc.WithBreakerKey(nil)}, "WithBreakerKey"},
		{"no codes", []bulwarkgrpc.CircuitBreakerOption{bulwarkgrpc.WithFailureCodes()}, "WithFailureCodes"},
		{"OK code", []bulwarkgrpc.CircuitBreakerOption{bulwarkgrpc.WithFailureCodes(codes.Unavailable, codes.OK)}, "WithFailureCodes[1]"},
		{"nil option", []bulwarkgrpc.CircuitBreakerOption{nil}, "opts[0]"},
	} {
		_, err := bulwarkgrpc.NewCircuitBreaker(tc.opts...)
		if !errors.Is(err, bulwarkgrpc.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: got %v, want ErrInvalidConfig naming %s", tc.name, err, tc.mention)
		}
	}
}
