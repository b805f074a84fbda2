package bulwarkgrpc_test

import (
	"context"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/degrade"
	bulwarkgrpc "github.com/bulwarkgo/bulwark/grpc"
	"github.com/bulwarkgo/bulwark/limiter"
	"github.com/bulwarkgo/bulwark/queue"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// benchServer names a server-side setup: what it chains and what the
// client sends.
type benchServer struct {
	name  string
	unary func(b *testing.B) grpc.UnaryServerInterceptor
	ctx   func(context.Context) context.Context
}

// sixAttributes adds the metadata of six attributes to an outgoing
// context.
func sixAttributes(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx,
		bulwarkgrpc.MetadataPlatform, "android", bulwarkgrpc.MetadataDeviceModel, "X1",
		bulwarkgrpc.MetadataAppVersion, "2.3.1", bulwarkgrpc.MetadataRegion, "cn-shanghai",
		bulwarkgrpc.MetadataUserID, "u42", bulwarkgrpc.MetadataLocale, "zh-CN")
}

func benchServers() []benchServer {
	return []benchServer{
		{name: "bare"},
		// The baseline of "attributes": the same metadata, nobody reading it.
		{name: "bare-metadata", ctx: sixAttributes},
		{name: "ratelimit", unary: func(b *testing.B) grpc.UnaryServerInterceptor {
			// A bucket that never runs dry: every call is decided, none refused.
			l, err := limiter.NewLocal(limiter.PerSecond(1_000_000, 1<<50))
			if err != nil {
				b.Fatal(err)
			}
			rl, err := bulwarkgrpc.NewRateLimit(l, bulwarkgrpc.KeyByMethod)
			if err != nil {
				b.Fatal(err)
			}
			return rl.Unary()
		}},
		{name: "concurrency", unary: func(b *testing.B) grpc.UnaryServerInterceptor {
			a, err := limiter.NewAdaptive(limiter.WithInitialLimit(1000), limiter.WithMinLimit(1000), limiter.WithMaxLimit(1000))
			if err != nil {
				b.Fatal(err)
			}
			cl, err := bulwarkgrpc.NewConcurrencyLimit(a)
			if err != nil {
				b.Fatal(err)
			}
			return cl.Unary()
		}},
		{name: "guard", unary: func(b *testing.B) grpc.UnaryServerInterceptor {
			sb := newSwitchboard(b)
			g, err := bulwarkgrpc.NewGuard(sb, map[string]string{methodCall: "recommendations"})
			if err != nil {
				b.Fatal(err)
			}
			return g.Unary()
		}},
		{name: "waitingroom", unary: func(b *testing.B) grpc.UnaryServerInterceptor {
			room, err := queue.NewRoom("bench", 1e6)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { room.Close() })
			w, err := bulwarkgrpc.NewWaitingRoom(room)
			if err != nil {
				b.Fatal(err)
			}
			return w.Unary()
		}},
		{
			name:  "attributes",
			unary: func(*testing.B) grpc.UnaryServerInterceptor { return bulwarkgrpc.UnaryServerAttributes(nil) },
			ctx:   sixAttributes,
		},
	}
}

// BenchmarkServerUnary is a unary call over an in-memory connection
// through each server interceptor, against a bare call ("bare"): the
// difference is the interceptor's cost per call.
func BenchmarkServerUnary(b *testing.B) {
	for _, bs := range benchServers() {
		b.Run(bs.name, func(b *testing.B) {
			var opts []grpc.ServerOption
			if bs.unary != nil {
				opts = append(opts, grpc.UnaryInterceptor(bs.unary(b)))
			}
			cc := serve(b, &echoServer{}, opts)
			ctx := context.Background()
			if bs.ctx != nil {
				ctx = bs.ctx(ctx)
			}
			benchCalls(b, ctx, cc)
		})
	}
}

