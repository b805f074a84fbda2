package breaker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/internal/israce"
)

var (
	errGateway503   = errors.New("gateway: 503 service unavailable")
	errCardDeclined = errors.New("gateway: card declined")
)

// payGateway is a fake provider whose behaviour a test sets and changes.
type payGateway struct {
	name  string
	calls atomic.Int64

	mu     sync.Mutex
	answer func(ctx context.Context) (string, error)
}

func newPayGateway(name string) *payGateway {
	g := &payGateway{name: name}
	g.serve()
	return g
}

func (g *payGateway) set(answer func(ctx context.Context) (string, error)) {
	g.mu.Lock()
	g.answer = answer
	g.mu.Unlock()
}

// serve makes the gateway answer at once with its name.
func (g *payGateway) serve() {
	g.set(func(context.Context) (string, error) { return "paid by " + g.name, nil })
}

// fail makes the gateway fail with err.
func (g *payGateway) fail(err error) {
	g.set(func(context.Context) (string, error) { return "", err })
}

// slow makes the gateway answer after d unless its context ends first.
func (g *payGateway) slow(d time.Duration, err error) {
	g.set(func(ctx context.Context) (string, error) {
		select {
		case <-time.After(d):
			if err != nil {
				return "", err
			}
			return "paid by " + g.name, nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	})
}

func (g *payGateway) call(ctx context.Context) (string, error) {
	g.calls.Add(1)
	g.mu.Lock()
	answer := g.answer
	g.mu.Unlock()
	return answer(ctx)
}

// payPair is a primary and a backup gateway behind a failover.
type payPair struct {
	primary, backup *payGateway
	f               *breaker.Failover[string]
}

func newPayPair(t *testing.T, opts ...breaker.FailoverOption) *payPair {
	t.Helper()
	p := &payPair{primary: newPayGateway("primary"), backup: newPayGateway("backup")}
	p.f = breaker.NewFailover("payments",
		[]breaker.Provider[string]{{Name: "primary"}, {Name: "backup"}}, opts...)
	return p
}

func (p *payPair) call(ctx context.Context, provider string) (string, error) {
	switch provider {
	case "primary":
		return p.primary.call(ctx)
	case "backup":
		return p.backup.call(ctx)
	}
	return "", fmt.Errorf("unknown provider %q", provider)
}

func (p *payPair) execute(ctx context.Context) (breaker.Result[string], error) {
	return p.f.Execute(ctx, p.call)
}

// attemptsOf renders a result's attempts as "provider:outcome" words.
func attemptsOf(res breaker.Result[string]) string {
	var words []string
	for _, a := range res.Attempts() {
		words = append(words, a.Provider+":"+a.Outcome.String())
	}
	return strings.Join(words, " ")
}

func TestFailoverPrimaryServes(t *testing.T) {
	p := newPayPair(t)
	res, err := p.execute(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Value != "paid by primary" || res.Provider != "primary" || attemptsOf(res) != "primary:success" {
		t.Errorf("got %q from %q with %s", res.Value, res.Provider, attemptsOf(res))
	}
	if n := p.backup.calls.Load(); n != 0 {
		t.Errorf("backup called %d times", n)
	}
}

func TestFailoverProviderFailureMovesOn(t *testing.T) {
	p := newPayPair(t)
	p.primary.fail(errGateway503)
	res, err := p.execute(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Value != "paid by backup" || res.Provider != "backup" {
		t.Errorf("got %q from %q", res.Value, res.Provider)
	}
	if got := attemptsOf(res); got != "primary:failure backup:success" {
		t.Errorf("attempts %s", got)
	}
	if a := res.Attempts()[0]; !errors.Is(a.Err, errGateway503) {
		t.Errorf("primary's attempt has error %v", a.Err)
	}
	if c := p.f.Breaker("primary").Counts(); c.TotalFailures != 1 {
		t.Errorf("primary's breaker counted %+v, want one failure", c)
	}
}

// A declined payment is the primary's correct answer: it must come back to
// the caller, never be re-sent to the backup, and never count against the
// primary's breaker, however many there are.
func TestFailoverFinalAnswerNeverFailsOver(t *testing.T) {
	p := newPayPair(t)
	p.primary.set(func(context.Context) (string, error) {
		return "declined: insufficient funds", breaker.Final(errCardDeclined)
	})
	for i := range 20 {
		res, err := p.execute(context.Background())
		if !errors.Is(err, errCardDeclined) || !errors.Is(err, breaker.ErrFinal) {
			t.Fatalf("call %d: error %v, want the decline marked final", i, err)
		}
		if errors.Is(err, breaker.ErrAllFailed) {
			t.Fatalf("call %d: a final answer reported as all failed", i)
		}
		if err.Error() != errCardDeclined.Error() {
			t.Errorf("message %q, want the provider's own", err)
		}
		if res.Provider != "primary" || res.Value != "declined: insufficient funds" || attemptsOf(res) != "primary:final" {
			t.Fatalf("call %d: %q from %q with %s", i, res.Value, res.Provider, attemptsOf(res))
		}
	}
	if n := p.backup.calls.Load(); n != 0 {
		t.Errorf("a declined payment reached the backup %d times", n)
	}
	br := p.f.Breaker("primary")
	if s := br.State(); s != breaker.StateClosed {
		t.Errorf("primary's breaker is %v after declines", s)
	}
	if c := br.Counts(); c.TotalFailures != 0 || c.TotalSuccesses != 20 {
		t.Errorf("primary's breaker counted %+v, want 20 successes", c)
	}
}

func TestFailoverWithFinal(t *testing.T) {
	errInvalidAddress := errors.New("maps: invalid address")
	p := newPayPair(t, breaker.WithFinal(func(err error) bool { return errors.Is(err, errInvalidAddress) }))
	p.primary.fail(fmt.Errorf("geocode: %w", errInvalidAddress))
	res, err := p.execute(context.Background())
	if !errors.Is(err, errInvalidAddress) || res.Provider != "primary" || attemptsOf(res) != "primary:final" {
		t.Fatalf("got %v from %q with %s", err, res.Provider, attemptsOf(res))
	}
	if p.backup.calls.Load() != 0 {
		t.Error("a final answer reached the backup")
	}

	// Other errors still fail over.
	p.primary.fail(errGateway503)
	if res, err := p.execute(context.Background()); err != nil || res.Provider != "backup" {
		t.Fatalf("got %v from %q", err, res.Provider)
	}
}

// The story of an outage: the primary goes down, its breaker opens and the
// backup serves without the primary being called; the primary comes back,
// and after the open timeout the first call probes it, finds it well and
// the primary serves again.
func TestFailoverPrimaryDownAndBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPayPair(t, breaker.WithProviderOptions(
			breaker.WithTripPolicy(breaker.ConsecutiveFailures(3)),
			breaker.WithOpenTimeout(10*time.Second)))
		ctx := context.Background()
		primary := p.f.Breaker("primary")

		p.primary.fail(errGateway503)
		for i := range 3 {
			res, err := p.execute(ctx)
			if err != nil || res.Provider != "backup" || attemptsOf(res) != "primary:failure backup:success" {
				t.Fatalf("call %d: %v from %q with %s", i, err, res.Provider, attemptsOf(res))
			}
		}
		if s := primary.State(); s != breaker.StateOpen {
			t.Fatalf("primary's breaker is %v after 3 failures", s)
		}

		// Open: the primary is skipped, not called.
		p.primary.serve() // it recovers, but its breaker does not know yet
		before := p.primary.calls.Load()
		time.Sleep(9 * time.Second)
		res, err := p.execute(ctx)
		if err != nil || res.Provider != "backup" || attemptsOf(res) != "primary:skipped backup:success" {
			t.Fatalf("while open: %v from %q with %s", err, res.Provider, attemptsOf(res))
		}
		if a := res.Attempts()[0]; !errors.Is(a.Err, breaker.ErrOpen) || a.Duration != 0 {
			t.Errorf("skipped attempt %+v, want a rejection matching ErrOpen", a)
		}
		if n := p.primary.calls.Load() - before; n != 0 {
			t.Errorf("open breaker let %d calls through to the primary", n)
		}

		// After the open timeout the next call is the probe.
		time.Sleep(time.Second + time.Millisecond)
		res, err = p.execute(ctx)
		if err != nil || res.Provider != "primary" || attemptsOf(res) != "primary:success" {
			t.Fatalf("probe: %v from %q with %s", err, res.Provider, attemptsOf(res))
		}
		if s := primary.State(); s != breaker.StateClosed {
			t.Errorf("primary's breaker is %v after a good probe", s)
		}
		backupCalls := p.backup.calls.Load()
		for range 5 {
			if res, err := p.execute(ctx); err != nil || res.Provider != "primary" {
				t.Fatalf("after recovery: %v from %q", err, res.Provider)
			}
		}
		if n := p.backup.calls.Load() - backupCalls; n != 0 {
			t.Errorf("backup called %d times after the primary recovered", n)
		}
	})
}

