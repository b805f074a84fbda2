//go:build !linux

package queue

import "time"

// preciseSleeper exists only on Linux (see sleep_linux.go); elsewhere rooms
// use Go's timers alone.
type preciseSleeper struct{}

func newPreciseSleeper() *preciseSleeper         { return nil }
func (*preciseSleeper) sleep(time.Duration) bool { return false }
func (*preciseSleeper) close()                   {}
