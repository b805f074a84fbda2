package queue

import (
	"context"
	"strconv"
	"strings"
	"time"
)

// Store is where a [Buffer] keeps its messages: [NewRedisStore], durable
// and shared by every instance using the same Redis and name, or
// [NewMemoryStore], in one process and not durable. Several Buffers may
// share one Store; each is a consumer of it.
//
// Its methods are unexported, so only this package implements it: a
// Buffer's guarantees rest on each step being atomic in the store.
type Store interface {
	storeName() string

	// enqueue adds a message unless key's idempotency record exists or
	// the depth is at maxDepth (> 0).
	enqueue(ctx context.Context, key string, body []byte, maxDepth int64) (enqueueResult, error)
	// ensureGroup makes sure consumers can read (the Redis consumer group
	// exists, again after a Redis restart).
	ensureGroup(ctx context.Context) error
	// fetch delivers up to n messages never delivered before to consumer,
	// waiting up to block for the first.
	fetch(ctx context.Context, consumer string, n int, block time.Duration) ([]delivery, error)
	// reclaim takes over up to n deliveries whose lease lapsed minIdle ago,
	// counting the lapse as an attempt; those past maxAttempts become dead
	// letters instead. cursor resumes a scan of the deliveries (Redis).
	reclaim(ctx context.Context, consumer, cursor string, minIdle time.Duration, n, maxAttempts int) (ds []delivery, dead int, next string, err error)
	// extend renews consumer's leases on entries it still holds.
	extend(ctx context.Context, consumer string, entries []string) error
	// ack removes delivered messages for good.
	ack(ctx context.Context, entries []string) error
	// requeue moves a message consumer holds to the delayed set (or to the
	// dead letters) with a new attempt number and, when setErr, error
	// text. It reports false when consumer no longer holds it.
	requeue(ctx context.Context, consumer string, r requeueRequest) (bool, error)
	// handBack returns every message consumer holds to the line, undoing
	// its deliveries' count, and forgets the consumer.
	handBack(ctx context.Context, consumer string) (int, error)
	// promote moves up to n due delayed messages into the line, and says
	// when the next is due (< 0: none is delayed).
	promote(ctx context.Context, n int) (moved int, next time.Duration, err error)
	stats(ctx context.Context) (BufferStats, error)
	deadLetters(ctx context.Context, n int) ([]Message, error)
	redrive(ctx context.Context, n int) (int, error)
}

type enqueueResult struct {
	id        string
	duplicate bool
	full      bool
	depth     int64 // when full
}

// delivery is a message handed to one consumer: entry is the store's ID of
// this copy of it (a retried message is a new entry with the same
// Message.ID).
type delivery struct {
	entry string
	msg   Message
}

type requeueRequest struct {
	entry   string
	dead    bool
	attempt int
	errText string
	setErr  bool
	delay   time.Duration
}

// Field names of a stored message. Redis keeps them readable in the stream
// so an operator can inspect it with redis-cli.
const (
	fieldKey     = "key"
	fieldBody    = "body"
	fieldAttempt = "attempt" // absent means 1
	fieldID      = "id"      // absent means the entry's own ID
	fieldError   = "error"
)

// messageFromFields builds a message from a stored entry. get returns a
// field's value and whether it is present.
func messageFromFields(entry string, get func(string) (string, bool)) Message {
	m := Message{ID: entry, Attempt: 1}
	if v, ok := get(fieldID); ok {
		m.ID = v
	}
	m.Key, _ = get(fieldKey)
	if v, ok := get(fieldBody); ok {
		m.Body = []byte(v)
	}
	if v, ok := get(fieldAttempt); ok {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			m.Attempt = n
		}
	}
	m.LastError, _ = get(fieldError)
	m.EnqueuedAt = idTime(m.ID)
	return m
}

// storeConfig is filled by store options.
type storeConfig struct {
	prefix  string
	idemTTL time.Duration
}

// RedisStoreOption configures [NewRedisStore].
type RedisStoreOption interface{ applyRedisStore(*storeConfig) }

// MemoryStoreOption configures [NewMemoryStore].
type MemoryStoreOption interface{ applyMemoryStore(*storeConfig) }

// StoreOption configures either store.
type StoreOption interface {
	RedisStoreOption
	MemoryStoreOption
}

type storeOptionFunc func(*storeConfig)

func (f storeOptionFunc) applyRedisStore(c *storeConfig)  { f(c) }
func (f storeOptionFunc) applyMemoryStore(c *storeConfig) { f(c) }

// WithIdempotencyTTL sets how long an idempotency key is remembered after
// its message was enqueued: an Enqueue with the same key within this time
// is a duplicate, even after the message was processed. The default is 24h.
func WithIdempotencyTTL(d time.Duration) StoreOption {
	return storeOptionFunc(func(c *storeConfig) { c.idemTTL = d })
}

func defaultStoreConfig() storeConfig {
	return storeConfig{prefix: "bulwark:queue:", idemTTL: 24 * time.Hour}
}

func validateStoreName(name string) error {
	if name == "" {
		return configError("name", "must not be empty", `""`)
	}
	if strings.ContainsAny(name, "{}") {
		return configError("name", "must not contain '{' or '}'", strconv.Quote(name))
	}
	return nil
}

func (c *storeConfig) validate() error {
	if c.idemTTL < time.Millisecond {
		return configError("WithIdempotencyTTL", "must be at least 1ms", c.idemTTL)
	}
	return nil
}