// While the half-open primary's probe is in flight, other calls skip it
// and go to the backup instead of waiting.
func TestFailoverProbeInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPayPair(t, breaker.WithProviderOptions(
			breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)),
			breaker.WithOpenTimeout(time.Second)))
		p.primary.fail(errGateway503)
		if _, err := p.execute(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second + time.Millisecond)
		p.primary.slow(100*time.Millisecond, nil)

		probe := make(chan breaker.Result[string])
		go func() {
			res, _ := p.execute(context.Background())
			probe <- res
		}()
		synctest.Wait() // the probe is inside the primary
		res, err := p.execute(context.Background())
		if err != nil || attemptsOf(res) != "primary:skipped backup:success" {
			t.Fatalf("during the probe: %v with %s", err, attemptsOf(res))
		}
		if a := res.Attempts()[0]; !errors.Is(a.Err, breaker.ErrTooManyRequests) {
			t.Errorf("skipped with %v, want ErrTooManyRequests", a.Err)
		}
		if res := <-probe; res.Provider != "primary" {
			t.Errorf("probe served by %q", res.Provider)
		}
	})
}

func TestFailoverAttemptTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPayPair(t, breaker.WithAttemptTimeout(time.Second))
		p.primary.slow(time.Hour, nil)
		start := time.Now()
		res, err := p.execute(context.Background())
		if err != nil || res.Provider != "backup" || attemptsOf(res) != "primary:failure backup:success" {
			t.Fatalf("%v from %q with %s", err, res.Provider, attemptsOf(res))
		}
		if d := time.Since(start); d != time.Second {
			t.Errorf("took %v, want the attempt timeout", d)
		}
		a := res.Attempts()[0]
		if !errors.Is(a.Err, context.DeadlineExceeded) || a.Duration != time.Second {
			t.Errorf("primary's attempt %+v, want a deadline after 1s", a)
		}
		if c := p.f.Breaker("primary").Counts(); c.TotalFailures != 1 {
			t.Errorf("a timed-out attempt counted %+v, want a failure", c)
		}
	})
}

