// Command ratelimit is an HTTP service limited per client IP by Bulwark's
// limiter middleware, which first drives itself to show the limit at work.
//
//	go run ./examples/ratelimit            # demo, then serve until Ctrl-C
//	go run ./examples/ratelimit -exit      # demo only
//	curl -i http://127.0.0.1:8080/
//
// The demo sends a burst of requests as one client and prints each answer,
// shows that a forged X-Forwarded-For header does not buy a fresh bucket,
// waits for tokens to come back and shows requests allowed again.
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
	"syscall"
	"time"

	"github.com/bulwarkgo/bulwark/limiter"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ratelimit:", err)
		os.Exit(1)
	}
}

// limit is the demo's limit per client IP: 5 requests a second, bursts of 10.
var limit = limiter.PerSecond(5, 10)

// run serves until ctx is done, or with -exit until the self-drive ends.
func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("ratelimit", flag.ContinueOnError)
	fs.SetOutput(out)
	addr := fs.String("addr", "127.0.0.1:8080", "address to listen on")
	exit := fs.Bool("exit", false, "exit after the self-drive instead of serving until SIGINT/SIGTERM")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}

	lim, err := limiter.NewLocal(limit)
	if err != nil {
		return err
	}
	// No trusted proxies: clients reach this service directly, so
	// X-Forwarded-For is theirs to forge and is ignored.
	mw, err := limiter.NewMiddleware(lim, limiter.KeyByIP(),
		limiter.WithMessage("请求过于频繁，请稍后再试"))
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from bulwark")
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           mw.Handler(mux),
		ReadHeaderTimeout: 5 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	url := "http://" + ln.Addr().String() + "/"
	fmt.Fprintf(out, "limit: %d requests per %v per client IP, bursts of %d\n", limit.Rate, limit.Period, limit.Burst)
	fmt.Fprintf(out, "listening on %s\n", url)

	driveErr := drive(ctx, out, url)
	if driveErr == nil && !*exit {
		fmt.Fprintf(out, "\nserving %s until SIGINT or SIGTERM; try: curl -i %s\n", url, url)
		select {
		case <-ctx.Done():
		case err := <-served:
			return err
		}
	}

	fmt.Fprintln(out, "shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	if driveErr != nil && ctx.Err() == nil {
		return driveErr
	}
	return nil
}

// drive plays one client against the service at url and prints every
// answer.
func drive(ctx context.Context, out io.Writer, url string) error {
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}

	fmt.Fprintf(out, "\n1. 15 quick requests from one client (burst %d):\n", limit.Burst)
	var lastRetry string
	for i := 1; i <= 15; i++ {
		res, err := send(ctx, c, url, "")
		if err != nil {
			return err
		}
		res.print(out, i)
		if res.status == http.StatusTooManyRequests {
			lastRetry = res.retryAfter
		}
		if i == 15 && res.status == http.StatusTooManyRequests {
			fmt.Fprintf(out, "   body: %s\n", res.body)
		}
	}

	fmt.Fprintln(out, "\n2. the same client forges X-Forwarded-For: 203.0.113.7 (no trusted proxies, so it is ignored):")
	for i := 1; i <= 3; i++ {
		res, err := send(ctx, c, url, "203.0.113.7")
		if err != nil {
			return err
		}
		res.print(out, i)
	}

	wait := time.Second
	if n, err := strconv.Atoi(lastRetry); err == nil && n > 0 {
		wait = time.Duration(n) * time.Second
	}
	fmt.Fprintf(out, "\n3. waiting %v (Retry-After) for the bucket to refill at %d per %v:\n", wait, limit.Rate, limit.Period)
	select {
	case <-time.After(wait):
	case <-ctx.Done():
		return ctx.Err()
	}
	for i := 1; i <= 3; i++ {
		res, err := send(ctx, c, url, "")
		if err != nil {
			return err
		}
		res.print(out, i)
	}
	return nil
}

type result struct {
	status     int
	remaining  string
	retryAfter string
	body       string
}

func send(ctx context.Context, c *http.Client, url, forwardedFor string) (result, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return result{}, err
	}
	if forwardedFor != "" {
		req.Header.Set("X-Forwarded-For", forwardedFor)
	}
	resp, err := c.Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return result{}, err
	}
	return result{
		status:     resp.StatusCode,
		remaining:  resp.Header.Get("RateLimit-Remaining"),
		retryAfter: resp.Header.Get("Retry-After"),
		body:       string(trimNewline(body)),
	}, nil
}

func (r result) print(out io.Writer, i int) {
	retry := r.retryAfter
	if retry == "" {
		retry = "-"
	}
	fmt.Fprintf(out, "   #%-2d %d %-17s RateLimit-Remaining: %-2s Retry-After: %s\n",
		i, r.status, http.StatusText(r.status), r.remaining, retry)
}

func trimNewline(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		return b[:n-1]
	}
	return b
}
