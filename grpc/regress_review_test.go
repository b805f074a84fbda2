package bulwarkgrpc_test

import (
	"context"
	"errors"
	"io"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/degrade"
	bulwarkgrpc "github.com/bulwarkgo/bulwark/grpc"
	"github.com/bulwarkgo/bulwark/queue"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// withInfo is a status error of code c and message msg carrying an
// ErrorInfo of domain and reason.
func withInfo(t testing.TB, c codes.Code, msg, domain, reason string) error {
	t.Helper()
	st, err := status.New(c, msg).WithDetails(&errdetails.ErrorInfo{Domain: domain, Reason: reason})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

// wantClosed fails the test unless b is closed and has counted no failure.
func wantClosed(t testing.TB, b *breaker.Breaker[struct{}]) {
	t.Helper()
	if st := b.State(); st != breaker.StateClosed {
		t.Errorf("breaker %s is %v, want closed", b.Name(), st)
	}
	if c := b.Counts(); c.TotalFailures != 0 {
		t.Errorf("breaker %s counted %+v, want no failure", b.Name(), c)
	}
}

// Regression: a Guard answers codes.Unavailable for a feature that is off
// for some callers (one device model), and the client's breakers counted
// Unavailable as a failure: a few such calls opened the breaker every
// caller shares, and a Failover re-sent them to every backup. The module's
// own refusals are answers, whatever their code.
func TestRegressModuleRefusalsAreNotDependencyFailures(t *testing.T) {
	sb := newSwitchboard(t)
	ctx := ctxTimeout(t, 10*time.Second)
	err := sb.Set(ctx, "recommendations", degrade.State{Mode: degrade.On, Rules: []degrade.Rule{{
		When:    []degrade.Condition{{Attr: "model", Op: "in", Values: []string{"X1"}}},
		Enabled: false,
	}}}, degrade.Change{By: "test", Reason: "X1 crashes on the carousel"})
	if err != nil {
		t.Fatal(err)
	}
	guard, err := bulwarkgrpc.NewGuard(sb, map[string]string{methodCall: "recommendations"})
	if err != nil {
		t.Fatal(err)
	}
	guarded := []grpc.ServerOption{grpc.ChainUnaryInterceptor(bulwarkgrpc.UnaryServerAttributes(nil), guard.Unary())}
	x1 := degrade.WithAttributes(ctx, degrade.Attributes{Model: "X1", Locale: "zh-CN"})
	other := degrade.WithAttributes(ctx, degrade.Attributes{Model: "Y2", Locale: "zh-CN"})

	t.Run("circuit breaker", func(t *testing.T) {
		group := tripAfter(1)
		cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
		cc := serve(t, &echoServer{}, guarded,
			grpc.WithChainUnaryInterceptor(bulwarkgrpc.UnaryClientAttributes(), cb.Unary()))
		for range 5 {
			_, err := call(x1, cc, "hi")
			st := wantCode(t, err, codes.Unavailable)
			if info, _, _ := details(t, st); info.GetReason() != bulwarkgrpc.ReasonDegraded {
				t.Fatalf("ErrorInfo %v, want the Guard's refusal", info)
			}
		}
		wantClosed(t, group.Get(methodCall[1:]))
		if _, err := call(other, cc, "hi"); err != nil {
			t.Fatalf("a caller for whom the feature is on: %v", err)
		}
	})

	t.Run("failover", func(t *testing.T) {
		backup := newProvider("backup")
		f := newFailover(t, []bulwarkgrpc.Target{
			{Name: "primary", Conn: serve(t, &echoServer{}, guarded, grpc.WithUnaryInterceptor(bulwarkgrpc.UnaryClientAttributes()))},
			{Name: "backup", Conn: serve(t, &backup.echoServer, nil)},
		}, bulwarkgrpc.WithTargetOptions(breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(time.Hour)))
		for range 3 {
			_, err := call(x1, f, "hi")
			if info, _, _ := details(t, wantCode(t, err, codes.Unavailable)); info.GetReason() != bulwarkgrpc.ReasonDegraded {
				t.Fatalf("ErrorInfo %v, want the Guard's refusal", info)
			}
		}
		if n := backup.calls.Load(); n != 0 {
			t.Errorf("the backup saw %d calls, want 0: a refusal is a final answer", n)
		}
		wantClosed(t, f.Breaker("primary"))
	})

	// Every reason the server interceptors give is an answer, even under
	// a failure code; QUEUE_UNAVAILABLE (the instance cannot hold anyone
	// in line) and other domains count by their code.
	t.Run("reasons", func(t *testing.T) {
		for _, tc := range []struct {
			err     error
			failure bool
		}{
			{withInfo(t, codes.Unavailable, "limited", bulwarkgrpc.ErrorDomain, bulwarkgrpc.ReasonRateLimited), false},
			{withInfo(t, codes.Unavailable, "no limiter", bulwarkgrpc.ErrorDomain, bulwarkgrpc.ReasonLimiterUnavailable), false},
			{withInfo(t, codes.Internal, "shed", bulwarkgrpc.ErrorDomain, bulwarkgrpc.ReasonOverloaded), false},
			{withInfo(t, codes.Unavailable, "off", bulwarkgrpc.ErrorDomain, bulwarkgrpc.ReasonDegraded), false},
			{withInfo(t, codes.DeadlineExceeded, "full", bulwarkgrpc.ErrorDomain, bulwarkgrpc.ReasonQueueFull), false},
			{withInfo(t, codes.Unavailable, "too long", bulwarkgrpc.ErrorDomain, bulwarkgrpc.ReasonWaitTooLong), false},
			{withInfo(t, codes.DeadlineExceeded, "timeout", bulwarkgrpc.ErrorDomain, bulwarkgrpc.ReasonWaitTimeout), false},
			{withInfo(t, codes.Unavailable, "no line", bulwarkgrpc.ErrorDomain, bulwarkgrpc.ReasonQueueUnavailable), true},
			{withInfo(t, codes.Unavailable, "theirs", "example.com", bulwarkgrpc.ReasonDegraded), true},
		} {
			st := status.Convert(tc.err)
			t.Run(st.Message(), func(t *testing.T) {
				group := tripAfter(1)
				cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
				cc := serve(t, &echoServer{call: answering(tc.err)}, nil, grpc.WithUnaryInterceptor(cb.Unary()))
				_, err := call(ctxTimeout(t, 5*time.Second), cc, "hi")
				wantCode(t, err, st.Code())
				if got := group.State(methodCall[1:]) == breaker.StateOpen; got != tc.failure {
					t.Errorf("counted as a failure: %v, want %v", got, tc.failure)
				}
			})
		}
	})
}

// Regression: attribute values outside printable ASCII (a device model
// "华为 Mate 60", as degrade.HeaderAttributes reads it from a request) made
// gRPC fail the call locally with codes.Internal before sending it, which
// the breaker counted as a failure of the server. Such values now travel
// under the key's -bin form, and errors gRPC raises before the call leaves
// (invalid metadata, a request that cannot be marshaled) are not failures.
func TestRegressNonASCIIAttributesTravelAndLocalErrorsDoNotTrip(t *testing.T) {
	sent := degrade.Attributes{
		Platform: "harmonyos", Model: "华为 Mate 60", AppVersion: "2.3.1", Region: "华东",
		UserID: "用户\t42", Locale: "zh-CN",
	}
	group := tripAfter(1)
	cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
	got := make(chan degrade.Attributes, 1)
	s := &echoServer{
		call: func(ctx context.Context, in string) (string, error) {
			if in == "fail" {
				return "", codeErr(codes.Internal)
			}
			a, _ := degrade.AttributesFrom(ctx)
			return strings.Join([]string{a.Platform, a.Model, a.AppVersion, a.Region, a.UserID, a.Locale}, "|"), nil
		},
		chat: func(ctx context.Context, _ string) error {
			a, _ := degrade.AttributesFrom(ctx)
			got <- a
			return nil
		},
	}
	cc := serve(t, s,
		[]grpc.ServerOption{
			grpc.UnaryInterceptor(bulwarkgrpc.UnaryServerAttributes(nil)),
			grpc.StreamInterceptor(bulwarkgrpc.StreamServerAttributes(nil)),
		},
		grpc.WithChainUnaryInterceptor(cb.Unary(), bulwarkgrpc.UnaryClientAttributes()),
		grpc.WithChainStreamInterceptor(cb.Stream(), bulwarkgrpc.StreamClientAttributes()))
	ctx := degrade.WithAttributes(ctxTimeout(t, 10*time.Second), sent)

	out, err := call(ctx, cc, "hi")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{sent.Platform, sent.Model, sent.AppVersion, sent.Region, sent.UserID, sent.Locale}, "|")
	if out != want {
		t.Errorf("the server read %q, want %q", out, want)
	}
	cs, err := chat(ctx, cc, "hi")
	if err != nil {
		t.Fatal(err)
	}
	closeChat(t, cs)
	if a := <-got; !reflect.DeepEqual(a, sent) {
		t.Errorf("the stream's server read %+v, want %+v", a, sent)
	}

	// Errors of the client's own making: the call never left.
	bad := metadata.AppendToOutgoingContext(ctx, "x-note", "备注")
	calls := s.calls.Load()
	_, err = call(bad, cc, "hi")
	wantCode(t, err, codes.Internal)
	_, err = call(ctx, cc, "\xff") // a proto string must be UTF-8
	wantCode(t, err, codes.Internal)
	if _, err = chat(bad, cc, "hi"); status.Code(err) != codes.Internal {
		t.Errorf("a stream with bad metadata: %v, want Internal", err)
	}
	if n := s.calls.Load(); n != calls {
		t.Fatalf("the server saw %d calls of the client's own errors", n-calls)
	}
	wantClosed(t, group.Get(methodCall[1:]))
	wantClosed(t, group.Get(methodChat[1:]))

	// A Failover returns them at once: the backup would refuse them too.
	backup := newProvider("backup")
	f := newFailover(t, []bulwarkgrpc.Target{
		{Name: "primary", Conn: serve(t, &newProvider("primary").echoServer, nil)},
		{Name: "backup", Conn: serve(t, &backup.echoServer, nil)},
	}, bulwarkgrpc.WithTargetOptions(breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(time.Hour)))
	_, err = call(ctx, f, "\xff")
	wantCode(t, err, codes.Internal)
	_, err = call(bad, f, "hi")
	wantCode(t, err, codes.Internal)
	if n := backup.calls.Load(); n != 0 {
		t.Errorf("the backup saw %d calls, want 0", n)
	}
	wantClosed(t, f.Breaker("primary"))

	// The server's own Internal still counts.
	_, err = call(ctx, cc, "fail")
	wantCode(t, err, codes.Internal)
	if st := group.State(methodCall[1:]); st != breaker.StateOpen {
		t.Errorf("breaker %v after the server's Internal, want open", st)
	}
}

// lateAnswerConn answers every call with NotFound once the attempt's
// context is done: an answer that arrives as the attempt timer fires.
type lateAnswerConn struct{ calls atomic.Int64 }

func (c *lateAnswerConn) Invoke(ctx context.Context, _ string, _, _ any, _ ...grpc.CallOption) error {
	c.calls.Add(1)
	<-ctx.Done()
	return status.Error(codes.NotFound, "no such order")
}

func (c *lateAnswerConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unimplemented, "no streams")
}