func TestFailoverCallerCancel(t *testing.T) {
	for name, opts := range map[string][]breaker.FailoverOption{
		"plain":           nil,
		"attempt-timeout": {breaker.WithAttemptTimeout(time.Minute)},
		"hedged":          {breaker.WithHedge(time.Minute)},
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := newPayPair(t, opts...)
				p.primary.slow(time.Hour, nil)
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(time.Second, cancel)
				start := time.Now()
				res, err := p.execute(ctx)
				if !errors.Is(err, context.Canceled) || errors.Is(err, breaker.ErrAllFailed) {
					t.Errorf("error %v, want ctx.Err()", err)
				}
				if d := time.Since(start); d != time.Second {
					t.Errorf("returned %v after the call began, want at the cancel", d)
				}
				if attemptsOf(res) != "primary:cancelled" || res.Provider != "" {
					t.Errorf("attempts %s, served by %q", attemptsOf(res), res.Provider)
				}
				if n := p.backup.calls.Load(); n != 0 {
					t.Errorf("backup called %d times after the caller cancelled", n)
				}
				if c := p.f.Breaker("primary").Counts(); c.TotalFailures != 0 {
					t.Errorf("a cancelled call counted against the primary: %+v", c)
				}

				// A context done before the call asks nobody.
				res, err = p.execute(ctx)
				if !errors.Is(err, context.Canceled) || len(res.Attempts()) != 0 || p.primary.calls.Load() != 1 {
					t.Errorf("done context: %v, %s, %d primary calls", err, attemptsOf(res), p.primary.calls.Load())
				}
			})
		})
	}
}

