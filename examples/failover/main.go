// Command failover shows Bulwark's breaker.Failover keeping payments going
// while the primary payment gateway is down.
//
//	go run ./examples/failover                 # an 8 second run
//	go run ./examples/failover -duration 20s   # a longer one
//	go run ./examples/failover -quick          # four times faster
//
// Shoppers pay without pause through a Failover over two simulated
// gateways, wxpay (the primary) and alipay (the backup). wxpay fails from a
// quarter of the run to five eighths of it (2s to 5s of 8s), half its calls
// answering 503 and half hanging until the attempt timeout. A line a second
// shows where the payments went, the declined cards and the breakers'
// states, and a summary checks what the failover promises: no card that
// wxpay declined was re-sent to alipay, alipay served only while wxpay was
// failing (and until wxpay's breaker let a probe through), and wxpay serves
// again at the end. The exit status is 1 if a check fails.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "failover:", err)
		os.Exit(1)
	}
}

// The scenario, in demo time (see scale).
const (
	shoppers       = 4
	payEvery       = 40 * time.Millisecond  // each shopper's pace
	gatewayLatency = 20 * time.Millisecond  // a healthy gateway's answer time
	attemptTimeout = 200 * time.Millisecond // per gateway, within the payment's
	paymentTimeout = 3 * time.Second        // the shopper's whole payment
	openTimeout    = time.Second            // before wxpay's breaker probes
	tripAfter      = 3                      // failures in a row that open a breaker
	declineEvery   = 10                     // one card in declineEvery is declined

	// probeSlack is how long after the open timeout alipay may still serve
	// in the summary's check: the probe and the scheduling of a busy machine.
	probeSlack = 500 * time.Millisecond
)

var (
	errUnavailable = errors.New("503 service unavailable")
	errDeclined    = errors.New("card declined")
)

// run plays the scenario and prints it to out; it returns an error if the
// flags are bad or a check of the summary fails.
func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("failover", flag.ContinueOnError)
	fs.SetOutput(out)
	duration := fs.Duration("duration", 8*time.Second, "length of the run, in demo time (at least 4s)")
	quick := fs.Bool("quick", false, "run four times faster (for tests)")
	seed := fs.Uint64("seed", 1, "seed of the gateways' random failures")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *duration < 4*time.Second {
		return fmt.Errorf("-duration %v: must be at least 4s", *duration)
	}
	d := demo{
		out:         out,
		scale:       1,
		duration:    *duration,
		outageStart: *duration / 4,
		outageEnd:   *duration * 5 / 8,
		stats:       make([]second, int((*duration+time.Second-1)/time.Second)),
	}
	if *quick {
		d.scale = 0.25
	}
	d.wxpay = newGateway("wxpay", d.real(gatewayLatency), *seed)
	d.alipay = newGateway("alipay", d.real(gatewayLatency), *seed+1)
	return d.run(ctx)
}

// demo is one run of the scenario.
type demo struct {
	out                    io.Writer
	scale                  float64 // real time per demo time
	duration               time.Duration
	outageStart, outageEnd time.Duration
	wxpay, alipay          *gateway
	pay                    *breaker.Failover[receipt]
	start                  time.Time

	mu       sync.Mutex
	stats    []second // by demo second
	total    second
	resent   int           // cards wxpay declined that reached alipay
	firstAli time.Duration // demo times alipay served first and last
	lastAli  time.Duration
}

// second is what happened in one second of the run.
type second struct {
	byWxpay, byAlipay   int
	declined            int
	declinedByAlipay    int // while wxpay could not answer
	unavailable         int // no gateway could take the payment
	wxFailed, wxSkipped int // wxpay's attempts that failed or its breaker refused
	events              []string
}

// real converts demo time to real time.
func (d *demo) real(t time.Duration) time.Duration { return time.Duration(float64(t) * d.scale) }

// now is the demo time since the start.
func (d *demo) now() time.Duration { return time.Duration(float64(time.Since(d.start)) / d.scale) }

func (d *demo) event(format string, args ...any) {
	t := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	i := min(int(t/time.Second), len(d.stats)-1)
	d.stats[i].events = append(d.stats[i].events, fmt.Sprintf("%6.2fs  %s", t.Seconds(), fmt.Sprintf(format, args...)))
}

