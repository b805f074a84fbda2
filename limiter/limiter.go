package limiter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Limiter decides whether the holder of key may proceed now.
//
// Allow is AllowN with n = 1. AllowN takes n tokens from key's bucket when
// they are all available and takes nothing otherwise; n = 0 only reports the
// bucket's state. The returned error is non-nil only when no decision could be
// made at all (a cancelled context, n larger than the burst, a backend that
// failed with no outage policy to fall back on); a refusal is an ordinary
// Decision with Allowed false, not an error. Use [Decision.Err] to turn a
// refusal into an error.
//
// Implementations in this package are safe for concurrent use.
type Limiter interface {
	Allow(ctx context.Context, key string) (Decision, error)
	AllowN(ctx context.Context, key string, n int) (Decision, error)
}

// Limit is a rate of Rate events per Period, with bursts of up to Burst
// events. A bucket holds at most Burst tokens and gains one every
// Period/Rate.
type Limit struct {
	Rate   int
	Period time.Duration
	Burst  int
}

// PerSecond returns a Limit of rate events per second with the given burst.
func PerSecond(rate, burst int) Limit {
	return Limit{Rate: rate, Period: time.Second, Burst: burst}
}

// PerMinute returns a Limit of rate events per minute with the given burst.
func PerMinute(rate, burst int) Limit {
	return Limit{Rate: rate, Period: time.Minute, Burst: burst}
}

// Interval is the time in which the bucket gains one token.
func (l Limit) Interval() time.Duration {
	if l.Rate <= 0 {
		return 0
	}
	return l.Period / time.Duration(l.Rate)
}

// String formats the limit as "10/1s burst 20".
func (l Limit) String() string {
	return strconv.Itoa(l.Rate) + "/" + l.Period.String() + " burst " + strconv.Itoa(l.Burst)
}

// Validate reports the first field of l that no limiter can work with.
// The error matches [ErrInvalidConfig].
func (l Limit) Validate() error {
	switch {
	case l.Rate <= 0:
		return configError("Limit.Rate", "must be positive", l.Rate)
	case l.Period <= 0:
		return configError("Limit.Period", "must be positive", l.Period)
	case l.Period/time.Duration(l.Rate) < time.Microsecond:
		return configError("Limit.Rate", "is faster than one event per microsecond for Period "+l.Period.String(), l.Rate)
	case l.Burst < 1:
		return configError("Limit.Burst", "must be at least 1", l.Burst)
	}
	return nil
}

// Decision is the outcome of one AllowN call.
type Decision struct {
	// Allowed reports whether the n tokens were taken.
	Allowed bool
	// Limit is the limit that was applied.
	Limit Limit
	// Remaining is the number of whole tokens left in the bucket after
	// this decision.
	Remaining int
	// RetryAfter is, for a refusal, how long until the same request would
	// be allowed; zero when Allowed.
	RetryAfter time.Duration
	// ResetAfter is how long until the bucket is full again.
	ResetAfter time.Duration
}

// Err returns nil for an allowed decision and a [*LimitedError] (matching
// [ErrLimited]) for a refusal.
func (d Decision) Err() error {
	if d.Allowed {
		return nil
	}
	return &LimitedError{Decision: d}
}

var (
	// ErrLimited is matched by the error of a refused decision
	// (see [Decision.Err]) and by the Adaptive limiter's shedding error.
	ErrLimited = errors.New("limiter: rate limited")

	// ErrInvalidConfig is matched by every error a constructor returns for
	// a bad option or limit; the message names the field.
	ErrInvalidConfig = errors.New("limiter: invalid configuration")

	// ErrBurstExceeded is returned by AllowN when n is larger than the
	// burst: such a request could never be allowed.
	ErrBurstExceeded = errors.New("limiter: n exceeds the burst")

	// ErrInvalidN is returned by AllowN when n is negative.
	ErrInvalidN = errors.New("limiter: n is negative")
)

// LimitedError is the error form of a refusal. It matches [ErrLimited] and
// carries the decision, so a caller can read RetryAfter:
//
//	var le *limiter.LimitedError
//	if errors.As(err, &le) { retryIn(le.Decision.RetryAfter) }
type LimitedError struct {
	Decision Decision
}

func (e *LimitedError) Error() string {
	return "limiter: rate limited, retry after " + e.Decision.RetryAfter.String()
}

// Is makes errors.Is(err, ErrLimited) true.
func (e *LimitedError) Is(target error) bool { return target == ErrLimited }

func configError(field, problem string, value any) error {
	return fmt.Errorf("%w: %s %s, got %v", ErrInvalidConfig, field, problem, value)
}

// checkN validates n against the limit's burst.
func checkN(n int, l Limit) error {
	if n < 0 {
		return fmt.Errorf("%w: %d", ErrInvalidN, n)
	}
	if n > l.Burst {
		return fmt.Errorf("%w: n %d, burst %d", ErrBurstExceeded, n, l.Burst)
	}
	return nil
}

// ceilDiv returns ceil(a/b) for a ≥ 0, b > 0.
func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }
