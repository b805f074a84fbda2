// Command shop is Bulwark's flagship demo: a flash-sale shop that survives
// its own noon peak, with every package at work.
//
//	go run ./examples/shop                      # start the shop, play the 30 s scenario, keep serving
//	go run ./examples/shop -serve-only          # just the shop
//	go run ./examples/shop -duration 60s -load 20
//	go run ./examples/shop -redis 127.0.0.1:6379 -instances 2
//	                                            # two shops sharing one line, stock, breakers, switches and buffer
//
// The shop (see internal/shop) sells three items in a flash sale behind a
// waiting room, pays through wxpay with alipay as the backup, holds
// payments neither can take in a buffer, limits each user and the crowd,
// sheds orders beyond an adaptive concurrency limit, and turns its
// recommendations off while the order path is in trouble. The console is at
// /admin/ (the token is printed at start-up) and the metrics, in
// Prometheus' format, at /metrics; dashboard.json beside this file is a
// Grafana dashboard for them.
//
// The scenario (see internal/scenario): the sale opens with ten times the
// shop's capacity in simulated users; a third of the way in wxpay starts
// failing, alipay fails for a while too, and both recover by two thirds. A
// line a second says what the users saw and what the shop holds; the
// summary checks that nothing was oversold, no accepted order was lost,
// the line was first come first served, alipay served only while wxpay was
// down and no declined card was retried. The exit status is 1 if a check
// failed (with -exit, at once; otherwise when the shop is stopped).
//
// With -redis, separate processes share one sale: start one with
// -serve-only -addr 127.0.0.1:8081, then one that plays the scenario.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bulwarkgo/bulwark/examples/shop/internal/scenario"
	"github.com/bulwarkgo/bulwark/examples/shop/internal/shop"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "shop:", err)
		os.Exit(1)
	}
}

type options struct {
	addr      string
	instances int
	redisAddr string
	prefix    string
	serveOnly bool
	exit      bool
	duration  time.Duration
	load      float64
	rate      float64
	stock     int64
	token     string
	verbose   bool
}

func parse(args []string, out io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("shop", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.addr, "addr", "127.0.0.1:8080", "listen address of the first shop; others take the ports after it")
	fs.IntVar(&o.instances, "instances", 1, "shops to start in this process (more than 1 needs -redis)")
	fs.StringVar(&o.redisAddr, "redis", "", "Redis address: keep limits, line, stock, orders, breakers, switches and buffer there")
	fs.StringVar(&o.prefix, "prefix", "bulwark-shop:", "prefix of the Redis keys")
	fs.BoolVar(&o.serveOnly, "serve-only", false, "serve without playing the scenario")
	fs.BoolVar(&o.exit, "exit", false, "exit after the scenario instead of serving")
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "length of the scenario's sale (at least 5s)")
	fs.Float64Var(&o.load, "load", 10, "users arriving during the rush, as a multiple of the shop's capacity")
	fs.Float64Var(&o.rate, "rate", 40, "the shop's capacity: users admitted from the line per second")
	fs.Int64Var(&o.stock, "stock", 0, "units of each of the three sale items (default: a quarter of what the line admits in the sale)")
	fs.StringVar(&o.token, "token", "", "operator token for /admin/ and /ops/ (default: a random one, printed)")
	fs.BoolVar(&o.verbose, "v", false, "print what the shop does by itself (breakers, switches) during the scenario too")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	case o.instances < 1 || o.instances > 8:
		return o, fmt.Errorf("-instances %d: must be between 1 and 8", o.instances)
	case o.instances > 1 && o.redisAddr == "":
		return o, errors.New("-instances above 1 needs -redis: in memory, shops cannot share a sale")
	case o.duration < 5*time.Second:
		return o, fmt.Errorf("-duration %v: must be at least 5s", o.duration)
	case o.rate <= 0 || o.rate > 10_000:
		return o, fmt.Errorf("-rate %v: must be above 0 and at most 10000", o.rate)
	case o.load <= 0 || o.load > 100:
		return o, fmt.Errorf("-load %v: must be above 0 and at most 100", o.load)
	case o.stock < 0:
		return o, fmt.Errorf("-stock %d: must not be negative", o.stock)
	}
	if o.stock == 0 {
		o.stock = max(int64(o.rate*o.duration.Seconds()/4), 1)
	}
	if o.token == "" {
		o.token = shop.NewToken()
	}
	return o, nil
}

// clamp scales a setting with the scenario's length, within bounds.
func clamp(d, lo, hi time.Duration) time.Duration { return min(max(d, lo), hi) }

