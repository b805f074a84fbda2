// Command waitingroom runs a flash sale behind Bulwark's waiting room and
// first plays a crowd of simulated users against it.
//
//	go run ./examples/waitingroom                         # simulate, then serve until Ctrl-C
//	go run ./examples/waitingroom -exit                   # simulation only
//	go run ./examples/waitingroom -redis 127.0.0.1:6379   # two instances sharing one line in Redis
//	curl -i -X POST http://127.0.0.1:8080/checkout        # join the line yourself
//
// The sale has fewer items than users. Users arrive in a rush, each is
// given a ticket with a place in line and an estimated wait, polls the
// status endpoint until it is their turn, and then checks out with the
// signed admission token they were given. The simulation prints what a few
// of them saw and checks that nobody overtook anybody, that the room
// admitted at its rate, and that no token could be used twice.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bulwarkgo/bulwark/queue"
	"github.com/redis/go-redis/v9"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "waitingroom:", err)
		os.Exit(1)
	}
}

type config struct {
	addr      string
	exit      bool
	users     int
	rate      float64
	stock     int
	redisAddr string
}

// run serves until ctx is done, or with -exit until the simulation ends.
func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("waitingroom", flag.ContinueOnError)
	fs.SetOutput(out)
	var c config
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8080", "address of the first instance (a second one, with -redis, listens on a free port)")
	fs.BoolVar(&c.exit, "exit", false, "exit after the simulation instead of serving until SIGINT/SIGTERM")
	fs.IntVar(&c.users, "users", 300, "simulated users")
	fs.Float64Var(&c.rate, "rate", 100, "admissions per second")
	fs.IntVar(&c.stock, "stock", 200, "items for sale")
	fs.StringVar(&c.redisAddr, "redis", "", "Redis address: run two instances sharing one line there")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}

	key := make([]byte, 32)
	_, _ = rand.Read(key)
	sale := &sale{stock: int64(c.stock)}

	// One instance in-process, or two sharing a line in Redis. Each
	// instance has its own Room and its own Redis client, as two
	// processes would.
	n := 1
	prefix := ""
	if c.redisAddr != "" {
		n = 2
		prefix = fmt.Sprintf("bulwark:example:%d:", time.Now().UnixNano())
	}
	var insts []*instance
	defer func() {
		for _, in := range insts {
			in.close()
		}
	}()
	for i := range n {
		addr := c.addr
		if i > 0 {
			addr = "127.0.0.1:0"
		}
		in, err := newInstance(c, key, prefix, addr, sale)
		if err != nil {
			return err
		}
		insts = append(insts, in)
	}

	fmt.Fprintf(out, "flash sale: %d items, %d users, admitting %g per second\n", c.stock, c.users, c.rate)
	for i, in := range insts {
		fmt.Fprintf(out, "instance %c listening on %s\n", 'A'+i, in.url)
	}
	simErr := simulate(ctx, out, c, insts, sale)
	if simErr == nil && !c.exit {
		fmt.Fprintf(out, "\nserving until SIGINT or SIGTERM; try: curl -i -X POST %scheckout\n", insts[0].url)
		<-ctx.Done()
	}
	fmt.Fprintln(out, "shutting down")
	if simErr != nil && ctx.Err() == nil {
		return simErr
	}
	return nil
}

// sale is the thing users queue for.
type sale struct {
	stock  int64
	orders atomic.Int64
}

// instance is one server of the sale: a room and the HTTP endpoints.
type instance struct {
	room   *queue.Room
	client *redis.Client
	srv    *http.Server
	served chan error
	url    string
}

