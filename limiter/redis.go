package limiter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/bulwarkgo/bulwark/internal/batch"
)

// gcra decides a batch of requests in the generic cell rate algorithm. Each
// key holds the theoretical arrival time (TAT) of its bucket's next request
// in microseconds of Redis' own clock; a request of n tokens is allowed when
// moving the TAT by n intervals keeps it within burst intervals of now.
// Every number is a whole number of microseconds, so no float is truncated
// by Redis' conversion of Lua numbers in replies, and numbers reach
// redis.call as numbers (formatted exactly), never through tostring.
//
// A batch shares one TIME and one MGET, and writes each changed bucket once,
// so the fixed cost of a script call is paid once for many decisions. A key
// may appear more than once; its requests are decided in order.
//
// The reply is, for each key, how far its bucket was from full before the
// request (TAT - now, µs): with the interval, burst and n, that one number
// determines the whole decision (see redisDecision), so the script builds
// and Redis converts a quarter of what four numbers a decision would take.
//
// KEYS: the buckets. ARGV: interval µs, burst, then n for each key, or one
// n for all.
var gcra = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local shared = #ARGV == 3 and tonumber(ARGV[3])
local stored = redis.call('MGET', unpack(KEYS))
local tats, dirty, out = {}, {}, {}
for i, key in ipairs(KEYS) do
  local tat = tats[key] or tonumber(stored[i]) or now
  if tat < now then
    tat = now
  end
  out[i] = tat - now
  local n = shared or tonumber(ARGV[i + 2])
  local newtat = tat + n * interval
  if n > 0 and newtat - now <= tolerance then
    tat = newtat
    dirty[key] = true
  end
  tats[key] = tat
end
for key in pairs(dirty) do
  local tat = tats[key]
  redis.call('SET', key, tat, 'PX', math.ceil((tat - now) / 1000))
