package queue

import (
	"errors"
	"fmt"
)

// Errors returned by this package. Each is matchable with [errors.Is]; the
// errors a caller may show a user carry more detail through wrapping.
var (
	// ErrInvalidConfig is matched by every error a constructor returns for a
	// bad option or argument. The message names the field.
	ErrInvalidConfig = errors.New("queue: invalid configuration")

	// ErrFull means the line (or the buffer) holds as many as it may: the
	// caller is refused at once, without waiting.
	ErrFull = errors.New("queue: full")

	// ErrWaitTimeout means the caller waited the room's maximum wait and
	// was not admitted. Its place in line is given up.
	ErrWaitTimeout = errors.New("queue: maximum wait exceeded")

	// ErrWaitTooLong means the estimated wait at the time of joining was
	// already longer than the room's maximum wait, so the caller is refused
	// at once rather than made to wait to be refused.
	ErrWaitTooLong = errors.New("queue: estimated wait exceeds maximum wait")

	// ErrTicketExpired means the ticket is not in the line: it was not
	// polled within the ticket TTL, it was given up with Leave, its
	// admission lapsed, or it was never issued by this room.
	ErrTicketExpired = errors.New("queue: ticket expired or unknown")

	// ErrClosed means the room or buffer was closed.
	ErrClosed = errors.New("queue: closed")

	// ErrUnavailable means the backing store (Redis) could not be reached.
	// The error wraps the store's own error.
	ErrUnavailable = errors.New("queue: store unavailable")

	// ErrTokenInvalid means an admission token is malformed, carries a bad
	// signature (it was forged or altered), or was issued for another room.
	ErrTokenInvalid = errors.New("queue: invalid admission token")

	// ErrTokenExpired means an admission token's signature is good but its
	// lifetime has passed.
	ErrTokenExpired = errors.New("queue: admission token expired")

	// ErrTokenReplayed means an admission token was already used: each
	// token admits one request.
	ErrTokenReplayed = errors.New("queue: admission token already used")
)

// configError names the bad field and the value it had.
func configError(field, problem string, value any) error {
	return fmt.Errorf("%w: %s %s, got %v", ErrInvalidConfig, field, problem, value)
}

// unavailable wraps a store error so it matches both ErrUnavailable and the
// cause.
func unavailable(op string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}
