// Package scenario plays a flash sale against the shop over HTTP: a rush of
// simulated users who view a product, stand in the waiting room's line,
// poll until their turn and order; scalper bots that try to take many
// places at once; background browsing; and payment providers that fail
// and recover on a timeline. It prints a report line a second while the
// sale runs and ends with a summary that checks what the shop promises: no
// item oversold, no accepted order lost, first come first served, the
// backup provider used only while the primary was down, declines final,
// and optional features switched off during the outage and back on after.
//
// The timeline, in fractions of the sale's duration (for 30 seconds: 10s,
// 14s, 17s and 20s):
//
//	0     the sale opens: users arrive at Load×Rate a second
//	0.2   the rush is over: users arrive at Rate/2 a second
//	1/3   wxpay, the primary provider, starts failing (half its calls fail, half hang)
//	0.47  alipay, the backup, fails too: every payment goes to the buffer
//	0.57  alipay recovers
//	2/3   wxpay recovers
//	0.8   no more arrivals
//	1     the sale closes: users still in line leave, the buffer drains
package scenario

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
)

// Config describes a run.
type Config struct {
	// Targets are the base URLs of the shop's instances, such as
	// "http://127.0.0.1:8080". Users are spread over them round-robin.
	Targets []string
	// Token is the operator's bearer token, valid on every target, for
	// the /ops/ endpoints.
	Token string
	// Duration is the length of the sale; 0 means 30 seconds. At least 1s.
	Duration time.Duration
	// Rate is the shop's capacity: the waiting room's admissions per
	// second.
	Rate float64
	// Load is the arrival rate during the rush, as a multiple of Rate; 0
	// means 10.
	Load float64
	// OpenTimeout is the payment breakers' open timeout. After wxpay
	// recovers, payments may still go to alipay for two open timeouts
	// and a second: wxpay's breaker waits out its open timeout, and if
	// its probe was sent just before the recovery and failed, another.
	OpenTimeout time.Duration
	// Drain is how long to wait, once the users are done, for buffered
	// payments to be taken and the features the outage switched off to
	// come back on; 0 means Duration/3, at least 5 seconds.
	Drain time.Duration
	// Seed drives the randomness: which users are bots, whose cards are
	// declined, what they view and buy.
	Seed uint64
	// Out receives the live report and the summary; nil discards them.
	Out io.Writer
	// Client sends the requests. nil means a client of the run's own,
	// sized for thousands of users, whose connections are closed at the
	// end.
	Client *http.Client
}

// Result is what a run saw, and its checks.
type Result struct {
	// Checks are the summary's checks, in order. They are empty when the
	// run was interrupted.
	Checks []Check

	Users    int // users who arrived
	Bots     int // of which scalper bots
	Joined   int // users who got a ticket
	Admitted int // users whose turn came
	Expired  int // users whose ticket lapsed
	LeftLine int // users still in line when the sale closed (or was interrupted)

	// TurnedAway counts users who gave up without a ticket or an order,
	// by the refusal that made them give up: a code of api.Error, with
	// rate_limited split into "user_limit" and "global_limit", or
	// "error" when a request got no answer.
	TurnedAway map[string]int
	// Refusals counts every refusal answered to the users, retried or
	// not, keyed like TurnedAway.
	Refusals map[string]int

	BotJoins   int // places in line the bots asked for
	BotTickets int // and got

	Paid           int // orders paid at once (201)
	Pending        int // orders accepted with the payment buffered (202)
	PaidFromBuffer int // of the pending ones, paid by the end
	Declined       int // orders whose card was declined at once (402)
	DeclinedLater  int // of the pending ones, declined from the buffer by the end
	SoldOut        int // users who found their item sold out (409)
	Unanswered     int // order requests that got no answer

	// PaidBy counts the payments taken by each provider: the charges in
	// the ledgers of every target, or the first target's stats when the
	// ledgers could not be read.
	PaidBy map[string]int64
	// Buffered is the payment buffer's depth at the end.
	Buffered int64

	WaitP50, WaitP99 time.Duration // time in line, join to admission, of the admitted users

	Requests      int64          // requests the users and browsers sent
	PageViews     int            // product pages served
	PageFailures  int            // product pages that were not
	DegradedViews map[string]int // pages served without a part, by feature

	// Faults are the providers' fault changes, when each was applied.
	Faults []Fault
}

// Check is one of the summary's checks.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

func (c Check) String() string {
	verdict := "ok  "
	if !c.OK {
		verdict = "FAIL"
	}
	return fmt.Sprintf("%s %s: %s", verdict, c.Name, c.Detail)
}

