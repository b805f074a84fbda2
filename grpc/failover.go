package bulwarkgrpc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Target is one of the connections of a [Failover], given in order of
// preference: the first is the primary.
type Target struct {
	// Name identifies the target in its breaker's name (failover + "/" +
	// Name), in metrics and in messages. It must be non-empty and unique
	// within the Failover.
	Name string
	// Conn is the connection to the target: a *grpc.ClientConn, or
	// anything else that makes calls.
	Conn grpc.ClientConnInterface
	// Breaker guards the target. Nil (the usual case) makes one from the
	// options given with [WithTargetOptions].
	Breaker *breaker.Breaker[struct{}]
}

// FailoverOption configures a [Failover]. [WithFailureCodes] is one too.
type FailoverOption interface{ applyFailover(*failoverConfig) }

type failoverConfig struct {
	clientConfig
	breakerOpts    []breaker.FailoverOption
	attemptTimeout bool
}

type failoverOption func(*failoverConfig)

func (f failoverOption) applyFailover(c *failoverConfig) { f(c) }

// WithAttemptTimeout bounds each unary attempt of a [Failover]: a target
// that has not answered within d is abandoned, counted as a failure, and
// the next is asked, while the caller's deadline still bounds the whole
// call. d must be positive. By default an attempt is bounded only by the
// caller's deadline, so a hanging primary takes all of it. It does not
// apply to streams, which live on after they open.
//
// An answer decides by what it is, not by the clock: a final answer
// (NotFound) that arrives as the attempt's time runs out is still
// returned, never sent to the next target. With an attempt timeout a
// DeadlineExceeded counts as a failure whatever [WithFailureCodes] says,
// whether the client's timer or the server, which gets the attempt's
// deadline, ran out first.
func WithAttemptTimeout(d time.Duration) FailoverOption {
	return failoverOption(func(c *failoverConfig) {
		c.breakerOpts = append(c.breakerOpts, breaker.WithAttemptTimeout(d))
		c.attemptTimeout = true
	})
}

// WithTargetOptions sets the options of the breakers a [Failover] makes
// for its targets (those without a Breaker of their own): trip policy,
// open timeout, meter provider. Several uses add up. The default is
// breaker.New's defaults: open after 5 failures in a row, probe after 30
// seconds.
func WithTargetOptions(opts ...breaker.Option) FailoverOption {
	return failoverOption(func(c *failoverConfig) {
		c.breakerOpts = append(c.breakerOpts, breaker.WithProviderOptions(opts...))
	})
}

// Failover is a connection over several targets, primary first, that
// sends each call to the first whose breaker admits it, through
// [breaker.Failover]: while the primary fails, calls go to the backup, and
// back to the primary once its breaker lets a probe through and the probe
// succeeds. It implements grpc.ClientConnInterface, so generated clients
// take it in place of a *grpc.ClientConn:
//
//	client := shopv1.NewShopClient(failover)
//
// A call that ends with a failure code (see [WithFailureCodes]: by default
// Unavailable, DeadlineExceeded and Internal) counts against its target's
// breaker and is sent to the next target. Any other answer is final: an
// InvalidArgument, a NotFound, a declined payment is returned to the
// caller at once, counts for the target, and is never sent to another.
// So are, whatever their code, the refusals of this package's server
// interceptors but [ReasonQueueUnavailable] (a feature off for this
// caller, a quota, a full waiting room, a [ConcurrencyLimit] shedding
// load, which a backup would meet likewise or have moved onto it), and
// the errors gRPC raises in the client before the call leaves, which
// every target would get; see the package documentation, "What the
// client counts against a server".
//
// When no target serves, the error's status (its GRPCStatus, what
// status.FromError and status.Code see, and what a server that returns
// the error sends on) is the last target's failure as it is: code,
// message and details, such as its ErrorInfo and RetryInfo. When every
// breaker was open it is codes.Unavailable with a message naming the
// failover. The error matches [breaker.ErrAllFailed] with errors.Is, and
// the last failure, or [breaker.ErrOpen] when every breaker refused; its
// Error text alone says that the failover gave up and which target
// failed last. A call whose caller's context ends gets codes.Canceled or
// codes.DeadlineExceeded.
//
// A failure is not proof that nothing happened: a call that timed out at
// the primary may have taken effect there. Fail over calls that change
// something only with an idempotency key the targets honour.
//
// A stream goes to the first target whose breaker admits it and that
// opens it (gRPC opens a stream without waiting for the server, so this
// skips targets whose connection is down); once open, it stays with its
// target, and counts for that target's breaker as with a
// [CircuitBreaker]: once the server has answered, or by its status if it
// ends first. Streams are not counted in the failover's attempts metric.
//
// The call options go to every attempt, except grpc.OnFinish, whose
// callback runs once per call, with the error the caller gets (for a
// stream, at the end of the stream the caller gets). Options that gRPC
// fills in after an attempt (grpc.Header, grpc.Trailer, grpc.Peer) hold
// what the last attempt received. Interceptors of the targets'
// connections apply to each attempt.
//
// A Failover does not own its connections: close them yourself. It is
// safe for concurrent use, and a unary call the primary serves costs no
// allocation beyond gRPC's own, unless it has a grpc.OnFinish option
// (which costs two small slices).
type Failover struct {
	failover       *breaker.Failover[struct{}]
	targets        []failoverTarget
	failure        failureCodes
	attemptTimeout bool
}

type failoverTarget struct {
	name    string
	conn    grpc.ClientConnInterface
	breaker *breaker.Breaker[struct{}]
}

var _ grpc.ClientConnInterface = (*Failover)(nil)

// NewFailover returns a Failover called name over targets, the first being
// the primary. Errors match [ErrInvalidConfig] and name the bad field or
// option.
func NewFailover(name string, targets []Target, opts ...FailoverOption) (*Failover, error) {
	c := failoverConfig{clientConfig: newClientConfig()}
	for i, o := range opts {
		if o == nil {
			return nil, configError(fmt.Sprintf("opts[%d]", i), "must not be nil", nil)
		}
		o.applyFailover(&c)
	}
	if c.err != nil {
		return nil, c.err
	}
	if name == "" {
		return nil, configError("NewFailover name", "must not be empty", nil)
	}
	if len(targets) == 0 {
		return nil, configError("NewFailover targets", "must not be empty", nil)
	}
	providers := make([]breaker.Provider[struct{}], len(targets))
	seen := make(map[string]bool, len(targets))
	for i, t := range targets {
		field := fmt.Sprintf("NewFailover targets[%d]", i)
		switch {
		case t.Name == "":
			return nil, configError(field+".Name", "must not be empty", nil)
		case seen[t.Name]:
			return nil, configError(field+".Name", "must be unique", quote(t.Name))
		case t.Conn == nil:
			return nil, configError(field+".Conn", "must not be nil", nil)
		}
		seen[t.Name] = true
		providers[i] = breaker.Provider[struct{}]{Name: t.Name, Breaker: t.Breaker}
	}
	if err := breaker.ValidateFailoverOptions(c.breakerOpts...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	f := &Failover{
		failover:       breaker.NewFailover(name, providers, c.breakerOpts...),
		targets:        make([]failoverTarget, len(targets)),
		failure:        c.failure,
		attemptTimeout: c.attemptTimeout,
	}
	for i, t := range targets {
		f.targets[i] = failoverTarget{name: t.Name, conn: t.Conn, breaker: f.failover.Breaker(t.Name)}
	}
	return f, nil
}

// Breaker returns the breaker guarding the named target, or nil if there
// is no such target: to watch its state, or to force it open while the
// target is under maintenance.
func (f *Failover) Breaker(target string) *breaker.Breaker[struct{}] {
	return f.failover.Breaker(target)
}

func (f *Failover) target(name string) *failoverTarget {
	for i := range f.targets {
		if f.targets[i].name == name {
			return &f.targets[i]
		}
	}
	return nil // unreachable: the failover asks only its providers
}

// Invoke makes a unary call through the failover.
func (f *Failover) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	opts, onFinish := splitOnFinish(opts)
	c := unaryCalls.Get().(*unaryCall)
	c.f, c.method, c.args, c.reply, c.opts = f, method, args, reply, opts
	_, err := f.failover.Execute(ctx, c.attempt)
	answer, failed, last := c.answer, c.failed, c.target
	*c = unaryCall{attempt: c.attempt}
	unaryCalls.Put(c)
	switch {
	case err == nil:
	case answer != nil && errors.Is(err, breaker.ErrFinal):
		err = answer // as the target gave it, not wrapped
	case errors.Is(err, breaker.ErrAllFailed):
		err = f.allFailed(err, failed, last)
	default:
		err = contextStatus(err) // Execute returns nothing else
	}
	finished(onFinish, err)
	return err
}

