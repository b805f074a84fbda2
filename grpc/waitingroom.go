package bulwarkgrpc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bulwarkgo/bulwark/queue"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// WaitingRoomOption configures a [WaitingRoom]. [WithFilter] and
// [WithMessage] are its options too.
type WaitingRoomOption interface{ applyWaitingRoom(*waitingRoomConfig) }

type waitingRoomConfig struct {
	serverConfig
	retryAfter time.Duration
	margin     time.Duration
	messages   map[error]string // by refusal, from WithRoomMessage
}

type waitingRoomOption func(*waitingRoomConfig)

func (f waitingRoomOption) applyWaitingRoom(c *waitingRoomConfig) { f(c) }

// DefaultRoomRetryAfter is the retry delay a [WaitingRoom] advises with a
// refusal unless [WithRetryAfter] says otherwise, as queue.WaitMiddleware
// does.
const DefaultRoomRetryAfter = 10 * time.Second

// WithRetryAfter sets the delay in the errdetails.RetryInfo (and the
// grpc-retry-pushback-ms trailer) of a refusal by a [WaitingRoom]; it must
// be positive. The default is [DefaultRoomRetryAfter].
func WithRetryAfter(d time.Duration) WaitingRoomOption {
	return waitingRoomOption(func(c *waitingRoomConfig) {
		if d <= 0 {
			c.fail(configError("WithRetryAfter", "must be positive", d))
		}
		c.retryAfter = d
	})
}

// DefaultDeadlineMargin is how long before a caller's deadline a
// [WaitingRoom] gives up holding it in line, unless [WithDeadlineMargin]
// says otherwise.
const DefaultDeadlineMargin = 100 * time.Millisecond

// WithDeadlineMargin sets how long before the caller's deadline a
// [WaitingRoom] refuses a caller still in line, with ReasonWaitTimeout,
// and how much of the caller's remaining time its estimate of the wait
// must leave (see [WaitingRoom]). The refusal must reach the client
// before the client's own deadline ends the call, or the client sees
// DeadlineExceeded, which its breakers count against the server: make d
// longer than a round trip between client and server, with room to
// spare. d must not be negative; 0 holds callers until their deadline.
// The default is [DefaultDeadlineMargin].
func WithDeadlineMargin(d time.Duration) WaitingRoomOption {
	return waitingRoomOption(func(c *waitingRoomConfig) {
		if d < 0 {
			c.fail(configError("WithDeadlineMargin", "must not be negative", d))
		}
		c.margin = d
	})
}

// WithRoomMessage sets the status message of one refusal of a
// [WaitingRoom]: err is [queue.ErrFull], [queue.ErrWaitTooLong],
// [queue.ErrWaitTimeout] or [queue.ErrUnavailable] (which also stands for
// a closed room). It wins over [WithMessage]. The defaults are short
// English sentences.
func WithRoomMessage(err error, msg string) WaitingRoomOption {
	return waitingRoomOption(func(c *waitingRoomConfig) {
		if !isRoomRefusal(err) {
			c.fail(configError("WithRoomMessage err", "must be queue.ErrFull, ErrWaitTooLong, ErrWaitTimeout or ErrUnavailable", err))
			return
		}
		if c.messages == nil {
			c.messages = make(map[error]string)
		}
		c.messages[err] = msg
	})
}

// roomRefusals are the refusals of a room, with their code, reason and
// default message.
var roomRefusals = map[error]struct {
	code           codes.Code
	reason, defmsg string
}{
	queue.ErrFull:        {codes.ResourceExhausted, ReasonQueueFull, "The line is full. Please try again shortly."},
	queue.ErrWaitTooLong: {codes.ResourceExhausted, ReasonWaitTooLong, "The line is too long right now. Please try again shortly."},
	queue.ErrWaitTimeout: {codes.ResourceExhausted, ReasonWaitTimeout, "Sorry, your turn did not come in time. Please try again shortly."},
	queue.ErrUnavailable: {codes.Unavailable, ReasonQueueUnavailable, "The line is unavailable right now. Please try again shortly."},
}