func TestFailoverHealthyPrimaryDoesNotAllocate(t *testing.T) {
	if israce.Enabled {
		t.Skip("the race detector allocates")
	}
	f := breaker.NewFailover("alloc", []breaker.Provider[int]{{Name: "primary"}, {Name: "backup"}})
	ctx := context.Background()
	if n := testing.AllocsPerRun(1000, func() { _, _ = f.Execute(ctx, instantQuote) }); n != 0 {
		t.Errorf("a call the primary serves allocates %v times", n)
	}
	f.Breaker("primary").ForceOpen()
	if n := testing.AllocsPerRun(1000, func() { _, _ = f.Execute(ctx, instantQuote) }); n != 0 {
		t.Errorf("a call the backup serves past the open primary allocates %v times", n)
	}
}

// The caller's deadline ends the call as a cancel does, but counts against
// the provider that used up the caller's time, as Breaker does.
func TestFailoverCallerDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPayPair(t)
		p.primary.slow(time.Hour, nil)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		res, err := p.execute(ctx)
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, breaker.ErrAllFailed) {
			t.Errorf("error %v, want ctx.Err()", err)
		}
		if attemptsOf(res) != "primary:failure" || p.backup.calls.Load() != 0 {
			t.Errorf("attempts %s, %d backup calls", attemptsOf(res), p.backup.calls.Load())
		}
	})
}

func TestFailoverAllOpen(t *testing.T) {
	p := newPayPair(t)
	p.f.Breaker("primary").ForceOpen()
	p.f.Breaker("backup").ForceOpen()
	res, err := p.execute(context.Background())
	if !errors.Is(err, breaker.ErrAllFailed) || !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("error %v, want ErrAllFailed and ErrOpen", err)
	}
	if attemptsOf(res) != "primary:skipped backup:skipped" || res.Provider != "" {
		t.Errorf("attempts %s, served by %q", attemptsOf(res), res.Provider)
	}
	if p.primary.calls.Load()+p.backup.calls.Load() != 0 {
		t.Error("a provider behind an open breaker was called")
	}
	want := "failover payments: all providers failed: primary: breaker payments/primary: forced open; backup: breaker payments/backup: forced open"
	if err.Error() != want {
		t.Errorf("message\n%q, want\n%q", err, want)
	}
}

func TestFailoverAllFailed(t *testing.T) {
	errTimeout := errors.New("backup: i/o timeout")
	p := newPayPair(t)
	p.primary.fail(errGateway503)
	p.backup.fail(errTimeout)
	res, err := p.execute(context.Background())
	if !errors.Is(err, breaker.ErrAllFailed) || !errors.Is(err, errTimeout) {
		t.Fatalf("error %v, want ErrAllFailed and the last provider's error", err)
	}
	if errors.Is(err, breaker.ErrOpen) {
		t.Error("error matches ErrOpen though both providers were called")
	}
	if attemptsOf(res) != "primary:failure backup:failure" {
		t.Errorf("attempts %s", attemptsOf(res))
	}

	// The backup was called and failed after the open primary was skipped:
	// the backup's failure decides, not the rejection.
	p.f.Breaker("primary").ForceOpen()
	_, err = p.execute(context.Background())
	if !errors.Is(err, breaker.ErrAllFailed) || !errors.Is(err, errTimeout) || errors.Is(err, breaker.ErrOpen) {
		t.Errorf("error %v, want the backup's failure", err)
	}
	// A failure then a rejection: the failure decides.
	p.f.Breaker("primary").Reset()
	p.f.Breaker("backup").ForceOpen()
	_, err = p.execute(context.Background())
	if !errors.Is(err, errGateway503) || errors.Is(err, breaker.ErrOpen) {
		t.Errorf("error %v, want the primary's failure", err)
	}
}

func TestFailoverManyProviders(t *testing.T) {
	var names []string
	var providers []breaker.Provider[string]
	for i := range 7 {
		names = append(names, fmt.Sprintf("p%d", i))
		providers = append(providers, breaker.Provider[string]{Name: names[i]})
	}
	f := breaker.NewFailover("many", providers)
	if got := f.Providers(); !slices.Equal(got, names) {
		t.Errorf("Providers() = %v", got)
	}
	res, err := f.Execute(context.Background(), func(_ context.Context, provider string) (string, error) {
		if provider != "p6" {
			return "", fmt.Errorf("%s down", provider)
		}
		return "ok", nil
	})
	if err != nil || res.Provider != "p6" || len(res.Attempts()) != 7 {
		t.Fatalf("%v from %q with %s", err, res.Provider, attemptsOf(res))
	}
	for i, a := range res.Attempts() {
		if a.Provider != names[i] {
			t.Errorf("attempt %d is %q", i, a.Provider)
		}
	}
}