// Regression: with WithAttemptTimeout, a final answer (NotFound) that came
// back as the attempt's timer fired was taken for a failure, because the
// attempt's context was done, and the call was sent to the backup. An
// answer is classified by what it is; an attempt cut off by its timer
// still fails over.
func TestRegressFailoverKeepsAFinalAnswerAtTheAttemptTimeout(t *testing.T) {
	late := &lateAnswerConn{}
	backup := newProvider("backup")
	f := newFailover(t, []bulwarkgrpc.Target{
		{Name: "primary", Conn: late},
		{Name: "backup", Conn: serve(t, &backup.echoServer, nil)},
	}, bulwarkgrpc.WithAttemptTimeout(20*time.Millisecond))
	_, err := call(ctxTimeout(t, 10*time.Second), f, "hi")
	if st := wantCode(t, err, codes.NotFound); st.Message() != "no such order" {
		t.Errorf("message %q, want the primary's answer", st.Message())
	}
	if n := backup.calls.Load(); n != 0 {
		t.Errorf("the backup saw %d calls, want 0: a final answer is never re-sent", n)
	}

	// A primary that does not answer in the attempt's time is a failure,
	// even when DeadlineExceeded is not a failure code.
	release := make(chan struct{})
	defer close(release)
	f = newFailover(t, []bulwarkgrpc.Target{
		{Name: "slow", Conn: serve(t, &echoServer{call: blocking(release)}, nil)},
		{Name: "backup", Conn: serve(t, &backup.echoServer, nil)},
	}, bulwarkgrpc.WithAttemptTimeout(20*time.Millisecond), bulwarkgrpc.WithFailureCodes(codes.Unavailable))
	if got, err := call(ctxTimeout(t, 10*time.Second), f, "block"); err != nil || got != "backup" {
		t.Fatalf("got %q, %v; want backup", got, err)
	}
}

// Regression: a stream counted for its breaker only when it ended, so a
// long-lived stream (a watch) opened while the breaker was half-open held
// the probe for its whole life and every other stream was refused. A
// stream's outcome is now reported once the server has answered.
func TestRegressLongLivedStreamReleasesTheHalfOpenProbe(t *testing.T) {
	failing := func(s *echoServer) *atomic.Bool {
		var f atomic.Bool
		f.Store(true)
		s.chat = func(context.Context, string) error {
			if f.Load() {
				return codeErr(codes.Unavailable)
			}
			return nil
		}
		return &f
	}

	t.Run("circuit breaker", func(t *testing.T) {
		group := breaker.NewGroup[struct{}]("grpc", breaker.WithBreakerOptions(
			breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
			breaker.WithOpenTimeout(20*time.Millisecond)))
		cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
		s := &echoServer{}
		fail := failing(s)
		cc := serve(t, s, nil, grpc.WithStreamInterceptor(cb.Stream()))
		_, err := chat(ctxTimeout(t, 5*time.Second), cc, "hi")
		wantCode(t, err, codes.Unavailable)
		fail.Store(false)
		eventually(t, "half-open", func() bool { return group.State(methodChat[1:]) == breaker.StateHalfOpen })

		watch, err := chat(ctxTimeout(t, 5*time.Second), cc, "watch") // the probe, answered and still open
		if err != nil {
			t.Fatal(err)
		}
		if st := group.State(methodChat[1:]); st != breaker.StateClosed {
			t.Errorf("breaker %v once the probe was answered, want closed", st)
		}
		other, err := chat(ctxTimeout(t, 5*time.Second), cc, "hi")
		if err != nil {
			t.Fatalf("another stream while the probe lives on: %v", err)
		}
		closeChat(t, other)
		closeChat(t, watch)
	})

	t.Run("header", func(t *testing.T) {
		group := breaker.NewGroup[struct{}]("grpc", breaker.WithBreakerOptions(
			breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
			breaker.WithOpenTimeout(20*time.Millisecond)))
		cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
		s := &echoServer{}
		fail := failing(s)
		silent := s.chat
		s.chat = func(ctx context.Context, in string) error {
			if in != "watch" {
				return silent(ctx, in)
			}
			// A watch with nothing to say yet: its header, then silence.
			if err := grpc.SendHeader(ctx, metadata.Pairs("x-watch", "1")); err != nil {
				return err
			}
			<-ctx.Done()
			return ctx.Err()
		}
		cc := serve(t, s, nil, grpc.WithStreamInterceptor(cb.Stream()))
		_, err := chat(ctxTimeout(t, 5*time.Second), cc, "hi")
		wantCode(t, err, codes.Unavailable)
		fail.Store(false)
		eventually(t, "half-open", func() bool { return group.State(methodChat[1:]) == breaker.StateHalfOpen })

		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		watch, err := cc.NewStream(ctx, &echoDesc.Streams[0], methodChat)
		if err != nil {
			t.Fatal(err)
		}
		if err := watch.SendMsg(wrapperspb.String("watch")); err != nil {
			t.Fatal(err)
		}
		if md, err := watch.Header(); err != nil || md.Get("x-watch") == nil {
			t.Fatalf("header %v, %v", md, err)
		}
		if st := group.State(methodChat[1:]); st != breaker.StateClosed {
			t.Errorf("breaker %v once the probe's header came, want closed", st)
		}
		other, err := chat(ctxTimeout(t, 5*time.Second), cc, "hi")
		if err != nil {
			t.Fatalf("another stream while the probe lives on: %v", err)
		}
		closeChat(t, other)
	})

	t.Run("failover", func(t *testing.T) {
		primary, backup := newProvider("primary"), newProvider("backup")
		fail := failing(&primary.echoServer)
		var served atomic.Value
		backup.chat = func(context.Context, string) error { served.Store("backup"); return nil }
		f := newFailover(t, []bulwarkgrpc.Target{
			{Name: "primary", Conn: serve(t, &primary.echoServer, nil)},
			{Name: "backup", Conn: serve(t, &backup.echoServer, nil)},
		}, bulwarkgrpc.WithTargetOptions(breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(20*time.Millisecond)))
		_, err := chat(ctxTimeout(t, 5*time.Second), f, "hi") // fails on the primary once it answers
		wantCode(t, err, codes.Unavailable)
		fail.Store(false)
		eventually(t, "half-open", func() bool { return f.Breaker("primary").State() == breaker.StateHalfOpen })

		watch, err := chat(ctxTimeout(t, 5*time.Second), f, "watch")
		if err != nil {
			t.Fatal(err)
		}
		other, err := chat(ctxTimeout(t, 5*time.Second), f, "hi")
		if err != nil {
			t.Fatal(err)
		}
		closeChat(t, other)
		closeChat(t, watch)
		if got := served.Load(); got != nil {
			t.Errorf("a stream went to the %v while the primary's probe lived on", got)
		}
		wantClosed(t, f.Breaker("primary"))
	})
}

