package queue

import (
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// preciseSleeper sleeps to within tens of microseconds, where Go's timers
// may fire a millisecond late (the runtime's poller waits in whole
// milliseconds). It is a timerfd read through the runtime's poller: the
// kernel's high-resolution timer wakes the poller, and no thread or P is
// held while it sleeps.
type preciseSleeper struct {
	mu  sync.Mutex
	fd  int
	f   *os.File
	buf [8]byte
}

// newPreciseSleeper returns a sleeper, or nil if the system has none.
func newPreciseSleeper() *preciseSleeper {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil
	}
	return &preciseSleeper{fd: fd, f: os.NewFile(uintptr(fd), "bulwark-queue-timer")}
}

// sleep sleeps d and reports whether it did; it does not when another
// sleep is under way or the sleeper is closed.
func (p *preciseSleeper) sleep(d time.Duration) bool {
	if p == nil || !p.mu.TryLock() {
		return false
	}
	defer p.mu.Unlock()
	its := unix.ItimerSpec{Value: unix.NsecToTimespec(max(int64(d), 1))}
	if unix.TimerfdSettime(p.fd, 0, &its, nil) != nil {
		return false
	}
	_, err := p.f.Read(p.buf[:])
	return err == nil
}

// close ends the sleeper; a sleep under way returns at once.
func (p *preciseSleeper) close() {
	if p != nil {
		_ = p.f.Close()
	}
}