func newInstance(c config, key []byte, prefix, addr string, s *sale) (*instance, error) {
	in := &instance{served: make(chan error, 1)}
	var signerOpts []queue.SignerOption
	if c.redisAddr != "" {
		in.client = redis.NewClient(&redis.Options{Addr: c.redisAddr})
		// Tokens are redeemed once across the fleet.
		guard, err := queue.NewRedisReplayGuard(in.client, prefix+"used:")
		if err != nil {
			in.close()
			return nil, err
		}
		signerOpts = append(signerOpts, queue.WithReplayGuard(guard))
	}
	signer, err := queue.NewSigner(key, signerOpts...)
	if err != nil {
		in.close()
		return nil, err
	}
	opts := []queue.RoomOption{
		queue.WithSigner(signer),
		queue.WithMaxWait(time.Minute),
		queue.WithTicketTTL(10 * time.Second),
		queue.WithPollInterval(100*time.Millisecond, 2*time.Second),
	}
	if in.client != nil {
		opts = append(opts, queue.WithRedis(in.client), queue.WithKeyPrefix(prefix))
	}
	in.room, err = queue.NewRoom("flash-sale", c.rate, opts...)
	if err != nil {
		in.close()
		return nil, err
	}

	checkout := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := s.orders.Add(1)
		w.Header().Set("Content-Type", "application/json")
		if n > s.stock {
			w.WriteHeader(http.StatusGone)
			fmt.Fprintln(w, `{"error":"sold_out","message":"已售罄 Sold out"}`)
			return
		}
		fmt.Fprintf(w, "{\"order\":%d}\n", n)
	})
	mux := http.NewServeMux()
	mux.Handle("POST /checkout", queue.TicketMiddleware(in.room)(checkout))
	mux.Handle("/queue", queue.StatusHandler(in.room))

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		in.close()
		return nil, err
	}
	in.url = "http://" + ln.Addr().String() + "/"
	in.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { in.served <- in.srv.Serve(ln) }()
	return in, nil
}

func (in *instance) close() {
	if in.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = in.srv.Shutdown(ctx)
		cancel()
		<-in.served
	}
	if in.room != nil {
		_ = in.room.Close()
	}
	if in.client != nil {
		_ = in.client.Close()
	}
}

// outcome is what one simulated user went through.
type outcome struct {
	user      int
	place     int // place in line when joining (0: admitted at once)
	eta       time.Duration
	waited    time.Duration
	admitted  time.Time
	order     int // 0: sold out
	polls     int
	replayErr string
}

