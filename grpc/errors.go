package bulwarkgrpc

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ErrInvalidConfig is matched by every error a constructor returns for a
// bad argument or option; the message names it.
var ErrInvalidConfig = errors.New("bulwarkgrpc: invalid configuration")

func configError(field, problem string, value any) error {
	if value == nil {
		return fmt.Errorf("%w: %s %s", ErrInvalidConfig, field, problem)
	}
	return fmt.Errorf("%w: %s %s, got %v", ErrInvalidConfig, field, problem, value)
}

// ErrorDomain is the Domain of the errdetails.ErrorInfo in every refusal
// the server interceptors send. A [CircuitBreaker] and a [Failover] count
// a refusal in this domain as an answer, not a failure of the server,
// whatever its code, except one with [ReasonQueueUnavailable] (see the
// package documentation, "What the client counts against a server").
const ErrorDomain = "github.com/bulwarkgo/bulwark"

// Reasons of the errdetails.ErrorInfo in the refusals the server
// interceptors send, so that a client can tell them apart without parsing
// messages.
const (
	// ReasonRateLimited: a [RateLimit] refused the call
	// (codes.ResourceExhausted, with RetryInfo and QuotaFailure).
	ReasonRateLimited = "RATE_LIMITED"
	// ReasonLimiterUnavailable: the key function or the limiter of a
	// [RateLimit] could not decide and the policy is limiter.RejectOnError
	// (codes.Unavailable, without a retry delay: the server cannot know
	// when its limiter will decide again). It may concern this caller
	// alone (a call without the metadata its key needs), so Bulwark's
	// client side counts it as an answer.
	ReasonLimiterUnavailable = "LIMITER_UNAVAILABLE"
	// ReasonOverloaded: a [ConcurrencyLimit] shed the call
	// (codes.ResourceExhausted).
	ReasonOverloaded = "OVERLOADED"
	// ReasonDegraded: a [Guard] found the method's feature off for the
	// caller (codes.Unavailable). The ErrorInfo's metadata holds "feature"
	// and "level".
	ReasonDegraded = "DEGRADED"
	// ReasonQueueFull, ReasonWaitTooLong and ReasonWaitTimeout: a
	// [WaitingRoom] refused the call because its line was full, the
	// estimated wait was longer than the room's maximum or than the
	// caller's remaining time, or the caller waited the maximum or was
	// still in line as its deadline came near (codes.ResourceExhausted,
	// with RetryInfo).
	ReasonQueueFull   = "QUEUE_FULL"
	ReasonWaitTooLong = "WAIT_TOO_LONG"
	ReasonWaitTimeout = "WAIT_TIMEOUT"
	// ReasonQueueUnavailable: a [WaitingRoom] could not hold the caller in
	// line: its Redis cannot be reached or the room is closed
	// (codes.Unavailable, with RetryInfo). Unlike the other reasons it
	// says nothing about the caller and much about the instance, so
	// Bulwark's client side counts it by its code: a failure, after which
	// a [Failover] asks its next target.
	ReasonQueueUnavailable = "QUEUE_UNAVAILABLE"
)

// refusal builds the status error of a refused call: code and message,
// an ErrorInfo with reason and meta, a RetryInfo when retry is positive,
// and any further details.
func refusal(code codes.Code, msg, reason string, meta map[string]string, retry time.Duration, more ...protoadapt.MessageV1) error {
	st := status.New(code, msg)
	details := make([]protoadapt.MessageV1, 0, 2+len(more))
	details = append(details, &errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: meta})
	if retry > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	}
	details = append(details, more...)
	if withDetails, err := st.WithDetails(details...); err == nil {
		st = withDetails
	}
	return st.Err()
}

// contextStatus is the status error of a call whose context ended:
// codes.Canceled or codes.DeadlineExceeded.
func contextStatus(err error) error {
	return status.FromContextError(err).Err()
}

// pushbackKey is the trailer by which a server tells gRPC's retry support
// how long to wait before it retries the call, in milliseconds, or that
// it must not retry (a negative value). gRPC honours it only when the
// client's service config has a retry policy for the status code.
const pushbackKey = "grpc-retry-pushback-ms"

// noRetry is the pushback that asks gRPC not to retry the call.
const noRetry = "-1"

// pushbackFor is the pushback that says "not before d".
func pushbackFor(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return strconv.FormatInt(int64((d+time.Millisecond-1)/time.Millisecond), 10)
}

// setPushback adds the pushback trailer v to a refused call: to ss for a
// stream, to the unary call in ctx otherwise. An empty v adds nothing.
func setPushback(ctx context.Context, ss grpc.ServerStream, v string) {
	if v == "" {
		return
	}
	md := metadata.Pairs(pushbackKey, v)
	if ss != nil {
		ss.SetTrailer(md)
		return
	}
	_ = grpc.SetTrailer(ctx, md) // fails only outside a gRPC server, where no one reads it
}