// run starts the shops, plays the scenario and serves until ctx ends.
func run(ctx context.Context, args []string, out io.Writer) error {
	o, err := parse(args, out)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}

	var printing atomic.Bool // the shops' own news, once the report is done
	printing.Store(o.serveOnly || o.verbose)
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(out, format, args...)
	}

	stock := map[string]int64{}
	for _, sku := range shop.SaleSKUs() {
		stock[sku] = o.stock
	}
	host, port, err := net.SplitHostPort(o.addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %w", o.addr, err)
	}
	firstPort, err := strconv.Atoi(port)
	if err != nil {
		return fmt.Errorf("-addr %q: bad port", o.addr)
	}

	var insts []*instance
	defer func() {
		for _, in := range insts {
			in.close()
		}
	}()
	viewer := shop.NewToken()
	for i := range o.instances {
		p := 0
		if firstPort != 0 {
			p = firstPort + i
		}
		cfg := shop.Config{
			Prefix:            o.prefix,
			Reset:             i == 0 && !o.serveOnly,
			Stock:             stock,
			Rate:              o.rate,
			OpenTimeout:       clamp(o.duration/15, 500*time.Millisecond, 2*time.Second),
			SignalWindow:      clamp(o.duration/10, time.Second, 3*time.Second),
			TriggerFor:        clamp(o.duration/30, 300*time.Millisecond, time.Second),
			TriggerRecoverFor: clamp(o.duration/15, 600*time.Millisecond, 2*time.Second),
			OperatorToken:     o.token,
			ViewerToken:       viewer,
		}
		cfg.Logf = func(format string, args ...any) {
			if printing.Load() {
				say("%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
			}
		}
		in, err := startInstance(ctx, cfg, o.redisAddr, net.JoinHostPort(host, strconv.Itoa(p)))
		if err != nil {
			return err
		}
		insts = append(insts, in)
	}

	store := "in memory"
	if o.redisAddr != "" {
		store = "in Redis at " + o.redisAddr + " under " + o.prefix
	}
	say("Bulwark flash-sale shop, %s\n", store)
	for _, in := range insts {
		say("  %-7s %s   console %sadmin/   metrics %smetrics\n", in.name, in.url, in.url, in.url)
	}
	say("  operator token %s   (viewer token %s)\n", o.token, viewer)
	say("  sale: %d each of %v, %g users admitted per second\n\n", o.stock, shop.SaleSKUs(), o.rate)

	var checkErr error
	if !o.serveOnly {
		targets := make([]string, len(insts))
		for i, in := range insts {
			targets[i] = in.url
		}
		res, err := scenario.Run(ctx, scenario.Config{
			Targets:     targets,
			Token:       o.token,
			Duration:    o.duration,
			Rate:        o.rate,
			Load:        o.load,
			OpenTimeout: insts[0].shop.OpenTimeout(),
			Seed:        1,
			Out:         lockedWriter{&outMu, out},
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("scenario: %w", err)
		}
		if failed := res.Failed(); len(failed) > 0 {
			checkErr = fmt.Errorf("scenario: %d of %d checks failed", len(failed), len(res.Checks))
		}
		if o.exit {
			return checkErr
		}
	}
	printing.Store(true)
	say("\nserving until Ctrl-C. Try:\n")
	say("  curl -s %sapi/products/mooncake-box -H 'X-User-Id: me'\n", insts[0].url)
	say("  curl -si -X POST %sapi/sale/line -H 'X-User-Id: me'\n", insts[0].url)
	say("  open %sadmin/ and sign in with the operator token to switch features off\n", insts[0].url)
	<-ctx.Done()
	say("shutting down\n")
	return checkErr
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// instance is one shop with its server, metrics and Redis client.
type instance struct {
	name   string
	ln     net.Listener
	url    string
	shop   *shop.Shop
	srv    *http.Server
	served chan error
	mp     *sdkmetric.MeterProvider
	client *redis.Client
}

func startInstance(ctx context.Context, cfg shop.Config, redisAddr, addr string) (*instance, error) {
	in := &instance{served: make(chan error, 1)}
	ok := false
	defer func() {
		if !ok {
			in.close()
		}
	}()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	in.ln = ln
	in.url = "http://" + ln.Addr().String() + "/"
	// Named after its port: unique on this host, as instances sharing a
	// Redis must be (the name is their payment buffer's consumer).
	cfg.Instance = fmt.Sprintf("shop-%d", ln.Addr().(*net.TCPAddr).Port)
	in.name = cfg.Instance

	// Metrics: the OpenTelemetry SDK with the Prometheus exporter, each
	// shop on a registry of its own.
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, err
	}
	in.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	cfg.MeterProvider = in.mp

	if redisAddr != "" {
		// Each shop has its own client, as separate processes would.
		in.client = redis.NewClient(&redis.Options{Addr: redisAddr, PoolSize: 64})
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := in.client.Ping(pctx).Err()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("redis at %s: %w", redisAddr, err)
		}
		cfg.Redis = in.client
	}
	if in.shop, err = shop.New(ctx, cfg); err != nil {
		return nil, err
	}

	// Shutdown waits for the requests in flight, payments included, but
	// the console's event streams would hold it until its timeout: they
	// end when shutdown begins.
	closing, cancelClosing := context.WithCancel(context.Background())
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/admin/", endOn(closing, in.shop.Handler()))
	mux.Handle("/", in.shop.Handler())
	in.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	in.srv.RegisterOnShutdown(cancelClosing)
	go func() { in.served <- in.srv.Serve(ln) }()
	ok = true
	return in, nil
}

// endOn cancels the requests h serves when stop is done.
func endOn(stop context.Context, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		defer context.AfterFunc(stop, cancel)()
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

func (in *instance) close() {
	if in.srv == nil && in.ln != nil {
		_ = in.ln.Close()
	}
	if in.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_ = in.srv.Shutdown(ctx)
		cancel()
		<-in.served
	}
	if in.shop != nil {
		in.shop.Close()
	}
	if in.mp != nil {
		_ = in.mp.Shutdown(context.Background())
	}
	if in.client != nil {
		_ = in.client.Close()
	}
}