// Regression: a stream's whole life was its latency, so with a
// SlowCallRate policy every long-lived stream was a slow call and the
// breaker opened. The latency is the time to the server's first response.
func TestRegressStreamLatencyIsTheTimeToTheFirstResponse(t *testing.T) {
	slowPolicy := func() *breaker.Group[struct{}] {
		return breaker.NewGroup[struct{}]("grpc", breaker.WithBreakerOptions(
			breaker.WithTripPolicy(breaker.SlowCallRate(50*time.Millisecond, 0.5, 2, time.Minute)),
			breaker.WithOpenTimeout(time.Hour)))
	}
	group := slowPolicy()
	cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
	s := &echoServer{}
	cc := serve(t, s, nil, grpc.WithStreamInterceptor(cb.Stream()))
	for range 3 {
		cs, err := chat(ctxTimeout(t, 5*time.Second), cc, "hi")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(80 * time.Millisecond) // the stream lives on after its first response
		closeChat(t, cs)
	}
	wantClosed(t, group.Get(methodChat[1:]))

	// A server slow to its first response is slow.
	group = slowPolicy()
	cb = newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
	s = &echoServer{chat: func(context.Context, string) error { time.Sleep(80 * time.Millisecond); return nil }}
	cc = serve(t, s, nil, grpc.WithStreamInterceptor(cb.Stream()))
	for range 2 {
		cs, err := chat(ctxTimeout(t, 5*time.Second), cc, "hi")
		if err != nil {
			t.Fatal(err)
		}
		closeChat(t, cs)
	}
	if st := group.State(methodChat[1:]); st != breaker.StateOpen {
		t.Errorf("breaker %v after two slow first responses, want open", st)
	}
}

