package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrRunning is returned by [Buffer.Run] while another Run of the same
// Buffer is under way. A Buffer is one consumer; for more handlers at once
// use [WithConcurrency], for more consumers make more Buffers.
var ErrRunning = errors.New("queue: buffer already running")

// Message is one unit of work held by a [Buffer].
type Message struct {
	// ID identifies the message for its whole life: the ID that Enqueue
	// returned, the same on every delivery, retry and dead letter. A
	// handler may use it to recognise a redelivery.
	ID string
	// Key is the idempotency key given to Enqueue; "" if none.
	Key string
	// Body is the message as enqueued. The handler owns this copy.
	Body []byte
	// Attempt is 1 on the first delivery and counts every delivery that
	// ended in a failure, a timeout or a consumer that died holding it.
	// Deferred deliveries (see [WithDeferIf]) and messages handed back at
	// shutdown do not count.
	Attempt int
	// EnqueuedAt is when the store first accepted the message, by the
	// store's clock (Redis' for the Redis store), to the millisecond.
	EnqueuedAt time.Time
	// LastError is the text of the error that ended the last counted
	// attempt; "" if none did.
	LastError string
}

// Handler processes one message. A nil error acknowledges it: the message
// is removed for good. Any other error fails the attempt: the message is
// retried after a backoff, or moved to the dead letters after the last
// attempt (see [WithMaxAttempts]), unless [WithDeferIf] says to defer it.
// A panic counts as a failed attempt.
//
// The context is not cancelled when Run's context is: a handler that has
// started may finish during a graceful shutdown. It ends only with
// [WithHandlerTimeout].
//
// Delivery is at least once, so a handler must be idempotent: a consumer
// that dies after the work but before the acknowledgement, or a handler
// that runs longer than a lost lease, means another delivery.
type Handler func(ctx context.Context, m Message) error

// Enqueued is the outcome of a successful [Buffer.Enqueue].
type Enqueued struct {
	// ID is the message's ID; for a duplicate, the ID of the message first
	// enqueued with the same key.
	ID string
	// Duplicate reports that a message with the same idempotency key was
	// enqueued within the idempotency TTL, so nothing was added.
	Duplicate bool
}

// BufferStats describes what a buffer holds, across every consumer.
type BufferStats struct {
	// Depth counts the messages held: waiting, in flight and delayed
	// (not the dead letters). [WithMaxDepth] bounds it.
	Depth int64
	// Pending counts the messages delivered to a consumer and not yet
	// acknowledged.
	Pending int64
	// Delayed counts the messages waiting out a retry backoff or a
	// deferral before they are delivered again.
	Delayed int64
	// Dead counts the dead letters (see [Buffer.DeadLetters]).
	Dead int64
	// OldestAge is how long ago the message at the head of the buffer
	// (the next to be delivered, or the longest in flight) was first
	// enqueued; 0 when none is waiting or in flight.
	OldestAge time.Duration
}

// Gate says whether a [Buffer] may deliver messages now. A Buffer asks it
// before each read; while it is not ready the Buffer takes no message and
// asks again every poll interval (see [WithBufferPollInterval]). Handlers
// already running are not interrupted, and a read begun just before the
// gate closed may still deliver. A breaker.Breaker is a Gate: it is ready
// unless it is open. Ready must be cheap and must not block.
type Gate interface {
	Ready() bool
}

// GateFunc adapts a function to [Gate].
type GateFunc func() bool

// Ready calls f.
func (f GateFunc) Ready() bool { return f() }

// Buffer is a durable work buffer (as durable as its [Store]):
// [Buffer.Enqueue] stores a message and returns once the store holds it, and
// [Buffer.Run] hands each message to a handler until the handler succeeds. It is made for work that must not be
// lost while a downstream is failing, such as orders accepted while the
// payment provider is down: they wait in the buffer, paused by a [Gate]
// while the provider's breaker is open, and drain when it recovers.
//
// A failed attempt is retried after an exponential backoff with jitter; a
// message that fails its last attempt becomes a dead letter, kept with its
// last error until [Buffer.Redrive] gives it a new round. Each message is
// delivered to one consumer at a time under a lease (the visibility
// timeout) that the consumer renews while its handler runs; a consumer that
// dies loses its lease, and another consumer takes the message over,
// counting the lost delivery as an attempt. Delivery is at least once.
//
// A Buffer is one consumer: one [Buffer.Run] at a time, with up to
// [WithConcurrency] handlers. Buffers sharing a store (the same Redis and
// name, or the same memory store) share its messages, so a fleet of
// instances each with a Buffer drains one buffer together.
//
// Use [NewBuffer]; a Buffer is safe for concurrent use.
type Buffer struct {
	store Store
	cfg   bufferConfig
	tel   *bufferTelemetry

	closed atomic.Bool
	paused atomic.Bool

	mu      sync.Mutex
	running bool
	stopRun context.CancelFunc // cancels the running Run's loop
	runDone chan struct{}      // closed when the running Run returns
}

