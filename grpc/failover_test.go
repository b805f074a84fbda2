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
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
)

// provider is an echo server that answers with its name, or with the
// error in fail while that is set.
type provider struct {
	echoServer
	name string
	fail atomic.Pointer[error]
}

func newProvider(name string) *provider {
	p := &provider{name: name}
	p.call = func(_ context.Context, in string) (string, error) {
		if err := p.fail.Load(); err != nil {
			return "", *err
		}
		if in == "missing" {
			return "", status.Error(codes.NotFound, "no such order at "+name)
		}
		return name, nil
	}
	return p
}

func (p *provider) failWith(err error) {
	if err == nil {
		p.fail.Store(nil)
		return
	}
	p.fail.Store(&err)
}

func newFailover(t *testing.T, targets []bulwarkgrpc.Target, opts ...bulwarkgrpc.FailoverOption) *bulwarkgrpc.Failover {
	t.Helper()
	f, err := bulwarkgrpc.NewFailover("orders", targets, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func twoTargets(t *testing.T) (f *bulwarkgrpc.Failover, primary, backup *provider) {
	primary, backup = newProvider("primary"), newProvider("backup")
	f = newFailover(t, []bulwarkgrpc.Target{
		{Name: "primary", Conn: serve(t, &primary.echoServer, nil)},
		{Name: "backup", Conn: serve(t, &backup.echoServer, nil)},
	}, bulwarkgrpc.WithTargetOptions(
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(2)),
		breaker.WithOpenTimeout(50*time.Millisecond)))
	return f, primary, backup
}

func TestFailoverMovesToTheBackupAndBack(t *testing.T) {
	f, primary, backup := twoTargets(t)
	ctx := ctxTimeout(t, 10*time.Second)
	if got, err := call(ctx, f, "hi"); err != nil || got != "primary" {
		t.Fatalf("got %q, %v; want primary", got, err)
	}

	primary.failWith(status.Error(codes.Unavailable, "primary is down"))
	for range 5 {
		if got, err := call(ctx, f, "hi"); err != nil || got != "backup" {
			t.Fatalf("while the primary is down: %q, %v; want backup", got, err)
		}
	}
	if st := f.Breaker("primary").State(); st != breaker.StateOpen {
		t.Fatalf("primary's breaker %v, want open", st)
	}
	if n := primary.calls.Load(); n != 3 {
		t.Errorf("the primary saw %d calls, want 3: skipped once its breaker opened", n)
	}

	primary.failWith(nil)
	eventually(t, "calls to go back to the primary", func() bool {
		got, err := call(ctx, f, "hi")
		return err == nil && got == "primary"
	})
	if st := f.Breaker("primary").State(); st != breaker.StateClosed {
		t.Errorf("primary's breaker %v after it recovered, want closed", st)
	}
	// Meanwhile the backup served every call the primary's breaker held.
	if n := backup.calls.Load(); n < 5 {
		t.Errorf("the backup saw %d calls, want at least 5", n)
	}
}

func TestFailoverReturnsAnswersAsTheyAre(t *testing.T) {
	f, primary, backup := twoTargets(t)
	ctx := ctxTimeout(t, 10*time.Second)
	for range 5 {
		_, err := call(ctx, f, "missing")
		st := wantCode(t, err, codes.NotFound)
		if st.Message() != "no such order at primary" {
			t.Fatalf("message %q, want the primary's as it is", st.Message())
		}
	}
	if n := backup.calls.Load(); n != 0 {
		t.Errorf("the backup saw %d calls, want 0: an answer is final", n)
	}
	if st := f.Breaker("primary").State(); st != breaker.StateClosed || primary.calls.Load() != 5 {
		t.Errorf("primary's breaker %v, %d calls", st, primary.calls.Load())
	}
}

func TestFailoverWhenEveryTargetFails(t *testing.T) {
	f, primary, backup := twoTargets(t)
	ctx := ctxTimeout(t, 10*time.Second)
	primary.failWith(status.Error(codes.Unavailable, "primary is down"))
	backup.failWith(status.Error(codes.Internal, "backup broke"))

	_, err := call(ctx, f, "hi")
	st := wantCode(t, err, codes.Internal) // the last target's failure, as it is
	if !errors.Is(err, breaker.ErrAllFailed) || st.Message() != "backup broke" || !strings.Contains(err.Error(), "orders") {
		t.Errorf("got %v, want ErrAllFailed with the backup's failure", err)
	}
	_, _ = call(ctx, f, "hi") // both breakers open now

	_, err = call(ctx, f, "hi")
	wantCode(t, err, codes.Unavailable)
	if !errors.Is(err, breaker.ErrAllFailed) || !errors.Is(err, breaker.ErrOpen) {
		t.Errorf("got %v, want ErrAllFailed and ErrOpen", err)
	}
	if primary.calls.Load() != 2 || backup.calls.Load() != 2 {
		t.Errorf("calls %d and %d, want 2 each", primary.calls.Load(), backup.calls.Load())
	}

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = call(cancelled, f, "hi")
	wantCode(t, err, codes.Canceled)
}

func TestFailoverAttemptTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	slow := &echoServer{call: blocking(release)}
	backup := newProvider("backup")
	f := newFailover(t, []bulwarkgrpc.Target{
		{Name: "slow", Conn: serve(t, slow, nil)},
		{Name: "backup", Conn: serve(t, &backup.echoServer, nil)},
	}, bulwarkgrpc.WithAttemptTimeout(20*time.Millisecond))
	if got, err := call(ctxTimeout(t, 10*time.Second), f, "block"); err != nil || got != "backup" {
		t.Fatalf("got %q, %v; want backup", got, err)
	}
}