// failingConn fails every call and stream with err.
type failingConn struct{ err error }

func (c failingConn) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	return c.err
}
func (c failingConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, c.err
}

// Regression: when every target failed, the Failover's status had the
// last failure's code but a message of its own, and none of its details:
// the ErrorInfo and RetryInfo were lost and the user-facing message
// changed. The status is now the last target's, as it is.
func TestRegressFailoverErrorCarriesTheLastTargetsStatus(t *testing.T) {
	st, err := status.New(codes.Unavailable, "服务繁忙，请稍后再试").WithDetails(
		&errdetails.ErrorInfo{Domain: "pay.example.com", Reason: "BACKEND_DOWN"},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	last := st.Err()
	check := func(t *testing.T, err error) {
		t.Helper()
		got, ok := status.FromError(err)
		if !ok || !proto.Equal(got.Proto(), st.Proto()) {
			t.Errorf("status %v, want the last target's %v", got.Proto(), st.Proto())
		}
		if !errors.Is(err, breaker.ErrAllFailed) {
			t.Errorf("%v does not match ErrAllFailed", err)
		}
		if !strings.Contains(err.Error(), "orders") {
			t.Errorf("%q does not name the failover", err.Error())
		}
	}

	primary, backup := newProvider("primary"), newProvider("backup")
	primary.failWith(status.Error(codes.Unavailable, "primary is down"))
	backup.failWith(last)
	f := newFailover(t, []bulwarkgrpc.Target{
		{Name: "primary", Conn: serve(t, &primary.echoServer, nil)},
		{Name: "backup", Conn: serve(t, &backup.echoServer, nil)},
	}, bulwarkgrpc.WithTargetOptions(breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(time.Hour)))
	_, err = call(ctxTimeout(t, 10*time.Second), f, "hi")
	check(t, err)

	_, err = call(ctxTimeout(t, 10*time.Second), f, "hi") // both breakers are open
	wantCode(t, err, codes.Unavailable)
	if !errors.Is(err, breaker.ErrAllFailed) || !errors.Is(err, breaker.ErrOpen) {
		t.Errorf("got %v, want ErrAllFailed and ErrOpen", err)
	}

	f = newFailover(t, []bulwarkgrpc.Target{
		{Name: "primary", Conn: failingConn{status.Error(codes.Unavailable, "primary is down")}},
		{Name: "backup", Conn: failingConn{last}},
	})
	_, err = chat(ctxTimeout(t, 10*time.Second), f, "hi")
	check(t, err)
}

// Regression: a caller whose deadline was shorter than its wait in a
// WaitingRoom was held until its deadline and got DeadlineExceeded, which
// the client's breakers count as a failure of the server. A wait the room
// expects to outlast the deadline is refused at once, and a caller still
// in line near its deadline is refused before it, both with
// ResourceExhausted.
func TestRegressWaitingRoomRefusesAWaitLongerThanTheDeadline(t *testing.T) {
	t.Run("estimated", func(t *testing.T) {
		// One admission every 10s, and the room's own maximum wait of 10
		// minutes: only the caller's deadline is too short.
		room := newRoom(t, 0.1)
		w := newWaitingRoom(t, room)
		group := tripAfter(1)
		cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
		cc := serve(t, &echoServer{}, []grpc.ServerOption{grpc.UnaryInterceptor(w.Unary())}, grpc.WithUnaryInterceptor(cb.Unary()))
		if _, err := call(ctxTimeout(t, 10*time.Second), cc, "first"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err := call(ctxTimeout(t, 2*time.Second), cc, "second")
		st := wantCode(t, err, codes.ResourceExhausted)
		if info, retry, _ := details(t, st); info.GetReason() != bulwarkgrpc.ReasonWaitTooLong || retry == nil {
			t.Errorf("details %v, %v", info, retry)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("refused after %v, want at once", d)
		}
		if n := lineLength(t, room); n != 0 {
			t.Errorf("%d in line, want the refused caller not to have joined", n)
		}
		wantClosed(t, group.Get(methodCall[1:]))
	})

	t.Run("in line", func(t *testing.T) {
		// The room expects no wait, but its one active slot stays taken.
		room := newRoom(t, 1000, queue.WithMaxActive(1))
		w := newWaitingRoom(t, room)
		group := tripAfter(1)
		cb := newCircuitBreaker(t, bulwarkgrpc.WithGroup(group))
		g := newGate()
		cc := serve(t, &echoServer{call: g.call}, []grpc.ServerOption{grpc.UnaryInterceptor(w.Unary())}, grpc.WithUnaryInterceptor(cb.Unary()))
		done := make(chan error, 1)
		go func() { _, err := call(ctxTimeout(t, 10*time.Second), cc, "served"); done <- err }()
		<-g.entered
		_, err := call(ctxTimeout(t, 500*time.Millisecond), cc, "waiting")
		st := wantCode(t, err, codes.ResourceExhausted)
		if info, _, _ := details(t, st); info.GetReason() != bulwarkgrpc.ReasonWaitTimeout {
			t.Errorf("ErrorInfo %v", info)
		}
		g.out <- struct{}{}
		if err := <-done; err != nil {
			t.Error(err)
		}
		wantClosed(t, group.Get(methodCall[1:]))
	})
}

// Regression: a Failover passed the caller's call options to every
// attempt, so grpc.OnFinish ran once per attempt. It runs once per call.
func TestRegressFailoverCallsOnFinishOnce(t *testing.T) {
	primary, backup := newProvider("primary"), newProvider("backup")
	lis, stop := start(t, &primary.echoServer)
	primaryConn := dial(t, lis)
	f := newFailover(t, []bulwarkgrpc.Target{
		{Name: "primary", Conn: primaryConn},
		{Name: "backup", Conn: serve(t, &backup.echoServer, nil)},
	}, bulwarkgrpc.WithTargetOptions(breaker.WithTripPolicy(breaker.ConsecutiveFailures(5)), breaker.WithOpenTimeout(time.Hour)))
	var (
		finished atomic.Int64
		lastErr  atomic.Value
	)
	onFinish := grpc.OnFinish(func(err error) {
		finished.Add(1)
		lastErr.Store(status.Code(err))
	})
	wantFinished := func(t *testing.T, c codes.Code) {
		t.Helper()
		eventually(t, "OnFinish", func() bool { return finished.Load() > 0 })
		time.Sleep(10 * time.Millisecond)
		if n := finished.Swap(0); n != 1 {
			t.Errorf("OnFinish ran %d times, want once", n)
		}
		if got := lastErr.Load(); got != c {
			t.Errorf("OnFinish got %v, want %v", got, c)
		}
	}

	primary.failWith(status.Error(codes.Unavailable, "primary is down"))
	if got, err := call(ctxTimeout(t, 10*time.Second), f, "hi", onFinish); err != nil || got != "backup" {
		t.Fatalf("got %q, %v; want backup", got, err)
	}
	wantFinished(t, codes.OK)

	backup.failWith(status.Error(codes.Internal, "backup broke"))
	_, err := call(ctxTimeout(t, 10*time.Second), f, "hi", onFinish)
	wantCode(t, err, codes.Internal)
	wantFinished(t, codes.Internal)
	backup.failWith(nil)

	stop() // the primary's streams cannot open
	eventually(t, "the primary's connection to drop", func() bool { return primaryConn.GetState() != connectivity.Ready })
	cs, err := f.NewStream(ctxTimeout(t, 10*time.Second), &echoDesc.Streams[0], methodChat, onFinish)
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SendMsg(wrapperspb.String("hi")); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if err := cs.RecvMsg(new(wrapperspb.StringValue)); err != nil {
		t.Fatal(err)
	}
	closeChat(t, cs)
	wantFinished(t, codes.OK)
}