// unaryCall is one call of Invoke. Calls are pooled, each with its attempt
// function bound once, so that a call the primary serves allocates nothing
// of its own: a closure over Invoke's arguments would be allocated every
// time. Execute makes its attempts in the caller's goroutine (hedging,
// which would not, is not offered), so a call is done with when Execute
// returns.
type unaryCall struct {
	f              *Failover
	method, target string
	args, reply    any
	opts           []grpc.CallOption
	answer, failed error
	attempt        func(ctx context.Context, target string) (struct{}, error)
}

var unaryCalls = sync.Pool{New: func() any {
	c := new(unaryCall)
	c.attempt = c.run
	return c
}}

// run is one attempt: the call to target. The answer decides whether the
// next target is asked, not the attempt's context: an answer that comes
// back as WithAttemptTimeout's timer fires is still an answer. When the
// caller's context has ended, Execute stops there whatever run returns.
func (c *unaryCall) run(ctx context.Context, target string) (struct{}, error) {
	err := c.f.target(target).conn.Invoke(ctx, c.method, c.args, c.reply, c.opts...)
	c.target = target
	if err == nil || c.f.failure.failed(ctx, c.args, c.opts, err) || c.cutOff(ctx, err) {
		c.failed = err
		return struct{}{}, err
	}
	c.answer = err
	return struct{}{}, breaker.Final(err)
}

// cutOff reports whether err, the error of an attempt in ctx, says that
// the attempt ran out of time or was abandoned rather than answered: a
// failure of the target whatever the failure codes. Under
// WithAttemptTimeout a DeadlineExceeded is one even before ctx ends: the
// server, which got the attempt's deadline, may give up a moment before
// the client does.
func (c *unaryCall) cutOff(ctx context.Context, err error) bool {
	switch status.Code(err) {
	case codes.DeadlineExceeded:
		return c.f.attemptTimeout || ctx.Err() != nil
	case codes.Canceled:
		return ctx.Err() != nil
	}
	return false
}

// NewStream opens a stream through the failover.
func (f *Failover) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	opts, onFinish := splitOnFinish(opts)
	var (
		failed, rejected error
		last             string
	)
	for i := range f.targets {
		t := &f.targets[i]
		done, err := t.breaker.Allow(ctx)
		if err != nil {
			if !errors.Is(err, breaker.ErrOpen) {
				err = contextStatus(err) // a done context
				finished(onFinish, err)
				return nil, err
			}
			rejected = err
			continue
		}
		attemptOpts, gate := opts, (*finishGate)(nil)
		if onFinish != nil {
			// gRPC calls OnFinish for a stream that fails to open too:
			// each attempt gets a gate that lets only the returned
			// stream's end through.
			gate = &finishGate{onFinish: onFinish}
			attemptOpts = append(opts[:len(opts):len(opts)], grpc.OnFinish(gate.attemptFinished))
		}
		cs, err := t.conn.NewStream(ctx, desc, method, attemptOpts...)
		gate.decide(err == nil)
		if err == nil {
			return newBreakerStream(ctx, cs, opts, done, &f.failure), nil
		}
		done(f.failure.report(ctx, nil, opts, err))
		if cerr := ctx.Err(); cerr != nil {
			err = contextStatus(cerr)
			finished(onFinish, err)
			return nil, err
		}
		if !f.failure.failed(ctx, nil, opts, err) {
			finished(onFinish, err)
			return nil, err // a final answer
		}
		failed, last = err, t.name
	}
	decisive := failed
	if decisive == nil {
		decisive = rejected
	}
	err := f.allFailed(fmt.Errorf("%w: %w", breaker.ErrAllFailed, decisive), failed, last)
	finished(onFinish, err)
	return nil, err
}