func TestFailoverStreams(t *testing.T) {
	primary, backup := newProvider("primary"), newProvider("backup")
	var served atomic.Value
	chatAs := func(name string) func(context.Context, string) error {
		return func(context.Context, string) error { served.Store(name); return nil }
	}
	primary.chat, backup.chat = chatAs("primary"), chatAs("backup")
	lis, stop := start(t, &primary.echoServer)
	primaryConn := dial(t, lis)
	f := newFailover(t, []bulwarkgrpc.Target{
		{Name: "primary", Conn: primaryConn},
		{Name: "backup", Conn: serve(t, &backup.echoServer, nil)},
	}, bulwarkgrpc.WithTargetOptions(breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)), breaker.WithOpenTimeout(time.Hour)))

	cs, err := chat(ctxTimeout(t, 10*time.Second), f, "hi")
	if err != nil {
		t.Fatal(err)
	}
	closeChat(t, cs)
	if got := served.Load(); got != "primary" {
		t.Fatalf("served by %v, want primary", got)
	}

	stop() // the primary goes away: its streams cannot open
	// A stream opened before the client notices fails on the primary, as
	// it would without a failover; wait until it has noticed.
	eventually(t, "the primary's connection to drop", func() bool { return primaryConn.GetState() != connectivity.Ready })
	for range 3 {
		cs, err := chat(ctxTimeout(t, 10*time.Second), f, "hi")
		if err != nil {
			t.Fatal(err)
		}
		closeChat(t, cs)
		if got := served.Load(); got != "backup" {
			t.Fatalf("served by %v, want backup", got)
		}
	}
	if st := f.Breaker("primary").State(); st != breaker.StateOpen {
		t.Errorf("primary's breaker %v, want open", st)
	}
}

func TestNewFailoverValidates(t *testing.T) {
	cc := serve(t, &echoServer{}, nil)
	for _, tc := range []struct {
		name    string
		fname   string
		targets []bulwarkgrpc.Target
		opts    []bulwarkgrpc.FailoverOption
		mention string
	}{
		{"no name", "", []bulwarkgrpc.Target{{Name: "a", Conn: cc}}, nil, "name"},
		{"no targets", "f", nil, nil, "targets"},
		{"unnamed target", "f", []bulwarkgrpc.Target{{Conn: cc}}, nil, "targets[0].Name"},
		{"same name", "f", []bulwarkgrpc.Target{{Name: "a", Conn: cc}, {Name: "a", Conn: cc}}, nil, "targets[1].Name"},
		{"no conn", "f", []bulwarkgrpc.Target{{Name: "a"}}, nil, "targets[0].Conn"},
		{"bad timeout", "f", []bulwarkgrpc.Target{{Name: "a", Conn: cc}}, []bulwarkgrpc.FailoverOption{bulwarkgrpc.WithAttemptTimeout(0)}, "WithAttemptTimeout"},
		{"bad breaker option", "f", []bulwarkgrpc.Target{{Name: "a", Conn: cc}}, []bulwarkgrpc.FailoverOption{bulwarkgrpc.WithTargetOptions(breaker.WithOpenTimeout(-1))}, "WithOpenTimeout"},
		{"no codes", "f", []bulwarkgrpc.Target{{Name: "a", Conn: cc}}, []bulwarkgrpc.FailoverOption{bulwarkgrpc.WithFailureCodes()}, "WithFailureCodes"},
	} {
		_, err := bulwarkgrpc.NewFailover(tc.fname, tc.targets, tc.opts...)
		if !errors.Is(err, bulwarkgrpc.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: got %v, want ErrInvalidConfig naming %s", tc.name, err, tc.mention)
		}
	}
}

var _ grpc.ClientConnInterface = (*bulwarkgrpc.Failover)(nil)
