package bulwarkgrpc_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The test service, registered by hand so no code generation is needed:
// a unary Call and a bidirectional Chat, both on StringValue, whose
// behaviour each test sets.
const (
	methodCall = "/bulwark.test.Echo/Call"
	methodChat = "/bulwark.test.Echo/Chat"
)

type echoServer struct {
	calls atomic.Int64 // calls and streams that reached the handler
	call  func(ctx context.Context, in string) (string, error)
	chat  func(ctx context.Context, in string) error // per stream, with the first message
}

var echoDesc = grpc.ServiceDesc{
	ServiceName: "bulwark.test.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Call",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			handler := func(ctx context.Context, req any) (any, error) {
				s := srv.(*echoServer)
				s.calls.Add(1)
				out, err := s.call(ctx, req.(*wrapperspb.StringValue).GetValue())
				if err != nil {
					return nil, err
				}
				return wrapperspb.String(out), nil
			}
			if interceptor == nil {
				return handler(ctx, in)
			}
			return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: methodCall}, handler)
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Chat",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(srv any, ss grpc.ServerStream) error {
			s := srv.(*echoServer)
			s.calls.Add(1)
			in := new(wrapperspb.StringValue)
			if err := ss.RecvMsg(in); err != nil {
				return err
			}
			if s.chat != nil {
				if err := s.chat(ss.Context(), in.GetValue()); err != nil {
					return err
				}
			}
			// Echo every message until the client closes its side.
			for {
				if err := ss.SendMsg(in); err != nil {
					return err
				}
				if err := ss.RecvMsg(in); err == io.EOF {
					return nil
				} else if err != nil {
					return err
				}
			}
		},
	}},
}

func ok(context.Context, string) (string, error) { return "ok", nil }

// serve starts the echo server with opts over an in-memory listener and
// returns a client connection to it with dopts; both end with the test.
func serve(t testing.TB, s *echoServer, opts []grpc.ServerOption, dopts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	lis, _ := start(t, s, opts...)
	return dial(t, lis, dopts...)
}

// start starts the echo server with opts over an in-memory listener and
// returns the listener and a function that stops the server, which the
// test's cleanup also calls.
func start(t testing.TB, s *echoServer, opts ...grpc.ServerOption) (*bufconn.Listener, func()) {
	t.Helper()
	if s.call == nil {
		s.call = ok
	}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(opts...)
	srv.RegisterService(&echoDesc, s)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	stop := func() {
		srv.Stop()
		<-served
	}
	t.Cleanup(stop)
	return lis, stop
}

func dial(t testing.TB, lis *bufconn.Listener, dopts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	dopts = append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, dopts...)
	conn, err := grpc.NewClient("passthrough:///bufnet", dopts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// call makes a unary call of the echo service on cc.
func call(ctx context.Context, cc grpc.ClientConnInterface, in string, opts ...grpc.CallOption) (string, error) {
	out := new(wrapperspb.StringValue)
	err := cc.Invoke(ctx, methodCall, wrapperspb.String(in), out, opts...)
	return out.GetValue(), err
}

// chat opens a stream of the echo service on cc, sends in and returns the
// stream and the error of the first answer.
func chat(ctx context.Context, cc grpc.ClientConnInterface, in string) (grpc.ClientStream, error) {
	cs, err := cc.NewStream(ctx, &echoDesc.Streams[0], methodChat)
	if err != nil {
		return nil, err
	}
	if err := cs.SendMsg(wrapperspb.String(in)); err != nil && err != io.EOF {
		return cs, err
	}
	return cs, cs.RecvMsg(new(wrapperspb.StringValue))
}

// closeChat ends a stream from chat and reads it to its end.
func closeChat(t testing.TB, cs grpc.ClientStream) {
	t.Helper()
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for {
		err := cs.RecvMsg(new(wrapperspb.StringValue))
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("closing the stream: %v", err)
		}
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// wantCode fails the test unless err has status code c.
func wantCode(t testing.TB, err error, c codes.Code) *status.Status {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != c {
		t.Fatalf("got %v, want code %v", err, c)
	}
	return st
}

// details returns the status details of st by type.
func details(t testing.TB, st *status.Status) (info *errdetails.ErrorInfo, retry *errdetails.RetryInfo, quota *errdetails.QuotaFailure) {
	t.Helper()
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.RetryInfo:
			retry = d
		case *errdetails.QuotaFailure:
			quota = d
		case error:
			t.Fatalf("undecodable detail: %v", d)
		}
	}
	return info, retry, quota
}

// eventually waits up to 5s for cond.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// codeErr is a handler answer with code c.
func codeErr(c codes.Code) error { return status.Error(c, c.String()) }

var errTest = errors.New("test error")