func TestFailoverOwnBreaker(t *testing.T) {
	own := breaker.New[string]("shared-wxpay", breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)))
	f := breaker.NewFailover("payments", []breaker.Provider[string]{{Name: "primary", Breaker: own}, {Name: "backup"}})
	if f.Breaker("primary") != own || f.Breaker("backup").Name() != "payments/backup" || f.Breaker("nope") != nil {
		t.Fatal("Breaker does not return the providers' breakers")
	}
	_, _ = f.Execute(context.Background(), func(_ context.Context, provider string) (string, error) {
		if provider == "primary" {
			return "", errGateway503
		}
		return "ok", nil
	})
	if own.State() != breaker.StateOpen {
		t.Errorf("own breaker is %v after one failure with ConsecutiveFailures(1)", own.State())
	}
}

func TestFailoverHedge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPayPair(t, breaker.WithHedge(100*time.Millisecond))
		var primaryReturned atomic.Bool
		p.primary.set(func(ctx context.Context) (string, error) {
			defer primaryReturned.Store(true)
			select {
			case <-time.After(time.Second):
				return "paid by primary", nil
			case <-ctx.Done():
				time.Sleep(10 * time.Millisecond) // slow to notice
				return "", ctx.Err()
			}
		})
		p.backup.slow(50*time.Millisecond, nil)

		start := time.Now()
		res, err := p.execute(context.Background())
		if err != nil || res.Provider != "backup" || res.Value != "paid by backup" {
			t.Fatalf("%v, %q from %q", err, res.Value, res.Provider)
		}
		if !primaryReturned.Load() {
			t.Error("Execute returned before the cancelled primary did")
		}
		if d := time.Since(start); d != 160*time.Millisecond {
			t.Errorf("took %v, want the hedge delay, the backup's 50ms and the loser's 10ms", d)
		}
		if got := attemptsOf(res); got != "primary:cancelled backup:success" {
			t.Errorf("attempts %s", got)
		}
		if c := p.f.Breaker("primary").Counts(); c.TotalFailures != 0 || c.TotalSuccesses != 0 {
			t.Errorf("the cancelled loser was counted: %+v", c)
		}
		// synctest.Test fails if a goroutine of the call outlived it.
	})
}

func TestFailoverHedgeFastPrimary(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPayPair(t, breaker.WithHedge(100*time.Millisecond))
		p.primary.slow(99*time.Millisecond, nil)
		res, err := p.execute(context.Background())
		if err != nil || res.Provider != "primary" || attemptsOf(res) != "primary:success" {
			t.Fatalf("%v from %q with %s", err, res.Provider, attemptsOf(res))
		}
		if p.backup.calls.Load() != 0 {
			t.Error("backup asked though the primary answered within the delay")
		}
	})
}

// A failure moves on at once; the hedge delay is only for slow answers.
func TestFailoverHedgeFailureMovesOnAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPayPair(t, breaker.WithHedge(time.Second))
		p.primary.slow(10*time.Millisecond, errGateway503)
		p.backup.slow(10*time.Millisecond, nil)
		start := time.Now()
		res, err := p.execute(context.Background())
		if err != nil || attemptsOf(res) != "primary:failure backup:success" {
			t.Fatalf("%v with %s", err, attemptsOf(res))
		}
		if d := time.Since(start); d != 20*time.Millisecond {
			t.Errorf("took %v, want 20ms", d)
		}
	})
}

func TestFailoverHedgeFinal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPayPair(t, breaker.WithHedge(100*time.Millisecond))
		p.primary.slow(time.Hour, nil)
		p.backup.set(func(ctx context.Context) (string, error) {
			time.Sleep(10 * time.Millisecond)
			return "", breaker.Final(errCardDeclined)
		})
		res, err := p.execute(context.Background())
		if !errors.Is(err, errCardDeclined) || res.Provider != "backup" || attemptsOf(res) != "primary:cancelled backup:final" {
			t.Fatalf("%v from %q with %s", err, res.Provider, attemptsOf(res))
		}
	})
}