end
return out
`)

// redisDecision is the decision the script made for n tokens of a bucket
// that was behind µs from full: the same comparison, in the same integers.
func (r *Redis) redisDecision(behind int64, n int) Decision {
	ahead := behind + int64(n)*r.intervalUS
	if ahead > r.toleranceUS {
		return Decision{
			Limit: r.limit,
			// Never negative, even if Redis' clock went back (a failover
			// to a replica whose clock is behind).
			Remaining:  int(max(r.toleranceUS-behind, 0) / r.intervalUS),
			RetryAfter: time.Duration(ahead-r.toleranceUS) * time.Microsecond,
			ResetAfter: time.Duration(behind) * time.Microsecond,
		}
	}
	return Decision{
		Allowed:    true,
		Limit:      r.limit,
		Remaining:  int((r.toleranceUS - ahead) / r.intervalUS),
		ResetAfter: time.Duration(ahead) * time.Microsecond,
	}
}

// ErrUnavailable is returned by [Redis.Reset] while Redis is unreachable.
var ErrUnavailable = errors.New("limiter: redis unavailable")

// OutagePolicy says what a [Redis] limiter decides while Redis cannot be
// reached. Use [FailOpen], [FailClosed] or [FallbackLocal].
type OutagePolicy struct {
	kind  outageKind
	share float64
}

type outageKind uint8

const (
	outageFallbackLocal outageKind = iota
	outageFailOpen
	outageFailClosed
)

var (
	// FailOpen allows every request while Redis is unreachable: the
	// service stays available and is unprotected.
	FailOpen = OutagePolicy{kind: outageFailOpen}
	// FailClosed refuses every request while Redis is unreachable, with
	// RetryAfter set to the retry interval (see [WithRetryInterval]).
	FailClosed = OutagePolicy{kind: outageFailClosed}
)

// FallbackLocal decides with an in-process token bucket at share of the
// global limit while Redis is unreachable: with n instances, share 1/n keeps
// the fleet near the global limit. share must be in (0, 1].
func FallbackLocal(share float64) OutagePolicy {
	return OutagePolicy{kind: outageFallbackLocal, share: share}
}

// String names the policy as it reads in code.
func (p OutagePolicy) String() string {
	switch p.kind {
	case outageFailOpen:
		return "FailOpen"
	case outageFailClosed:
		return "FailClosed"
	}
	return "FallbackLocal(" + strconv.FormatFloat(p.share, 'g', -1, 64) + ")"
}

// redisConfig is filled by RedisOptions.
type redisConfig struct {
	commonConfig
	prefix        string
	policy        OutagePolicy
	retryInterval time.Duration
	maxBatch      int
}

// WithPrefix sets the prefix of every key the limiter writes. The default is
// "bulwark:limiter:". It must not contain '{' or '}', which the limiter uses
// as the key's hash tag.
func WithPrefix(prefix string) RedisOption {
	return redisOptionFunc(func(c *redisConfig) { c.prefix = prefix })
}

// WithOutagePolicy sets what the limiter decides while Redis is
// unreachable. The default is FallbackLocal(1): each instance enforces the
// whole limit by itself, so the fleet admits up to instances × limit but no
// instance is left unprotected.
func WithOutagePolicy(p OutagePolicy) RedisOption {
	return redisOptionFunc(func(c *redisConfig) { c.policy = p })
}

// WithRetryInterval sets how long the limiter decides by its outage policy
// after Redis fails before it lets one call try Redis again. The default is
// half a second, so a limiter is back on Redis within that of its return.
func WithRetryInterval(d time.Duration) RedisOption {
	return redisOptionFunc(func(c *redisConfig) { c.retryInterval = d })
}

// WithMaxBatch sets how many concurrent decisions may share one script call
// (see [Redis]). The default is 64; 1 sends every decision on its own. It
// must be between 1 and 1000.
func WithMaxBatch(n int) RedisOption {
	return redisOptionFunc(func(c *redisConfig) { c.maxBatch = n })
}

// Redis is a rate limiter shared by every instance of a service: per-key
// GCRA (generic cell rate algorithm, equivalent to a token bucket) decided
// by one Lua script per call, with Redis' TIME as the one clock of the
// fleet. A key costs one Redis string that expires once its bucket is full
// again. Keys are written as prefix + "{" + key + "}", so each bucket is its
// own hash slot on Redis Cluster. The interval between tokens is kept in
// whole microseconds, rounded down: exact for rates that divide a second
// into whole microseconds, and at most 1% fast below 10,000 per second.
//
// When Redis fails (after the client's own retries), the limiter stops
// calling it for the retry interval and decides by its [OutagePolicy]; then
// one call tries Redis again, and success puts every call back on Redis. So
// during an outage callers do not each wait for a network timeout. A call
// whose own context ends is not counted as a Redis failure.
//
// Under concurrency, decisions share script calls: while a few calls are on
// the wire, further decisions wait for one of them to return and then go
// together in one call (one TIME, one MGET, one SET per changed bucket), so
// Redis does less work per decision as load rises and a lone decision is
// sent at once. This applies to *redis.Client (a single node or a Sentinel
// failover client); on a Cluster or Ring client, whose keys live on several
// nodes, every decision is its own call.
//
// Deadlines: go-redis bounds socket reads by the context's deadline only
// when the client has ContextTimeoutEnabled; otherwise by its ReadTimeout.
// Decisions sharing a script call wait for it together, until the latest
// of their callers' deadlines.
//
// Use [NewRedis]; Redis is safe for concurrent use.
type Redis struct {
	client   redis.UniversalClient
	limit    Limit
	prefix   string
	interval string // µs per token, formatted once
	burst    string
	// µs per token and per burst, for reading the script's reply
	intervalUS, toleranceUS int64
	policy                  OutagePolicy
	fallback                *Local
	retry                   time.Duration
	cb                      *gobreaker.CircuitBreaker[[]any]
	batch                   *batch.Batcher[*call] // nil: one script call per decision

	decisions decisionCounter
	duration  metric.Float64Histogram
	durOK     []metric.RecordOption
	durErr    []metric.RecordOption
}

// NewRedis returns a limiter that applies limit to every key across all
// instances sharing client's Redis (single node, Sentinel or Cluster).
func NewRedis(client redis.UniversalClient, limit Limit, opts ...RedisOption) (*Redis, error) {
	if client == nil {
		return nil, configError("client", "must not be nil", nil)
	}
	if err := limit.Validate(); err != nil {
		return nil, err
	}
	c := redisConfig{prefix: "bulwark:limiter:", policy: FallbackLocal(1), retryInterval: 500 * time.Millisecond, maxBatch: 64}
	for i, o := range opts {
		if o == nil {
			return nil, configError("opts", "must not contain nil, at index", i)
		}
		o.applyRedis(&c)
	}
	if strings.ContainsAny(c.prefix, "{}") {
		return nil, configError("WithPrefix", "must not contain '{' or '}'", strconv.Quote(c.prefix))
	}
	if c.retryInterval <= 0 {
		return nil, configError("WithRetryInterval", "must be positive", c.retryInterval)
	}
	if c.maxBatch < 1 || c.maxBatch > 1000 {
		return nil, configError("WithMaxBatch", "must be between 1 and 1000", c.maxBatch)
	}
	intervalUS := limit.Period.Microseconds() / int64(limit.Rate)
	// The script holds times as Lua doubles: a bucket must last well under
	// 2^53 µs (285 years) for its arithmetic to stay exact.
	if int64(limit.Burst) > (1<<50)/intervalUS {
		return nil, configError("Limit.Burst", "is too large: a full bucket would last centuries", limit.Burst)
	}
	r := &Redis{
		client:   client,
		limit:    limit,
		prefix:   c.prefix,
		interval: strconv.FormatInt(intervalUS, 10),
		burst:    strconv.Itoa(limit.Burst),

		intervalUS:  intervalUS,
		toleranceUS: intervalUS * int64(limit.Burst),
		policy:      c.policy,
		retry:       c.retryInterval,
	}
	if _, single := client.(*redis.Client); single && c.maxBatch > 1 {
		r.batch = r.newBatcher(c.maxBatch)
	}
	if c.policy.kind == outageFallbackLocal {
		if !(c.policy.share > 0 && c.policy.share <= 1) {
			return nil, configError("FallbackLocal share", "must be in (0, 1]", c.policy.share)
		}
		local, err := NewLocal(scaleLimit(limit, c.policy.share), WithMeterProvider(noop.NewMeterProvider()))
		if err != nil {
			return nil, err
		}
		r.fallback = local
	}
	r.cb = gobreaker.NewCircuitBreaker[[]any](gobreaker.Settings{
		Name:        "bulwark-limiter-redis",
		MaxRequests: 1,
		Timeout:     c.retryInterval,
		// go-redis has already retried a network error before returning it,
		// so one failure is an outage.
		ReadyToTrip: func(counts gobreaker.Counts) bool { return counts.ConsecutiveFailures >= 1 },
		IsExcluded:  func(err error) bool { return errors.Is(err, errCallerDone) },
	})

	m := c.meter()
	base := c.baseAttrs("redis")
	r.decisions = newDecisionCounter(m, base)
	var err error
	r.duration, err = m.Float64Histogram("bulwark.limiter.redis.duration",
		metric.WithDescription("Duration of the limiter's Redis calls."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
	if err != nil {
		otel.Handle(err)
	}
	withOutcome := func(o string) []metric.RecordOption {
		kv := append(append([]attribute.KeyValue(nil), base...), attribute.String("bulwark.limiter.redis.outcome", o))
		return []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(kv...))}
	}
	r.durOK, r.durErr = withOutcome("ok"), withOutcome("error")
	return r, nil
}

// scaleLimit returns share of l, keeping Rate whole by stretching Period.
func scaleLimit(l Limit, share float64) Limit {
	burst := int(float64(l.Burst)*share + 0.999999)
	return Limit{Rate: l.Rate, Period: time.Duration(float64(l.Period) / share), Burst: max(burst, 1)}
}

// errCallerDone marks a Redis error caused by the caller's own context, which
// says nothing about Redis' health.
var errCallerDone = errors.New("limiter: caller's context done")

// callerDone reports whether ctx is done or its deadline has passed: with
// ContextTimeoutEnabled the connection's deadline, set from ctx's, may go
// off just before ctx's own timer.
func callerDone(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// Limit returns the limit the limiter applies.
func (r *Redis) Limit() Limit { return r.limit }

// InOutage reports whether the limiter is deciding by its outage policy
// because Redis failed.
func (r *Redis) InOutage() bool { return r.cb.State() != gobreaker.StateClosed }

// Allow is AllowN(ctx, key, 1).
func (r *Redis) Allow(ctx context.Context, key string) (Decision, error) {
	return r.AllowN(ctx, key, 1)
}

// AllowN takes n tokens from key's bucket if all are available. While Redis
// is unreachable the decision follows the outage policy and the error is
// nil; the error is non-nil only for a bad n or a caller whose context is
// done.
func (r *Redis) AllowN(ctx context.Context, key string, n int) (Decision, error) {
	if err := checkN(n, r.limit); err != nil {
		r.decisions.record(ctx, Decision{}, err, false)
		return Decision{Limit: r.limit}, err
	}
	if err := ctx.Err(); err != nil {
		r.decisions.record(ctx, Decision{}, err, false)
		return Decision{Limit: r.limit}, err
	}
	c := callPool.Get().(*call)
	c.key, c.n, c.err = r.prefix+"{"+key+"}", n, nil
	c.deadline, _ = ctx.Deadline()
	if r.batch != nil {
		if err := r.batch.Do(ctx, c); err != nil {
			c.err = err
		}
	} else {
		r.evalBatch(ctx, []*call{c})
	}
	behind, err := c.behind, c.err
	c.key = ""
	callPool.Put(c)

	switch {
	case err == nil:
		d := r.redisDecision(behind, n)
		r.decisions.record(ctx, d, nil, false)
		return d, nil
	case errors.Is(err, errCallerDone) || (ctx.Err() != nil && errors.Is(err, ctx.Err())):
		err = ctx.Err()
		if err == nil {
			// The connection's deadline, set from ctx's, went off
			// before ctx's own timer.
			err = context.DeadlineExceeded
		}
		r.decisions.record(ctx, Decision{}, err, false)
		return Decision{Limit: r.limit}, err
	}
	d, err := r.outage(ctx, key, n)
	r.decisions.record(ctx, d, err, true)
	return d, err
}

// evalBatch runs the script for batch through the outage breaker and sets
// each call's result or error.
func (r *Redis) evalBatch(ctx context.Context, batch []*call) {
	keys := make([]string, len(batch))
	same := true
	for i, c := range batch {
		keys[i] = c.key
		same = same && c.n == batch[0].n
	}
	// Almost every batch asks the same n of every key: send it once.
	var args []any
	if same {
		args = []any{r.interval, r.burst, nArg(batch[0].n)}
	} else {
		args = make([]any, 2+len(batch))
		args[0], args[1] = r.interval, r.burst
		for i, c := range batch {
			args[2+i] = nArg(c.n)
		}
	}
	reply, err := r.cb.Execute(func() ([]any, error) {
		start := time.Now()
		reply, err := gcra.Run(ctx, r.client, keys, args...).Slice()
		if err == nil && len(reply) != len(batch) {
			err = fmt.Errorf("limiter: script replied %d values for %d keys", len(reply), len(batch))
		}
		if err != nil {
			r.duration.Record(ctx, time.Since(start).Seconds(), r.durErr...)
			if callerDone(ctx) {
				return nil, fmt.Errorf("%w: %w", errCallerDone, err)
			}
			return nil, err
		}
		r.duration.Record(ctx, time.Since(start).Seconds(), r.durOK...)
		return reply, nil
	})
	for i, c := range batch {
		c.err = err
		if err != nil {
			continue
		}
		v, ok := reply[i].(int64)
		if !ok {
			c.err = fmt.Errorf("limiter: unexpected script reply %v", reply[i])
		}
		c.behind = v
	}
}

// smallN holds the formatted n of the commonest calls.
var smallN = [...]string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}

func nArg(n int) string {
	if n < len(smallN) {
		return smallN[n]
	}
	return strconv.Itoa(n)
}

// outage decides by the outage policy.
func (r *Redis) outage(ctx context.Context, key string, n int) (Decision, error) {
	switch r.policy.kind {
	case outageFailOpen:
		return Decision{Allowed: true, Limit: r.limit, Remaining: r.limit.Burst - n}, nil
	case outageFailClosed:
		return Decision{Limit: r.limit, RetryAfter: r.retry, ResetAfter: r.retry}, nil
	}
	d, err := r.fallback.AllowN(ctx, key, n)
	d.Limit = r.limit
	return d, err
}

// Reset forgets key's bucket on Redis, so it starts full. It returns an error
// matching [ErrUnavailable] while Redis is unreachable.
func (r *Redis) Reset(ctx context.Context, key string) error {
	_, err := r.cb.Execute(func() ([]any, error) {
		err := r.client.Del(ctx, r.prefix+"{"+key+"}").Err()
		if err != nil && ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", errCallerDone, err)
		}
		return nil, err
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errCallerDone):
		return ctx.Err()
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}