func (d *demo) run(ctx context.Context) error {
	d.pay = breaker.NewFailover("payments",
		[]breaker.Provider[receipt]{{Name: "wxpay"}, {Name: "alipay"}},
		breaker.WithAttemptTimeout(d.real(attemptTimeout)),
		breaker.WithProviderOptions(
			breaker.WithTripPolicy(breaker.ConsecutiveFailures(tripAfter)),
			breaker.WithOpenTimeout(d.real(openTimeout)),
			breaker.WithListener(func(c breaker.StateChange) {
				d.event("breaker %s: %v -> %v", c.Name, c.From, c.To)
			})))

	fmt.Fprintf(d.out, "Payments go to wxpay, the primary, and to alipay, the backup, while wxpay fails.\n")
	fmt.Fprintf(d.out, "  - %d shoppers pay without pause for %v.\n", shoppers, d.duration)
	fmt.Fprintf(d.out, "  - wxpay fails from %v to %v: half its calls answer 503, half hang until the\n", d.outageStart, d.outageEnd)
	fmt.Fprintf(d.out, "    %v attempt timeout. Its breaker opens after %d failures in a row, so payments\n", attemptTimeout, tripAfter)
	fmt.Fprintf(d.out, "    go straight to alipay, and lets a probe through to wxpay every %v.\n", openTimeout)
	fmt.Fprintf(d.out, "  - 1 card in %d is declined: a final answer, returned at once, never re-sent to alipay.\n", declineEvery)
	if d.scale != 1 {
		fmt.Fprintf(d.out, "  - quick: every duration runs %g times faster.\n", 1/d.scale)
	}
	fmt.Fprintf(d.out, "\n%-7s %15s %8s %11s   %15s   %s\n", "", "paid via   ", "", "", "wxpay attempts", "breakers")
	fmt.Fprintf(d.out, "%-7s %7s %7s %8s %11s   %7s %7s   %-9s %s\n",
		"second", "wxpay", "alipay", "declined", "unavailable", "failed", "skipped", "wxpay", "alipay")

	d.start = time.Now()
	down := time.AfterFunc(d.real(d.outageStart), func() {
		d.wxpay.setFailureRate(1)
		d.event("wxpay starts failing")
	})
	defer down.Stop()
	up := time.AfterFunc(d.real(d.outageEnd), func() {
		d.wxpay.setFailureRate(0)
		d.event("wxpay recovers")
	})
	defer up.Stop()

	var wg sync.WaitGroup
	for s := range shoppers {
		wg.Go(func() { d.shop(ctx, s) })
	}
	// One line a second, a little after it ends so that payments finishing
	// on the boundary are in it.
	for i := range d.stats {
		if !sleep(ctx, time.Until(d.start.Add(d.real(time.Duration(i+1)*time.Second+50*time.Millisecond)))) {
			break
		}
		d.printSecond(i)
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	return d.summary()
}

// shop is one shopper paying, one card after another, until the run ends.
func (d *demo) shop(ctx context.Context, shopper int) {
	for n := 0; ; n++ {
		if ctx.Err() != nil || d.now() >= d.duration {
			return
		}
		d.payOnce(ctx, shopper*1_000_000+n)
		sleep(ctx, d.real(payEvery))
	}
}

func (d *demo) payOnce(parent context.Context, card int) {
	ctx, cancel := context.WithTimeout(parent, d.real(paymentTimeout))
	defer cancel()
	p := payment{card: card, cents: 1999}
	var declinedByWxpay, resent bool
	res, err := d.pay.Execute(ctx, func(ctx context.Context, provider string) (receipt, error) {
		if provider == "alipay" {
			resent = declinedByWxpay
			return d.alipay.charge(ctx, p)
		}
		r, err := d.wxpay.charge(ctx, p)
		declinedByWxpay = errors.Is(err, errDeclined)
		return r, err
	})
	if parent.Err() != nil && err != nil && !errors.Is(err, breaker.ErrFinal) {
		return // the run was interrupted; not the gateways' doing
	}

	t := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	s := &d.stats[min(int(t/time.Second), len(d.stats)-1)]
	for _, a := range res.Attempts() {
		if a.Provider != "wxpay" {
			continue
		}
		switch a.Outcome {
		case breaker.AttemptFailure:
			s.wxFailed++
			d.total.wxFailed++
		case breaker.AttemptSkipped:
			s.wxSkipped++
			d.total.wxSkipped++
		}
	}
	if resent {
		d.resent++
	}
	switch {
	case errors.Is(err, breaker.ErrFinal):
		s.declined++
		d.total.declined++
		if res.Provider == "alipay" {
			d.total.declinedByAlipay++
		}
	case err != nil:
		s.unavailable++
		d.total.unavailable++
	case res.Provider == "wxpay":
		s.byWxpay++
		d.total.byWxpay++
	default:
		s.byAlipay++
		d.total.byAlipay++
		if d.firstAli == 0 {
			d.firstAli = t
		}
		d.lastAli = t
	}
}

func (d *demo) printSecond(i int) {
	d.mu.Lock()
	s := d.stats[i]
	d.mu.Unlock()
	fmt.Fprintf(d.out, "%-7s %7d %7d %8d %11d   %7d %7d   %-9v %v\n",
		fmt.Sprintf("%d-%ds", i, i+1), s.byWxpay, s.byAlipay, s.declined, s.unavailable, s.wxFailed, s.wxSkipped,
		d.pay.Breaker("wxpay").State(), d.pay.Breaker("alipay").State())
	for _, e := range s.events {
		fmt.Fprintf(d.out, "        %s\n", e)
	}
}

// summary prints the totals and checks the failover's promises.
func (d *demo) summary() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	t := d.total
	fmt.Fprintf(d.out, "\n%d payments: %d via wxpay, %d via alipay, %d declined (%d by alipay while wxpay was down), %d unavailable.\n",
		t.byWxpay+t.byAlipay+t.declined+t.unavailable, t.byWxpay, t.byAlipay, t.declined, t.declinedByAlipay, t.unavailable)
	fmt.Fprintf(d.out, "wxpay failed %d attempts, each moved on to alipay; its open breaker sent %d payments straight there.\n",
		t.wxFailed, t.wxSkipped)

	var failed []string
	check := func(ok bool, what, detail string) {
		verdict := "ok"
		if !ok {
			verdict = "FAILED"
			failed = append(failed, what)
		}
		fmt.Fprintf(d.out, "check: %s: %s (%s)\n", what, verdict, detail)
	}

	check(d.resent == 0, "no card declined by wxpay was re-sent to alipay",
		fmt.Sprintf("%d declined by wxpay, %d re-sent", t.declined-t.declinedByAlipay, d.resent))

	until := d.outageEnd + openTimeout + probeSlack
	window := fmt.Sprintf("alipay served from %.2fs to %.2fs; wxpay failed from %v to %v, probe due by %v",
		d.firstAli.Seconds(), d.lastAli.Seconds(), d.outageStart, d.outageEnd, d.outageEnd+openTimeout)
	if t.byAlipay == 0 {
		window = "alipay never served"
	}
	check(t.byAlipay > 0 && d.firstAli >= d.outageStart && d.lastAli <= until,
		"alipay served only while wxpay was failing", window)

	last := d.stats[len(d.stats)-1]
	if len(d.stats) > 1 && d.duration%time.Second != 0 {
		last = d.stats[len(d.stats)-2] // the last full second
	}
	state := d.pay.Breaker("wxpay").State()
	check(last.byWxpay > 0 && last.byAlipay == 0 && state == breaker.StateClosed,
		"wxpay serves again at the end",
		fmt.Sprintf("last second: %d via wxpay, %d via alipay; wxpay's breaker %v", last.byWxpay, last.byAlipay, state))

	if len(failed) > 0 {
		return fmt.Errorf("checks failed: %s", strings.Join(failed, "; "))
	}
	return nil
}