func TestFailoverHedgeAllFailed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPayPair(t, breaker.WithHedge(100*time.Millisecond), breaker.WithAttemptTimeout(time.Second))
		p.primary.slow(time.Hour, nil)
		p.backup.fail(errGateway503)
		start := time.Now()
		res, err := p.execute(context.Background())
		if !errors.Is(err, breaker.ErrAllFailed) || attemptsOf(res) != "primary:failure backup:failure" {
			t.Fatalf("%v with %s", err, attemptsOf(res))
		}
		if d := time.Since(start); d != time.Second {
			t.Errorf("took %v, want the primary's attempt timeout", d)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %v, want the last failure (the primary's timeout)", err)
		}
	})
}

func TestFailoverHedgeSkipsOpen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPayPair(t, breaker.WithHedge(time.Second))
		p.f.Breaker("primary").ForceOpen()
		res, err := p.execute(context.Background())
		if err != nil || attemptsOf(res) != "primary:skipped backup:success" {
			t.Fatalf("%v with %s", err, attemptsOf(res))
		}
		p.f.Breaker("backup").ForceOpen()
		if _, err := p.execute(context.Background()); !errors.Is(err, breaker.ErrOpen) || !errors.Is(err, breaker.ErrAllFailed) {
			t.Fatalf("all open: %v", err)
		}
	})
}

func TestFailoverHedgePanic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPayPair(t, breaker.WithHedge(100*time.Millisecond))
		p.primary.set(func(context.Context) (string, error) {
			time.Sleep(200 * time.Millisecond)
			panic("gateway bug")
		})
		p.backup.slow(time.Hour, nil)
		defer func() {
			if r := recover(); r != "gateway bug" {
				t.Errorf("recovered %v, want the provider's panic", r)
			}
			if c := p.f.Breaker("primary").Counts(); c.TotalFailures != 1 {
				t.Errorf("panic counted %+v, want a failure", c)
			}
		}()
		_, _ = p.execute(context.Background())
		t.Error("Execute returned instead of panicking")
	})
}

func TestFailoverPanic(t *testing.T) {
	p := newPayPair(t)
	p.primary.set(func(context.Context) (string, error) { panic("gateway bug") })
	defer func() {
		if r := recover(); r != "gateway bug" {
			t.Errorf("recovered %v, want the provider's panic", r)
		}
		if p.backup.calls.Load() != 0 {
			t.Error("backup called after the primary panicked")
		}
	}()
	_, _ = p.execute(context.Background())
	t.Error("Execute returned instead of panicking")
}

func TestFailoverMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	p := newPayPair(t, breaker.WithProviderOptions(
		breaker.WithMeterProvider(mp),
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(2))))
	ctx := context.Background()

	_, _ = p.execute(ctx) // primary success
	p.primary.fail(errGateway503)
	_, _ = p.execute(ctx) // primary failure, backup success
	_, _ = p.execute(ctx) // again; the primary's breaker opens
	_, _ = p.execute(ctx) // primary skipped, backup success
	p.f.Breaker("primary").Reset()
	p.primary.fail(breaker.Final(errCardDeclined))
	_, _ = p.execute(ctx) // primary final

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	found := false
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != "github.com/bulwarkgo/bulwark/breaker" {
			continue
		}
		for _, m := range sm.Metrics {
			if m.Name != "bulwark.breaker.failover.attempts" {
				continue
			}
			found = true
			if m.Unit != "{attempt}" {
				t.Errorf("unit %q", m.Unit)
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				name, _ := dp.Attributes.Value("bulwark.breaker.failover.name")
				prov, _ := dp.Attributes.Value("bulwark.breaker.failover.provider")
				out, _ := dp.Attributes.Value("bulwark.breaker.failover.outcome")
				if name.AsString() != "payments" {
					t.Errorf("failover name %q", name.AsString())
				}
				got[prov.AsString()+"/"+out.AsString()] += dp.Value
			}
		}
	}
	if !found {
		t.Fatal("no bulwark.breaker.failover.attempts metric")
	}
	want := map[string]int64{
		"primary/success": 1, "primary/failure": 2, "primary/skipped": 1, "primary/final": 1,
		"backup/success": 3,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("data points %v, want %v", got, want)
	}
}