// Failed returns the checks that failed.
func (r Result) Failed() []Check {
	var failed []Check
	for _, c := range r.Checks {
		if !c.OK {
			failed = append(failed, c)
		}
	}
	return failed
}

// Fault is a change of a provider's fault, as applied to every target.
type Fault struct {
	api.ProviderFault
	// Down reports whether the change breaks the provider.
	Down bool
	// At is when the change was in force everywhere: for a breaking
	// change, once every target had answered; for a repair, before the
	// first target was asked. The outage surely lasted from the breaking
	// change's At to the repair's.
	At time.Time
	// Sent is when the first target was asked, Answered when the last
	// one answered: somewhere the change may have been in force from
	// Sent on, and everywhere it was by Answered.
	Sent, Answered time.Time
	// Failed names the targets that did not accept the change.
	Failed []string
}

// Provider names, the feature the outage switches off, and the shares of
// the users.
const (
	primary         = "wxpay"
	backup          = "alipay"
	recommendations = "recommendations"

	botShare       = 0.02
	declinedShare  = 0.05
	botJoins       = 30
	joinRetries    = 3
	orderRetries   = 5
	backupSlack    = time.Second
	providerMillis = 20
)

// Timeouts of the run's own requests.
const (
	requestTimeout = 15 * time.Second       // any request
	statsTimeout   = 900 * time.Millisecond // a report's stats, so a line a second keeps coming
	leaveTimeout   = 2 * time.Second        // a best-effort DELETE after an interruption
	maxBody        = 64 << 20
)

// Defaults of Config.
const (
	defaultDuration = 30 * time.Second
	defaultLoad     = 10
	minDrain        = 5 * time.Second
	maxUsers        = 2_000_000
)

// normalize validates c and fills in its defaults.
func (c Config) normalize() (Config, error) {
	bad := func(field string, value any, why string) error {
		return fmt.Errorf("scenario: Config.%s %v: %s", field, value, why)
	}
	if len(c.Targets) == 0 {
		return c, errors.New("scenario: Config.Targets: at least one target is needed")
	}
	targets := make([]string, len(c.Targets))
	for i, t := range c.Targets {
		u, err := url.Parse(t)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return c, bad(fmt.Sprintf("Targets[%d]", i), fmt.Sprintf("%q", t), "want a base URL such as http://127.0.0.1:8080")
		}
		targets[i] = strings.TrimRight(t, "/")
	}
	c.Targets = targets
	switch {
	case c.Token == "":
		return c, errors.New("scenario: Config.Token: empty; the /ops/ endpoints need the operator token")
	case strings.ContainsAny(c.Token, " \t\r\n"):
		return c, errors.New("scenario: Config.Token: must not contain white space")
	}
	if c.Duration == 0 {
		c.Duration = defaultDuration
	}
	if c.Duration < time.Second {
		return c, bad("Duration", c.Duration, "must be at least 1s")
	}
	if !(c.Rate > 0) || math.IsInf(c.Rate, 0) {
		return c, bad("Rate", c.Rate, "must be positive and finite")
	}
	if c.Load == 0 {
		c.Load = defaultLoad
	}
	if !(c.Load > 0) || math.IsInf(c.Load, 0) {
		return c, bad("Load", c.Load, "must be positive and finite")
	}
	if c.OpenTimeout < 0 {
		return c, bad("OpenTimeout", c.OpenTimeout, "must not be negative")
	}
	if c.Drain == 0 {
		c.Drain = max(c.Duration/3, minDrain)
	}
	if c.Drain < 0 {
		return c, bad("Drain", c.Drain, "must not be negative")
	}
	if n := expectedUsers(c); n > maxUsers {
		return c, bad("Load", c.Load, fmt.Sprintf("with Rate %g and Duration %v, %.0f users would arrive; at most %d", c.Rate, c.Duration, n, maxUsers))
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	return c, nil
}

// Phases of the sale, as fractions of Duration.
const (
	rushEnds     = 0.2
	arrivalsEnd  = 0.8
	primaryDown  = 1.0 / 3
	backupDown   = 0.47
	backupUp     = 0.57
	primaryUp    = 2.0 / 3
	degradeSlack = 1.0 / 6 // after wxpay recovers, recommendations may stay off this long
)