// isRoomRefusal reports whether err is one of the sentinels of
// roomRefusals, comparing without hashing: err may be of any type.
func isRoomRefusal(err error) bool {
	for sentinel := range roomRefusals {
		if err == sentinel {
			return true
		}
	}
	return false
}

// WaitingRoom holds each call in a [queue.Room]'s line until the room
// admits it, then lets it through, and ends its admission (freeing its
// active slot, see queue.WithMaxActive) when the handler returns: the
// room's hold mode, [queue.Room.Wait], for gRPC. Callers are admitted in
// the order they arrived, at the room's rate. A stream waits when it
// opens and holds its admission until it ends.
//
// A caller's deadline bounds its wait, less a margin
// ([WithDeadlineMargin], by default [DefaultDeadlineMargin]): a caller
// whose estimated wait ([queue.Room.Stats]) is longer than the time it
// has left, less the margin, is refused at once with ReasonWaitTooLong,
// without joining the line, and one still in line when only the margin
// is left leaves it and is refused with ReasonWaitTimeout. Both are
// ResourceExhausted, sent while the client still waits for an answer:
// held to its deadline, the caller would get DeadlineExceeded instead,
// from its own side, which its breakers count as a failure of the
// server. This costs a call with a deadline a look at the line before it
// joins (a round trip to Redis for a shared room); a room that cannot
// report its line is asked to Wait anyway. The estimate is held against
// the deadline whatever queue.WithRejectTooLong says, which concerns the
// room's own maximum wait (queue.WithMaxWait); that applies as well.
//
// A caller that goes away while in line (its context is cancelled, or,
// with a margin of 0, its deadline passes) gives up its place to the next
// and gets codes.Canceled or codes.DeadlineExceeded. The room's refusals
// map to codes as follows, each with an errdetails.RetryInfo of the
// room's retry delay ([WithRetryAfter]), the same delay in the
// grpc-retry-pushback-ms trailer, and an errdetails.ErrorInfo whose
// reason tells them apart:
//
//	queue.ErrFull          ResourceExhausted  ReasonQueueFull
//	queue.ErrWaitTooLong   ResourceExhausted  ReasonWaitTooLong    also: the wait would outlast the deadline
//	queue.ErrWaitTimeout   ResourceExhausted  ReasonWaitTimeout    also: still in line near the deadline
//	queue.ErrUnavailable   Unavailable        ReasonQueueUnavailable
//	queue.ErrClosed        Unavailable        ReasonQueueUnavailable
//
// A full line and a long wait are the room doing its job for a service
// that is up, as a rate limit is: ResourceExhausted, which Bulwark's
// client side counts as an answer, never against the service (see the
// package documentation, "What the client counts against a server"). A
// room that cannot hold anyone, because its Redis is down or it is closed
// as the server shuts down, is Unavailable, and counts against the
// instance: another may serve.
//
// A WaitingRoom is safe for concurrent use. It does not own the room:
// close the room after the server has stopped.
type WaitingRoom struct {
	room     *queue.Room
	cfg      waitingRoomConfig
	refused  map[error]error // the status error of each refusal
	pushback string
}

// NewWaitingRoom returns a WaitingRoom that holds calls in room's line.
// Errors match [ErrInvalidConfig] and name the bad argument or option.
func NewWaitingRoom(room *queue.Room, opts ...WaitingRoomOption) (*WaitingRoom, error) {
	c := waitingRoomConfig{retryAfter: DefaultRoomRetryAfter, margin: DefaultDeadlineMargin}
	for i, o := range opts {
		if o == nil {
			return nil, configError(fmt.Sprintf("opts[%d]", i), "must not be nil", nil)
		}
		o.applyWaitingRoom(&c)
	}
	switch {
	case c.err != nil:
		return nil, c.err
	case room == nil:
		return nil, configError("NewWaitingRoom room", "must not be nil", nil)
	}
	w := &WaitingRoom{
		room:     room,
		cfg:      c,
		refused:  make(map[error]error, len(roomRefusals)),
		pushback: pushbackFor(c.retryAfter),
	}
	meta := map[string]string{"room": room.Name()}
	for sentinel, r := range roomRefusals {
		msg := r.defmsg
		if c.messageSet {
			msg = c.message
		}
		if m, ok := c.messages[sentinel]; ok {
			msg = m
		}
		w.refused[sentinel] = refusal(r.code, msg, r.reason, meta, c.retryAfter)
	}
	return w, nil
}