func TestNewFailoverInvalid(t *testing.T) {
	two := []breaker.Provider[string]{{Name: "a"}, {Name: "b"}}
	if err := breaker.ValidateFailoverOptions(breaker.WithHedge(time.Second)); err != nil {
		t.Errorf("ValidateFailoverOptions of a valid option: %v", err)
	}
	for _, tc := range []struct {
		field     string
		providers []breaker.Provider[string]
		opts      []breaker.FailoverOption
	}{
		{"providers must not be empty", nil, nil},
		{"providers[1].Name must not be empty", []breaker.Provider[string]{{Name: "a"}, {}}, nil},
		{"providers[2].Name duplicates providers[0].Name", []breaker.Provider[string]{{Name: "a"}, {Name: "b"}, {Name: "a"}}, nil},
		{"WithAttemptTimeout must be positive", two, []breaker.FailoverOption{breaker.WithAttemptTimeout(0)}},
		{"WithHedge must be positive", two, []breaker.FailoverOption{breaker.WithHedge(-time.Second)}},
		{"WithFinal must not be nil", two, []breaker.FailoverOption{breaker.WithFinal(nil)}},
		{"WithProviderOptions: ", two, []breaker.FailoverOption{breaker.WithProviderOptions(breaker.WithOpenTimeout(0))}},
		{"opts[1] must not be nil", two, []breaker.FailoverOption{breaker.WithHedge(time.Second), nil}},
	} {
		t.Run(tc.field, func(t *testing.T) {
			if tc.opts != nil {
				if err := breaker.ValidateFailoverOptions(tc.opts...); !errors.Is(err, breaker.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
					t.Errorf("ValidateFailoverOptions: %v, want ErrInvalidConfig naming %q", err, tc.field)
				}
			}
			defer func() {
				err, _ := recover().(error)
				if !errors.Is(err, breaker.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
					t.Errorf("panicked with %v, want ErrInvalidConfig naming %q", err, tc.field)
				}
			}()
			breaker.NewFailover("f", tc.providers, tc.opts...)
		})
	}
}

// Many callers through a flapping primary: a card the primary declined is
// never sent to the backup, and every call ends with a value, a decline or
// ErrAllFailed. Run with -race.
func TestFailoverConcurrent(t *testing.T) {
	for _, hedged := range []bool{false, true} {
		t.Run(fmt.Sprintf("hedge=%v", hedged), func(t *testing.T) {
			opts := []breaker.FailoverOption{breaker.WithProviderOptions(
				breaker.WithTripPolicy(breaker.ConsecutiveFailures(2)),
				breaker.WithOpenTimeout(time.Millisecond))}
			if hedged {
				opts = append(opts, breaker.WithHedge(50*time.Microsecond))
			}
			f := breaker.NewFailover("payments", []breaker.Provider[string]{{Name: "primary"}, {Name: "backup"}}, opts...)
			var primaryDown atomic.Bool
			var resent atomic.Int64
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					for i := range 300 {
						card := g*1000 + i
						if g == 0 && i%50 == 0 {
							primaryDown.Store(!primaryDown.Load())
						}
						var primaryDeclined atomic.Bool
						res, err := f.Execute(context.Background(), func(ctx context.Context, provider string) (string, error) {
							switch {
							case provider == "primary" && primaryDown.Load():
								return "", errGateway503
							case provider == "backup" && primaryDeclined.Load():
								resent.Add(1)
							case card%5 == 0:
								if provider == "primary" {
									primaryDeclined.Store(true)
								}
								return "", breaker.Final(errCardDeclined)
							}
							return provider, nil
						})
						if err != nil && !errors.Is(err, errCardDeclined) && !errors.Is(err, breaker.ErrAllFailed) {
							t.Errorf("card %d: %v", card, err)
						}
						if err == nil && res.Value != res.Provider {
							t.Errorf("card %d: value %q from %q", card, res.Value, res.Provider)
						}
					}
				})
			}
			wg.Wait()
			// A hedge may be on its way to the backup before the primary
			// declines; that is why hedging is only for idempotent calls.
			if n := resent.Load(); n != 0 && !hedged {
				t.Errorf("%d cards declined by the primary were sent to the backup", n)
			}
		})
	}
}