// allFailed is the error of a call no target served: err matches
// ErrAllFailed; failed is the failure of the last target asked, target,
// or nil if every breaker refused the call.
func (f *Failover) allFailed(err, failed error, target string) error {
	if failed == nil {
		msg := "failover " + f.failover.Name() + ": every target's breaker is open"
		return &failoverError{err: err, st: status.New(codes.Unavailable, msg), text: "rpc error: code = Unavailable desc = " + msg}
	}
	return &failoverError{
		err:  err,
		st:   status.Convert(failed),
		text: "failover " + f.failover.Name() + ": every target failed, the last, " + target + ", with: " + failed.Error(),
	}
}

// failoverError is the error of a call no target served: its status is
// the last target's failure as the target gave it, code, message and
// details, and it matches what err matches. Only its Error text says
// that a failover gave up, and where.
type failoverError struct {
	err  error
	st   *status.Status
	text string
}

func (e *failoverError) Error() string              { return e.text }
func (e *failoverError) GRPCStatus() *status.Status { return e.st }
func (e *failoverError) Unwrap() error              { return e.err }

// splitOnFinish takes the grpc.OnFinish options out of opts, so that the
// attempts do not each call them, and returns their callbacks. It
// allocates only when there are some.
func splitOnFinish(opts []grpc.CallOption) (_ []grpc.CallOption, onFinish []func(error)) {
	n := 0
	for _, o := range opts {
		if _, ok := o.(grpc.OnFinishCallOption); ok {
			n++
		}
	}
	if n == 0 {
		return opts, nil
	}
	rest := make([]grpc.CallOption, 0, len(opts)-n)
	onFinish = make([]func(error), 0, n)
	for _, o := range opts {
		if fo, ok := o.(grpc.OnFinishCallOption); ok {
			onFinish = append(onFinish, fo.OnFinish)
		} else {
			rest = append(rest, o)
		}
	}
	return rest, onFinish
}

// finished calls the OnFinish callbacks of a call with its error.
func finished(onFinish []func(error), err error) {
	for _, fn := range onFinish {
		fn(err)
	}
}

// finishGate passes the end of one attempt's stream on to the caller's
// OnFinish callbacks if that stream is the one the caller gets. gRPC may
// end the stream before NewStream has returned it (its context ended at
// once), so an end that comes first is kept until the attempt is decided.
type finishGate struct {
	onFinish []func(error)
	mu       sync.Mutex
	decided  bool
	kept     bool
	ended    bool
	err      error
}

// attemptFinished is the attempt's OnFinish callback.
func (g *finishGate) attemptFinished(err error) {
	g.mu.Lock()
	if !g.decided {
		g.ended, g.err = true, err
		g.mu.Unlock()
		return
	}
	kept := g.kept
	g.mu.Unlock()
	if kept {
		finished(g.onFinish, err)
	}
}

// decide says whether the attempt's stream is the one the caller gets.
// A nil gate does nothing.
func (g *finishGate) decide(kept bool) {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.decided, g.kept = true, kept
	ended, err := g.ended, g.err
	g.mu.Unlock()
	if kept && ended {
		finished(g.onFinish, err)
	}
}
