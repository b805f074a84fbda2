// Package benchmarks compares Bulwark with the libraries a Go service would
// otherwise reach for. It is a module of its own so that users of Bulwark
// never download the competitors; see README.md for how to run it.
package benchmarks

import (
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

func TestMain(m *testing.M) {
	// go-zero imports automaxprocs, whose init sets GOMAXPROCS from the
	// container's CPU quota and so pins it for every benchmark here. Go's
	// own default already follows the quota; go back to it, unless the
	// user chose a value.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.SetDefaultGOMAXPROCS()
	}
	quietPeers()
	// Goroutines alive now were started by the init functions of peer
	// libraries (go-zero's CPU sampler and signal handler) and live as long
	// as the process; the leak check looks only at what the benchmarks
	// start.
	redistest.Main(m, goleak.IgnoreCurrent())
}

// ample is a burst no benchmark can drain: even at 10 ns per decision a
// one-second run takes 10⁸ tokens, a tenth of it. With it every library's
// allow path is measured, never its refusal.
const ample = 1 << 30

// makeKeys returns n distinct keys "user:0" … "user:<n-1>", built up front
// so that formatting a key is not part of any measurement.
func makeKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "user:" + strconv.Itoa(i)
	}
	return keys
}

// cursor walks a key set round-robin. Each RunParallel goroutine takes its
// own cursor from [spread], so goroutines start at different keys instead of
// all hitting key 0 together.
type cursor struct {
	i, n int
}

func (c *cursor) next() int {
	i := c.i
	c.i++
	if c.i == c.n {
		c.i = 0
	}
	return i
}

// spread hands out cursors over n keys with starting points far apart.
type spread struct {
	n    int
	seen atomic.Int64
}

func (s *spread) cursor() *cursor {
	// 7919 is prime: unless n is a multiple of it, the first n goroutines
	// start at n different keys.
	start := int(s.seen.Add(1)*7919) % s.n
	return &cursor{i: start, n: s.n}
}

// tally counts the decisions that went the wrong way and the errors of one
// run. Goroutines keep local counts and add them once, at the end, so
// counting costs nothing inside the loop.
type tally struct {
	wrong    atomic.Int64
	errs     atomic.Int64
	firstErr atomic.Pointer[error]
}

// counts is one goroutine's share of a tally, kept without atomics while
// the timer runs.
type counts struct {
	wrong, errs int64
	firstErr    error
}

// note counts one call's outcome; ok is whether it went the expected way.
func (c *counts) note(ok bool, err error) {
	if err != nil {
		c.errs++
		c.firstErr = err
	} else if !ok {
		c.wrong++
	}
}

func (t *tally) add(c counts) {
	t.wrong.Add(c.wrong)
	t.errs.Add(c.errs)
	if c.firstErr != nil {
		t.firstErr.CompareAndSwap(nil, &c.firstErr)
	}
}

// check fails b when any decision in the run went the wrong way, because
// then the benchmark measured a different path than its name says.
func (t *tally) check(b *testing.B, want string) {
	b.Helper()
	if n := t.errs.Load(); n > 0 {
		b.Errorf("%d of %d calls failed; first: %v", n, b.N, *t.firstErr.Load())
	}
	if n := t.wrong.Load(); n > 0 {
		b.Errorf("%d of %d decisions were not %s", n, b.N, want)
	}
}