// NewBuffer returns a buffer over store. Its errors match [ErrInvalidConfig]
// and name the bad option.
func NewBuffer(store Store, opts ...BufferOption) (*Buffer, error) {
	if store == nil {
		return nil, configError("store", "must not be nil", nil)
	}
	c := defaultBufferConfig()
	for i, o := range opts {
		if o == nil {
			return nil, configError("opts", "must not contain nil, at index", i)
		}
		o.applyBuffer(&c)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	if c.consumer == "" {
		c.consumer = defaultConsumer()
	}
	b := &Buffer{store: store, cfg: c}
	b.tel = newBufferTelemetry(c.meterProvider, store, b)
	return b, nil
}

// Enqueue stores body and returns once the store holds it: on Redis, once
// Redis has added it to the stream (how durable that is depends on Redis'
// persistence and replication settings; see [NewRedisStore]). It does not
// keep body. A non-empty key makes the call idempotent: while the key's
// record lives (see [WithIdempotencyTTL]), enqueueing it again adds nothing
// and returns the first message's ID with Duplicate set, even after the
// message was processed.
//
// Errors: the context's error if ctx ends before the message is sent (then
// nothing is stored; once it is sent, Enqueue waits for Redis' answer,
// bounded by the client's timeouts, and reports it); an error matching
// [ErrFull] when the buffer holds its maximum depth (see [WithMaxDepth]; a
// duplicate is not refused); an error matching [ErrUnavailable] and
// wrapping the cause when Redis fails, in which case the message may or may
// not be stored, so retry with the same key; [ErrClosed] after
// [Buffer.Close].
func (b *Buffer) Enqueue(ctx context.Context, key string, body []byte) (Enqueued, error) {
	if b.closed.Load() {
		return Enqueued{}, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return Enqueued{}, err
	}
	r, err := b.store.enqueue(ctx, key, body, b.cfg.maxDepth)
	switch {
	case err != nil:
		return Enqueued{}, err
	case r.full:
		return Enqueued{}, fmt.Errorf("%w: buffer %q holds %d messages (WithMaxDepth %d)",
			ErrFull, b.store.storeName(), r.depth, b.cfg.maxDepth)
	case r.duplicate:
		b.tel.duplicates.Add(ctx, 1, b.tel.attrs...)
	default:
		b.tel.enqueued.Add(ctx, 1, b.tel.attrs...)
	}
	return Enqueued{ID: r.id, Duplicate: r.duplicate}, nil
}

// Close stops the running [Buffer.Run], if any, as cancelling its context
// would, and waits for it to return: handlers already running finish first,
// so a handler must not call Close. After Close every method returns
// [ErrClosed]. Close does not close the Redis client, which the caller
// owns. It returns nil, also when called again.
func (b *Buffer) Close() error {
	first := b.closed.CompareAndSwap(false, true)
	b.mu.Lock()
	stop, done := b.stopRun, b.runDone
	b.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	if first {
		b.tel.unregister()
	}
	return nil
}

// Stats reports what the buffer holds now. Errors: the context's, one
// matching [ErrUnavailable] when Redis fails, or [ErrClosed].
func (b *Buffer) Stats(ctx context.Context) (BufferStats, error) {
	if b.closed.Load() {
		return BufferStats{}, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return BufferStats{}, err
	}
	return b.store.stats(ctx)
}

// DeadLetters returns up to n dead letters, oldest first, each with the
// number of attempts made and the last error. n <= 0 returns none. Errors
// are as for [Buffer.Stats].
func (b *Buffer) DeadLetters(ctx context.Context, n int) ([]Message, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if n <= 0 {
		return nil, nil
	}
	return b.store.deadLetters(ctx, n)
}

// Redrive moves up to n dead letters, oldest first, back into the buffer for
// a new round of attempts (Attempt starts again at 1; LastError is kept) and
// returns how many it moved. Use it once the cause is fixed. n <= 0 moves
// none. It ignores [WithMaxDepth]. Errors are as for [Buffer.Stats].
func (b *Buffer) Redrive(ctx context.Context, n int) (int, error) {
	if b.closed.Load() {
		return 0, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if n <= 0 {
		return 0, nil
	}
	return b.store.redrive(ctx, n)
}

// maxErrorText bounds the error text kept with a message, so a handler
// returning a huge error cannot bloat the store.
const maxErrorText = 4096

func errorText(err error) string {
	s := err.Error()
	if len(s) > maxErrorText {
		s = strings.ToValidUTF8(s[:maxErrorText], "") + "…"
	}
	return s
}

// idTime reads the time in a message ID, which is "<ms>-<seq>" for both
// stores.
func idTime(id string) time.Time {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(n)
}