// BenchmarkServerInterceptor calls each server interceptor directly,
// with a handler that does nothing: its own cost, without gRPC's.
func BenchmarkServerInterceptor(b *testing.B) {
	info := &grpc.UnaryServerInfo{FullMethod: methodCall}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	for _, bs := range benchServers() {
		if bs.unary == nil {
			continue
		}
		b.Run(bs.name, func(b *testing.B) {
			intercept := bs.unary(b)
			ctx := context.Background()
			if bs.ctx != nil {
				md, _ := metadata.FromOutgoingContext(bs.ctx(ctx))
				ctx = metadata.NewIncomingContext(ctx, md)
			}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := intercept(ctx, nil, info, handler); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkClientUnary is a unary call over an in-memory connection
// through each client interceptor, against a bare call.
func BenchmarkClientUnary(b *testing.B) {
	for _, bc := range []struct {
		name string
		cc   func(b *testing.B) grpc.ClientConnInterface
		ctx  func(context.Context) context.Context
	}{
		{"bare", func(b *testing.B) grpc.ClientConnInterface { return serve(b, &echoServer{}, nil) }, nil},
		// The baseline of "attributes": the same metadata, set by hand once.
		{"bare-metadata", func(b *testing.B) grpc.ClientConnInterface { return serve(b, &echoServer{}, nil) }, sixAttributes},
		{"breaker", func(b *testing.B) grpc.ClientConnInterface {
			cb, err := bulwarkgrpc.NewCircuitBreaker()
			if err != nil {
				b.Fatal(err)
			}
			return serve(b, &echoServer{}, nil, grpc.WithUnaryInterceptor(cb.Unary()))
		}, nil},
		{"failover", func(b *testing.B) grpc.ClientConnInterface {
			f, err := bulwarkgrpc.NewFailover("bench", []bulwarkgrpc.Target{
				{Name: "primary", Conn: serve(b, &echoServer{}, nil)},
				{Name: "backup", Conn: serve(b, &echoServer{}, nil)},
			})
			if err != nil {
				b.Fatal(err)
			}
			return f
		}, nil},
		{"attributes", func(b *testing.B) grpc.ClientConnInterface {
			return serve(b, &echoServer{}, nil, grpc.WithUnaryInterceptor(bulwarkgrpc.UnaryClientAttributes()))
		}, func(ctx context.Context) context.Context {
			return degrade.WithAttributes(ctx, degrade.Attributes{Platform: "android", Model: "X1", AppVersion: "2.3.1",
				Region: "cn-shanghai", UserID: "u42", Locale: "zh-CN"})
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cc := bc.cc(b)
			ctx := context.Background()
			if bc.ctx != nil {
				ctx = bc.ctx(ctx)
			}
			benchCalls(b, ctx, cc)
		})
	}
}

// BenchmarkClientInterceptor calls the breaker interceptor directly, with
// an invoker that does nothing.
func BenchmarkClientInterceptor(b *testing.B) {
	cb, err := bulwarkgrpc.NewCircuitBreaker()
	if err != nil {
		b.Fatal(err)
	}
	intercept := cb.Unary()
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	ctx := context.Background()
	b.Run("breaker", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := intercept(ctx, methodCall, nil, nil, nil, invoker); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	// An open breaker refuses at once.
	one := breaker.New[struct{}]("open", breaker.WithOpenTimeout(time.Hour))
	one.ForceOpen()
	cbOpen, err := bulwarkgrpc.NewCircuitBreaker(bulwarkgrpc.WithBreaker(one))
	if err != nil {
		b.Fatal(err)
	}
	intercept = cbOpen.Unary()
	b.Run("breaker-open", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := intercept(ctx, methodCall, nil, nil, nil, invoker); err == nil {
					b.Error("an open breaker let a call through")
					return
				}
			}
		})
	})
}

// nopConn is a connection whose calls succeed at once.
type nopConn struct{}

func (nopConn) Invoke(context.Context, string, any, any, ...grpc.CallOption) error { return nil }
func (nopConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, nil
}

// BenchmarkFailoverInvoke calls a Failover whose primary serves, over
// connections that do nothing: its own cost, without gRPC's.
func BenchmarkFailoverInvoke(b *testing.B) {
	f, err := bulwarkgrpc.NewFailover("bench", []bulwarkgrpc.Target{
		{Name: "primary", Conn: nopConn{}},
		{Name: "backup", Conn: nopConn{}},
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := f.Invoke(ctx, methodCall, nil, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func benchCalls(b *testing.B, ctx context.Context, cc grpc.ClientConnInterface) {
	if _, err := call(ctx, cc, "hi"); err != nil { // connect before timing
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := call(ctx, cc, "hi"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
