package queue

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// BufferOption configures a [Buffer]; see [NewBuffer].
//
// It is an interface rather than a function type so that an option shared
// with other types of this package can implement it too.
type BufferOption interface{ applyBuffer(*bufferConfig) }

type bufferOptionFunc func(*bufferConfig)

func (f bufferOptionFunc) applyBuffer(c *bufferConfig) { f(c) }

// bufferConfig is filled by BufferOptions.
type bufferConfig struct {
	consumer      string
	consumerSet   bool
	concurrency   int
	maxAttempts   int
	backoffBase   time.Duration
	backoffMax    time.Duration
	visibility    time.Duration
	poll          time.Duration
	handlerTO     time.Duration
	maxDepth      int64
	gate          Gate
	deferIf       func(error) bool
	meterProvider metric.MeterProvider
	// nilField names an option given a nil value, reported by validate.
	nilField string
}

func defaultBufferConfig() bufferConfig {
	return bufferConfig{
		concurrency: 4,
		maxAttempts: 5,
		backoffBase: time.Second,
		backoffMax:  time.Minute,
		visibility:  30 * time.Second,
		poll:        500 * time.Millisecond,
	}
}

// minVisibility keeps the lease renewal (every third of the visibility
// timeout) well above a Redis round trip.
const minVisibility = 10 * time.Millisecond

func (c *bufferConfig) validate() error {
	switch {
	case c.nilField != "":
		return configError(c.nilField, "must not be nil", nil)
	case c.consumerSet && c.consumer == "":
		return configError("WithConsumer", "must not be empty", `""`)
	case c.concurrency < 1 || c.concurrency > maxConcurrency:
		return configError("WithConcurrency", "must be between 1 and "+strconv.Itoa(maxConcurrency), c.concurrency)
	case c.maxAttempts < 1:
		return configError("WithMaxAttempts", "must be at least 1", c.maxAttempts)
	case c.backoffBase <= 0:
		return configError("WithBackoff base", "must be positive", c.backoffBase)
	case c.backoffMax < c.backoffBase:
		return configError("WithBackoff max", "must be at least base "+c.backoffBase.String(), c.backoffMax)
	case c.visibility < minVisibility:
		return configError("WithVisibilityTimeout", "must be at least "+minVisibility.String(), c.visibility)
	case c.poll < time.Millisecond:
		return configError("WithBufferPollInterval", "must be at least 1ms", c.poll)
	case c.handlerTO < 0:
		return configError("WithHandlerTimeout", "must not be negative", c.handlerTO)
	case c.maxDepth < 0:
		return configError("WithMaxDepth", "must not be negative", c.maxDepth)
	}
	return nil
}

// defaultConsumer is unique per process and per Buffer: host, pid and a
// random suffix.
func defaultConsumer() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return fmt.Sprintf("%s-%d-%06x", host, os.Getpid(), rand.Uint32()&0xffffff)
}

// maxConcurrency bounds WithConcurrency: one consumer's leases are renewed
// together, and a Lua script handles a bounded number of entries at once.
const maxConcurrency = 4096

// WithConsumer names the buffer's consumer. The default, host-pid-random,
// is unique per Buffer. A fixed name (a pod name) is fine too, as long as no
// two live Buffers share it: a restarted instance then finds its
// predecessor's unacknowledged messages under its own name, and takes them
// over once their visibility timeout has passed.
func WithConsumer(name string) BufferOption {
	return bufferOptionFunc(func(c *bufferConfig) {
		c.consumer, c.consumerSet = name, true
	})
}

// WithConcurrency sets how many handlers run at once in [Buffer.Run], at
// most 4096 (for more, run more Buffers). The default is 4. A Buffer takes
// only as many messages as it has idle handlers, so none waits in a
// consumer while others could take it.
func WithConcurrency(n int) BufferOption {
	return bufferOptionFunc(func(c *bufferConfig) { c.concurrency = n })
}

// WithMaxAttempts sets how many attempts a message gets before it becomes a
// dead letter. The default is 5.
func WithMaxAttempts(n int) BufferOption {
	return bufferOptionFunc(func(c *bufferConfig) { c.maxAttempts = n })
}

