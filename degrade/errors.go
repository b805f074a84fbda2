package degrade

import (
	"errors"
	"fmt"
)

// Errors returned by this package, each matchable with [errors.Is].
var (
	// ErrDegraded is matched by the error of [Switchboard.Check] for a
	// feature that is off for the caller. The error is a
	// [*DegradedError] carrying the feature and its user-facing message.
	ErrDegraded = errors.New("degrade: feature degraded")

	// ErrUnknownFeature means a name that is not one of the
	// switchboard's features was given to a method that changes state.
	// Enabled and Check do not return it: see [Switchboard.Enabled].
	ErrUnknownFeature = errors.New("degrade: unknown feature")

	// ErrInvalidConfig is matched by every error a constructor or a
	// state change returns for a bad argument. The message names the
	// field.
	ErrInvalidConfig = errors.New("degrade: invalid configuration")

	// ErrConflict means a change was based on an older version of the
	// state than the store holds; re-read and try again.
	ErrConflict = errors.New("degrade: state changed meanwhile")

	// ErrUnavailable means the store (Redis) could not be reached. The
	// switchboard keeps deciding from the last state it knew.
	ErrUnavailable = errors.New("degrade: store unavailable")

	// ErrClosed means the switchboard was closed.
	ErrClosed = errors.New("degrade: closed")
)

// DegradedError is the error of [Switchboard.Check] for a feature that is
// off. It matches [ErrDegraded].
type DegradedError struct {
	// Feature is the feature's name.
	Feature string
	// Level is the feature's level.
	Level Level
	// Message is the user-facing message, in the locale of the request
	// when the feature has one for it.
	Message string
}

func (e *DegradedError) Error() string {
	return "degrade: feature " + e.Feature + " degraded: " + e.Message
}

// Is reports whether target is ErrDegraded.
func (e *DegradedError) Is(target error) bool { return target == ErrDegraded }

// configError names the bad field and the value it had.
func configError(field, problem string, value any) error {
	return fmt.Errorf("%w: %s %s, got %v", ErrInvalidConfig, field, problem, value)
}

// unavailable wraps a store error so it matches both ErrUnavailable and
// the cause.
func unavailable(op string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}
