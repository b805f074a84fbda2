package bulwarkgrpc_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/degrade"
	bulwarkgrpc "github.com/bulwarkgo/bulwark/grpc"
	"github.com/bulwarkgo/bulwark/limiter"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
)

// A rate limit of one call a minute per user, keyed by the x-user-id a
// gateway sets. The refusal tells the client when to come back.
func ExampleNewRateLimit() {
	perUser, _ := limiter.NewLocal(limiter.PerMinute(1, 1))
	rl, err := bulwarkgrpc.NewRateLimit(perUser, bulwarkgrpc.KeyByMetadata(bulwarkgrpc.MetadataUserID),
		bulwarkgrpc.WithMessage("请求过于频繁，请稍后再试"))
	if err != nil {
		panic(err)
	}
	conn, stop := exampleServer(nil, grpc.ChainUnaryInterceptor(rl.Unary()), grpc.ChainStreamInterceptor(rl.Stream()))
	defer stop()

	client := healthpb.NewHealthClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), bulwarkgrpc.MetadataUserID, "u1024")
	for range 2 {
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			fmt.Println("served")
			continue
		}
		st := status.Convert(err)
		fmt.Println(st.Code(), st.Message())
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				fmt.Println("retry in", ri.GetRetryDelay().AsDuration().Round(time.Second))
			}
		}
	}
	// Output:
	// served
	// ResourceExhausted 请求过于频繁，请稍后再试
	// retry in 1m0s
}

// A client's attributes travel in its metadata to the server, where a
// Guard refuses a shed feature with its message in the caller's language.
func ExampleNewGuard() {
	sb, _ := degrade.New([]degrade.Feature{{
		Name: "recommendations", Level: degrade.Optional,
		Messages: map[string]string{"zh": "推荐暂时不可用", "en": "Recommendations are unavailable."},
	}})
	defer sb.Close()
	guard, err := bulwarkgrpc.NewGuard(sb, map[string]string{
		"/grpc.health.v1.Health/": "recommendations", // every method of the service
	})
	if err != nil {
		panic(err)
	}
	conn, stop := exampleServer(
		[]grpc.DialOption{grpc.WithChainUnaryInterceptor(bulwarkgrpc.UnaryClientAttributes())},
		grpc.ChainUnaryInterceptor(bulwarkgrpc.UnaryServerAttributes(nil), guard.Unary()),
		grpc.ChainStreamInterceptor(bulwarkgrpc.StreamServerAttributes(nil), guard.Stream()))
	defer stop()
	client := healthpb.NewHealthClient(conn)

	ctx := context.Background()
	_ = sb.Shed(ctx, degrade.Optional, degrade.Change{By: "ops", Reason: "大促模式"})
	for _, locale := range []string{"zh-CN", "en-US"} {
		ctx := degrade.WithAttributes(ctx, degrade.Attributes{Platform: "ios", AppVersion: "3.2.0", Locale: locale})
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		st := status.Convert(err)
		fmt.Println(st.Code(), st.Message())
	}
	// Output:
	// Unavailable 推荐暂时不可用
	// Unavailable Recommendations are unavailable.
}

// A breaker per method: after two calls that fail with Unavailable (the
// server is down), calls are refused at once without leaving the process.
func ExampleNewCircuitBreaker() {
	cb, err := bulwarkgrpc.NewCircuitBreaker(bulwarkgrpc.WithGroup(
		breaker.NewGroup[struct{}]("inventory", breaker.WithBreakerOptions(
			breaker.WithTripPolicy(breaker.ConsecutiveFailures(2)),
			breaker.WithOpenTimeout(30*time.Second)))))
	if err != nil {
		panic(err)
	}
	conn := exampleDownConn(grpc.WithChainUnaryInterceptor(cb.Unary()), grpc.WithChainStreamInterceptor(cb.Stream()))
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)

	for range 3 {
		_, err := client.Check(context.Background(), &healthpb.HealthCheckRequest{})
		if errors.Is(err, breaker.ErrOpen) {
			fmt.Println("refused without a call:", status.Convert(err).Message())
			continue
		}
		fmt.Println(status.Code(err))
	}
	// Output:
	// Unavailable
	// Unavailable
	// refused without a call: breaker inventory/grpc.health.v1.Health/Check: open
}

// Calls go to the primary while it serves and to the backup while it is
// down; a generated client takes the Failover as its connection.
func ExampleNewFailover() {
	primary := exampleDownConn()
	defer primary.Close()
	backup, stop := exampleServer(nil)
	defer stop()

	f, err := bulwarkgrpc.NewFailover("health", []bulwarkgrpc.Target{
		{Name: "primary", Conn: primary},
		{Name: "backup", Conn: backup},
	}, bulwarkgrpc.WithTargetOptions(breaker.WithTripPolicy(breaker.ConsecutiveFailures(2))))
	if err != nil {
		panic(err)
	}
	client := healthpb.NewHealthClient(f)
	for range 3 {
		resp, err := client.Check(context.Background(), &healthpb.HealthCheckRequest{})
		fmt.Println(resp.GetStatus(), err, "- primary's breaker:", f.Breaker("primary").State())
	}
	// Output:
	// SERVING <nil> - primary's breaker: closed
	// SERVING <nil> - primary's breaker: open
	// SERVING <nil> - primary's breaker: open
}

// exampleServer serves the standard health service with opts over an
// in-memory listener, and returns a connection to it and a function that
// stops both.
func exampleServer(dopts []grpc.DialOption, opts ...grpc.ServerOption) (*grpc.ClientConn, func()) {
	lis := bufconn.Listen(1 << 16)
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	conn := exampleConn(lis, dopts...)
	return conn, func() {
		conn.Close()
		srv.Stop()
	}
}

// exampleDownConn returns a connection to a server that is down.
func exampleDownConn(dopts ...grpc.DialOption) *grpc.ClientConn {
	lis := bufconn.Listen(1 << 16)
	lis.Close()
	return exampleConn(lis, dopts...)
}

func exampleConn(lis *bufconn.Listener, dopts ...grpc.DialOption) *grpc.ClientConn {
	dopts = append(dopts,
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	conn, err := grpc.NewClient("passthrough:///bufnet", dopts...)
	if err != nil {
		panic(err)
	}
	return conn
}