// WithBackoff sets the delay before a failed message is retried: after
// attempt n it is base·2^(n-1), at most max, of which a random half is
// taken off ("equal jitter") so that retries of a burst of failures spread
// out but still wait at least half the step. The default is 1s and 1m.
func WithBackoff(base, max time.Duration) BufferOption {
	return bufferOptionFunc(func(c *bufferConfig) { c.backoffBase, c.backoffMax = base, max })
}

// WithVisibilityTimeout sets the lease on a delivered message: a message
// whose consumer has not renewed its lease for this long is taken over by
// another consumer, and the lost delivery counts as an attempt. Consumers
// look for lapsed leases every half of this, so a dead consumer's messages
// move within one and a half timeouts. A consumer renews the leases of its
// running handlers every third of this, so a long handler keeps its
// message. The default is 30s; the minimum 10ms. Shorter
// means faster recovery from a dead consumer, and more risk that a consumer
// stalled longer than this (a long GC pause, a network partition) has its
// messages processed twice.
func WithVisibilityTimeout(d time.Duration) BufferOption {
	return bufferOptionFunc(func(c *bufferConfig) { c.visibility = d })
}

// WithBufferPollInterval sets how often an idle or paused consumer looks
// again: how often it asks its gate while paused, how long one read for new
// messages waits (and so how long stopping Run may wait for that read), how
// often it moves due retries back into line (so a retry may start up to
// this much after its backoff), and how long a deferred message waits (see
// [WithDeferIf]). The default is 500ms.
func WithBufferPollInterval(d time.Duration) BufferOption {
	return bufferOptionFunc(func(c *bufferConfig) { c.poll = d })
}

// WithGate pauses delivery while g is not ready: pass the payment
// provider's breaker, and the buffer holds orders while the breaker is open
// instead of failing them one attempt after another. The default is a gate
// that is always ready.
func WithGate(g Gate) BufferOption {
	return bufferOptionFunc(func(c *bufferConfig) {
		c.gate = g
		if g == nil {
			c.nilField = "WithGate"
		}
	})
}

// WithDeferIf makes a handler error for which f returns true defer the
// message instead of failing the attempt: it is delivered again after the
// poll interval with the same Attempt and LastError. Use it for errors that
// say nothing about the message, such as a breaker refusing the call:
//
//	queue.WithDeferIf(func(err error) bool { return errors.Is(err, breaker.ErrOpen) })
//
// The default defers nothing. f must not block.
func WithDeferIf(f func(error) bool) BufferOption {
	return bufferOptionFunc(func(c *bufferConfig) {
		c.deferIf = f
		if f == nil {
			c.nilField = "WithDeferIf"
		}
	})
}

// WithHandlerTimeout bounds each handler call: its context ends after d,
// and a handler that returns the context's error fails the attempt. The
// default is 0: no bound, since the consumer renews the message's lease for
// as long as the handler runs.
func WithHandlerTimeout(d time.Duration) BufferOption {
	return bufferOptionFunc(func(c *bufferConfig) { c.handlerTO = d })
}

// WithMaxDepth bounds how many messages the buffer holds (waiting, in
// flight and delayed; see [BufferStats.Depth]): [Buffer.Enqueue] beyond it
// returns an error matching [ErrFull], so a caller can refuse an order at
// once rather than accept one it cannot keep. The default is 0: unbounded,
// limited only by Redis' memory. The check and the add are one atomic step.
func WithMaxDepth(n int64) BufferOption {
	return bufferOptionFunc(func(c *bufferConfig) { c.maxDepth = n })
}

// backoff is the delay after attempt n (1-based) failed, with equal jitter.
func (c *bufferConfig) backoff(n int) time.Duration {
	d := c.backoffMax
	if n-1 < 62 {
		if step := c.backoffBase << (n - 1); step > 0 && step>>(n-1) == c.backoffBase && step < d {
			d = step
		}
	}
	half := d / 2
	return d - half + rand.N(half+1)
}