// sleep waits for d or until ctx is done, and reports whether it waited.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

type payment struct {
	card  int
	cents int
}

type receipt struct {
	gateway string
	card    int
}

// gateway simulates a payment gateway: it answers after its latency,
// fails a share of calls (half with a 503, half by hanging until the
// caller gives up) and declines one card in declineEvery.
type gateway struct {
	name    string
	latency time.Duration

	mu          sync.Mutex
	failureRate float64
	rng         *rand.Rand
}

func newGateway(name string, latency time.Duration, seed uint64) *gateway {
	return &gateway{name: name, latency: latency, rng: rand.New(rand.NewPCG(seed, 0))}
}

func (g *gateway) setFailureRate(r float64) {
	g.mu.Lock()
	g.failureRate = r
	g.mu.Unlock()
}

func (g *gateway) charge(ctx context.Context, p payment) (receipt, error) {
	g.mu.Lock()
	fail := g.rng.Float64() < g.failureRate
	hang := fail && g.rng.IntN(2) == 0
	g.mu.Unlock()
	if hang {
		<-ctx.Done()
		return receipt{}, ctx.Err()
	}
	if !sleep(ctx, g.latency) {
		return receipt{}, ctx.Err()
	}
	switch {
	case fail:
		return receipt{}, fmt.Errorf("%s: %w", g.name, errUnavailable)
	case p.card%declineEvery == 0:
		return receipt{}, breaker.Final(fmt.Errorf("%s: card %d: %w", g.name, p.card, errDeclined))
	}
	return receipt{gateway: g.name, card: p.card}, nil
}