// simulate plays c.users users arriving within a second, alternating
// between the instances, and checks what happened.
func simulate(ctx context.Context, out io.Writer, c config, insts []*instance, s *sale) error {
	tr := &http.Transport{MaxIdleConnsPerHost: 256}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}

	results := make([]outcome, c.users)
	errs := make(chan error, c.users)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range c.users {
		// The rush: everyone within one second.
		time.Sleep(time.Second / time.Duration(c.users))
		in := insts[i%len(insts)]
		wg.Go(func() {
			o, err := user(ctx, hc, in.url, i+1)
			results[i] = o
			if err != nil {
				errs <- fmt.Errorf("user %d: %w", i+1, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	elapsed := time.Since(start)

	fmt.Fprintln(out, "\nwhat some users saw (place and estimated wait on joining, then the real wait):")
	for _, i := range sample(c.users) {
		o := results[i]
		what := fmt.Sprintf("order #%d", o.order)
		if o.order == 0 {
			what = "sold out"
		}
		fmt.Fprintf(out, "   user %-4d place %-4d estimated %-6s waited %-6s polls %-3d -> %s\n",
			o.user, o.place, o.eta.Round(10*time.Millisecond), o.waited.Round(10*time.Millisecond), o.polls, what)
	}

	// Checks: stock and replay. FIFO and the rate are the room's own
	// guarantees, tested in the queue package; here users see them only
	// through polling.
	byAdmission := slices.Clone(results)
	slices.SortFunc(byAdmission, func(a, b outcome) int { return a.admitted.Compare(b.admitted) })
	orders := 0
	for _, o := range results {
		if o.order > 0 {
			orders++
		}
		if o.polls > 0 && o.replayErr != "token_replayed" {
			return fmt.Errorf("user %d reused their token and got %q, want token_replayed", o.user, o.replayErr)
		}
	}
	first, last := byAdmission[0].admitted, byAdmission[len(byAdmission)-1].admitted
	rate := float64(len(results)-1) / last.Sub(first).Seconds()
	fmt.Fprintf(out, "\n%d users admitted in %v; %d orders for %d items; %d sold out\n",
		len(results), elapsed.Round(10*time.Millisecond), orders, c.stock, len(results)-orders)
	fmt.Fprintf(out, "observed admission rate %.0f/s (set %g/s, seen through polling)\n", rate, c.rate)
	fmt.Fprintf(out, "every admission token used a second time was refused (token_replayed)\n")
	if orders != min(c.stock, c.users) {
		return fmt.Errorf("%d orders, want %d", orders, min(c.stock, c.users))
	}
	return nil
}

// sample picks a few users to print: the first, the last, and some
// between.
func sample(n int) []int {
	var s []int
	for _, i := range []int{0, 1, n / 4, n / 2, 3 * n / 4, n - 1} {
		if i >= 0 && i < n && !slices.Contains(s, i) {
			s = append(s, i)
		}
	}
	return s
}

// ticketView is the JSON of the room's ticket answers.
type ticketView struct {
	Ticket           string `json:"ticket"`
	Position         int    `json:"position"`
	ETASeconds       int    `json:"eta_seconds"`
	PollAfterSeconds int    `json:"poll_after_seconds"`
	Admitted         bool   `json:"admitted"`
	Token            string `json:"token"`
	Error            string `json:"error"`
}

// user joins at the checkout, polls the status endpoint until admitted,
// checks out with the token, and tries the token once more.
func user(ctx context.Context, hc *http.Client, base string, id int) (outcome, error) {
	o := outcome{user: id}
	start := time.Now()
	resp, body, err := call(ctx, hc, "POST", base+"checkout", nil)
	if err != nil {
		return o, err
	}
	var v ticketView
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusGone {
		// Admitted at once (the room was idle) and served directly.
		o.admitted = time.Now()
		o.order = orderOf(resp.StatusCode, body)
		return o, nil
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return o, fmt.Errorf("join answer %d %q: %w", resp.StatusCode, body, err)
	}
	if resp.StatusCode != http.StatusAccepted {
		return o, fmt.Errorf("join: %d %s", resp.StatusCode, body)
	}
	ticket := resp.Header.Get(queue.TicketHeader)
	o.place = v.Position
	// The server's estimate is in whole seconds in the JSON; the poll
	// hint follows it. Keep the estimate as the user would read it.
	o.eta = time.Duration(v.ETASeconds) * time.Second

	for !v.Admitted {
		wait := time.Duration(v.PollAfterSeconds) * time.Second
		// A real client waits PollAfter; the simulation polls faster
		// near the front so the demo takes seconds, not minutes.
		wait = min(wait, 100*time.Millisecond)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return o, ctx.Err()
		}
		o.polls++
		resp, body, err = call(ctx, hc, "GET", base+"queue", map[string]string{queue.TicketHeader: ticket})
		if err != nil {
			return o, err
		}
		v = ticketView{}
		if err := json.Unmarshal(body, &v); err != nil {
			return o, fmt.Errorf("status answer %d %q: %w", resp.StatusCode, body, err)
		}
		if v.Error != "" {
			return o, fmt.Errorf("status: %d %s", resp.StatusCode, body)
		}
	}
	o.admitted = time.Now()
	o.waited = o.admitted.Sub(start)
	token := resp.Header.Get(queue.AdmissionHeader)

	resp, body, err = call(ctx, hc, "POST", base+"checkout", map[string]string{queue.AdmissionHeader: token})
	if err != nil {
		return o, err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusGone {
		return o, fmt.Errorf("checkout: %d %s", resp.StatusCode, body)
	}
	o.order = orderOf(resp.StatusCode, body)
	// Using the same token again must not buy a second item.
	_, body, err = call(ctx, hc, "POST", base+"checkout", map[string]string{queue.AdmissionHeader: token})
	if err != nil {
		return o, err
	}
	var refused struct{ Error string }
	_ = json.Unmarshal(body, &refused)
	o.replayErr = refused.Error
	return o, nil
}

// orderOf reads the order number from a checkout answer; 0 means sold out.
func orderOf(status int, body []byte) int {
	var placed struct{ Order int }
	if status == http.StatusOK {
		_ = json.Unmarshal(body, &placed)
	}
	return placed.Order
}

func call(ctx context.Context, hc *http.Client, method, url string, headers map[string]string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}