// arrivals is how many users have arrived t into the sale.
func arrivals(c Config, t time.Duration) float64 {
	d := c.Duration.Seconds()
	s := min(t.Seconds(), d)
	rush := min(s, rushEnds*d)
	calm := max(0, min(s, arrivalsEnd*d)-rushEnds*d)
	return c.Load*c.Rate*rush + c.Rate/2*calm
}

func expectedUsers(c Config) float64 { return arrivals(c, c.Duration) }

// views is how many product pages the browsers have viewed t into the
// sale.
func views(c Config, t time.Duration) float64 {
	return 2 * c.Rate * min(t, c.Duration).Seconds()
}

// at is the instant a fraction f into the sale.
func (r *run) at(f float64) time.Time {
	return r.start.Add(time.Duration(f * float64(r.cfg.Duration)))
}

// Run plays the sale against cfg.Targets, prints the report and the
// summary to cfg.Out, and returns what it saw with the summary's checks.
// It returns an error only for a bad Config or a shop that cannot be
// reached (or has nothing on sale) at the start; failed checks are in the
// Result. When ctx ends, Run stops at once (users in line leave it, best
// effort) and returns ctx's error with the totals so far and no checks.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return Result{}, err
	}
	r := &run{cfg: cfg, hc: cfg.Client, out: &printer{w: cfg.Out}}
	if r.hc == nil {
		tr := &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        0, // no limit but the per-host one
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     30 * time.Second,
		}
		defer tr.CloseIdleConnections()
		r.hc = &http.Client{Transport: tr}
	}
	if err := r.prepare(ctx); err != nil {
		return Result{}, err
	}
	return r.play(ctx)
}

// run is one play of the scenario.
type run struct {
	cfg   Config
	hc    *http.Client
	out   *printer
	names []string // of the targets, for the report

	skus     []string         // flash-sale SKUs
	allSKUs  []string         // every product, for browsing
	initial  map[string]int64 // flash-sale stock at the start
	baseline []api.Stats      // of every target at the start
	start    time.Time

	saleOver  chan struct{} // closed when the sale closes
	stockLeft atomic.Pointer[map[string]int64]
	requests  atomic.Int64

	mu      sync.Mutex
	sec     window // this second, for the report
	tot     totals
	tickets []ticketRecord
	faults  []Fault
}

// window is what the users saw in one second.
type window struct {
	admitted int
	refusals map[string]int
	waits    []time.Duration
}

// totals is what the users saw in the whole run.
type totals struct {
	users, bots, joined, admitted, expired, leftLine int
	turnedAway, refusals                             map[string]int
	botJoins, botTickets                             int
	paid, pending, soldOut                           int
	accepted                                         []acceptedOrder
	declined                                         []declinedOrder
	unanswered                                       map[string]int // by SKU
	waits                                            []time.Duration
	pageViews, pageFailures                          int
	degradedViews                                    map[string]int
	recOff                                           []time.Time // when recommendations were seen switched off
}

// prepare reads the catalogue and every target's stats, and heals the
// providers, so the sale starts from a known state.
func (r *run) prepare(ctx context.Context) error {
	var products api.Products
	if err := r.getJSON(ctx, 0, "/api/products", false, &products); err != nil {
		return fmt.Errorf("scenario: the shop at %s: %w", r.cfg.Targets[0], err)
	}
	r.initial = make(map[string]int64)
	for _, p := range products.Products {
		r.allSKUs = append(r.allSKUs, p.SKU)
		if p.FlashSale {
			r.skus = append(r.skus, p.SKU)
			r.initial[p.SKU] = p.StockLeft
		}
	}
	if len(r.skus) == 0 {
		return fmt.Errorf("scenario: the shop at %s has no flash-sale item", r.cfg.Targets[0])
	}
	stock := r.initial
	r.stockLeft.Store(&stock)

	r.baseline = make([]api.Stats, len(r.cfg.Targets))
	r.names = make([]string, len(r.cfg.Targets))
	for i, t := range r.cfg.Targets {
		if err := r.getJSON(ctx, i, "/ops/stats", true, &r.baseline[i]); err != nil {
			return fmt.Errorf("scenario: the shop at %s: %w", t, err)
		}
		r.names[i] = r.baseline[i].Instance
		if r.names[i] == "" {
			r.names[i] = strings.TrimPrefix(strings.TrimPrefix(t, "http://"), "https://")
		}
	}
	for _, p := range []string{primary, backup} {
		for i, err := range r.putFault(ctx, healthy(p)) {
			if err != nil {
				return fmt.Errorf("scenario: the shop at %s: healing %s: %w", r.cfg.Targets[i], p, err)
			}
		}
	}
	return nil
}