// Unary returns the interceptor for unary calls.
func (w *WaitingRoom) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if w.cfg.skip(info.FullMethod) {
			return handler(ctx, req)
		}
		adm, err := w.wait(ctx)
		if err != nil {
			err, retry := w.refuse(ctx, err)
			if retry {
				setPushback(ctx, nil, w.pushback)
			}
			return nil, err
		}
		defer adm.Done()
		return handler(ctx, req)
	}
}

// Stream returns the interceptor for streams.
func (w *WaitingRoom) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if w.cfg.skip(info.FullMethod) {
			return handler(srv, ss)
		}
		ctx := ss.Context()
		adm, err := w.wait(ctx)
		if err != nil {
			err, retry := w.refuse(ctx, err)
			if retry {
				setPushback(ctx, ss, w.pushback)
			}
			return err
		}
		defer adm.Done()
		return handler(srv, ss)
	}
}

// errOutOfTime is the cause of the end of a wait at the caller's
// deadline less the margin.
var errOutOfTime = errors.New("bulwarkgrpc: the caller's deadline is near")

// wait holds the call in ctx in line until the room admits it, as
// Room.Wait does, and returns Wait's errors.
//
// It also returns queue.ErrWaitTooLong at once for a caller with a
// deadline when the room's estimate of the wait (Room.Stats) leaves it
// less than the margin of its time, and queue.ErrWaitTimeout when the
// caller is still in line at its deadline less the margin: it could not
// have been served in time, and a refusal the client gets before its
// deadline is not counted against the server, unlike the DeadlineExceeded
// it would otherwise get. A room that cannot report its line is asked to
// Wait anyway, which says what is wrong.
func (w *WaitingRoom) wait(ctx context.Context) (queue.Admission, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return w.room.Wait(ctx)
	}
	st, err := w.room.Stats(ctx)
	left := time.Until(deadline) - w.cfg.margin
	if err == nil && st.ETA > 0 && st.ETA > left {
		return queue.Admission{}, queue.ErrWaitTooLong
	}
	if w.cfg.margin <= 0 || left <= 0 {
		// No margin, or one longer than the time left of a caller the
		// room expects to admit at once: its deadline is its bound.
		return w.room.Wait(ctx)
	}
	wctx, cancel := context.WithDeadlineCause(ctx, deadline.Add(-w.cfg.margin), errOutOfTime)
	defer cancel()
	adm, err := w.room.Wait(wctx)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(wctx), errOutOfTime) {
		return queue.Admission{}, queue.ErrWaitTimeout
	}
	return adm, err
}

// refuse maps an error of Room.Wait to the call's status error, and
// reports whether it is a refusal that advises a retry delay.
func (w *WaitingRoom) refuse(ctx context.Context, err error) (_ error, retry bool) {
	if cerr := ctx.Err(); cerr != nil && errors.Is(err, cerr) {
		return contextStatus(cerr), false
	}
	// ErrUnavailable first: a store failure may wrap the error it caused.
	for _, sentinel := range [...]error{queue.ErrUnavailable, queue.ErrFull, queue.ErrWaitTooLong, queue.ErrWaitTimeout} {
		if errors.Is(err, sentinel) {
			return w.refused[sentinel], true
		}
	}
	return w.refused[queue.ErrUnavailable], true // ErrClosed, or anything new
}