func healthy(provider string) api.ProviderFault {
	return api.ProviderFault{Name: provider, LatencyMS: providerMillis}
}

// play runs the sale, then checks and sums it up.
func (r *run) play(ctx context.Context) (Result, error) {
	r.intro()
	r.saleOver = make(chan struct{})
	r.tot = totals{
		turnedAway: map[string]int{}, refusals: map[string]int{},
		unanswered: map[string]int{}, degradedViews: map[string]int{},
	}
	r.sec.refusals = map[string]int{}
	r.start = time.Now()

	// The users may finish their orders after the sale closes, but not
	// for longer than the drain.
	usersCtx, cancelUsers := context.WithDeadline(ctx, r.at(1).Add(r.cfg.Drain))
	defer cancelUsers()

	var (
		loops, work, side sync.WaitGroup
		stopReport        = make(chan struct{})
	)
	side.Go(func() { r.report(ctx, stopReport) })
	side.Go(func() { r.breakProviders(ctx) })
	loops.Go(func() { r.arrive(usersCtx, &work) })
	loops.Go(func() { r.browse(ctx, &work) })

	open := sleepUntil(ctx, r.at(1), nil)
	close(r.saleOver)
	if open {
		r.event(time.Now(), "the sale closes: no more arrivals or browsing; users still in line leave it")
	}
	loops.Wait()
	work.Wait()
	if ctx.Err() == nil {
		r.mu.Lock()
		left, admitted := r.tot.leftLine, r.tot.admitted
		r.mu.Unlock()
		r.event(time.Now(), "every user is done: %d left the line at the close; all %d admitted users have ordered", left, admitted)
		r.drain(ctx)
	}
	close(stopReport)
	side.Wait()

	if err := ctx.Err(); err != nil {
		r.heal(ctx)
		res := r.result()
		r.out.printf("\ninterrupted: %v\n", err)
		r.printTotals(res)
		return res, err
	}
	return r.summary(ctx), nil
}

// drain waits, up to cfg.Drain, for the shop to settle after the sale:
// the payment buffer empty, no order pending, and recommendations, which
// the outage switched off, on again on every target (the shop turns them
// back on once the order path has been healthy for a while).
func (r *run) drain(ctx context.Context) {
	deadline := time.Now().Add(r.cfg.Drain)
	emptied, wasOff := false, false
	for {
		stats := r.allStats(ctx, statsTimeout)
		first := stats[0]
		empty := first.err == nil && first.s.Buffered == 0 && first.s.Orders[api.StatusPending] == 0
		if empty && !emptied {
			r.event(first.at, "the payment buffer is empty")
			emptied = true
		}
		var off []string
		for i, s := range stats {
			if s.err != nil || slices.Contains(s.s.Degraded, recommendations) {
				off = append(off, r.names[i])
			}
		}
		if len(off) > 0 {
			wasOff = true
		} else if wasOff {
			r.event(time.Now(), "%s back on everywhere", recommendations)
			wasOff = false
		}
		if empty && len(off) == 0 {
			return
		}
		if !time.Now().Before(deadline) {
			var waiting []string
			switch {
			case first.err != nil:
				waiting = append(waiting, fmt.Sprintf("the buffer (%v)", first.err))
			case !empty:
				waiting = append(waiting, fmt.Sprintf("the buffer (%d buffered, %d orders pending)",
					first.s.Buffered, first.s.Orders[api.StatusPending]))
			}
			if len(off) > 0 {
				waiting = append(waiting, fmt.Sprintf("%s to come back on (%s)", recommendations, strings.Join(off, ", ")))
			}
			r.event(time.Now(), "stopped waiting after %v for %s", r.cfg.Drain, strings.Join(waiting, " and "))
			return
		}
		if !sleepUntil(ctx, time.Now().Add(250*time.Millisecond), nil) {
			return
		}
	}
}

// heal sets both providers right again after an interruption, best
// effort, so the shop is not left broken.
func (r *run) heal(ctx context.Context) {
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaveTimeout)
	defer cancel()
	for _, p := range []string{primary, backup} {
		r.putFault(hctx, healthy(p))
	}
}

// sleepUntil waits until t, ctx's end or stop's closing, and reports
// whether it waited until t.
func sleepUntil(ctx context.Context, t time.Time, stop <-chan struct{}) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	}
}

// closed reports whether the sale has closed.
func (r *run) closed() bool {
	select {
	case <-r.saleOver:
		return true
	default:
		return false
	}
}
