package benchmarks

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sentinel "github.com/alibaba/sentinel-golang/api"
	"github.com/alibaba/sentinel-golang/core/base"
	"github.com/alibaba/sentinel-golang/core/config"
	"github.com/alibaba/sentinel-golang/core/flow"
	"github.com/alibaba/sentinel-golang/logging"

	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/queue"
)

// roomDurationEnv names the environment variable that sets how long
// BenchmarkRoom offers load, as a Go duration ("10s"); the -room.duration
// flag wins over it.
const roomDurationEnv = "BULWARK_BENCH_ROOM_DURATION"

var roomDurationFlag = flag.Duration("room.duration", 0,
	"how long BenchmarkRoom offers load to each library (default 10s, or 1s with -short or when CI is set; also "+roomDurationEnv+")")

// roomDuration is D, how long each run offers load: the flag, else the
// environment variable, else 1 s for a smoke run (-short, or CI set) and
// 10 s otherwise.
func roomDuration(b *testing.B) time.Duration {
	b.Helper()
	if d := *roomDurationFlag; d > 0 {
		return d
	}
	if s := os.Getenv(roomDurationEnv); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			b.Fatalf("%s=%q: want a positive Go duration such as 10s", roomDurationEnv, s)
		}
		return d
	}
	if testing.Short() || os.Getenv("CI") != "" {
		return time.Second
	}
	return 10 * time.Second
}

const (
	// roomOverload is how many times the target rate the arrivals come at.
	roomOverload = 2
	// roomMaxWait is the longest a caller may wait in line: Sentinel's
	// MaxQueueingTimeMs and the Room's WithMaxWait.
	roomMaxWait = 500 * time.Millisecond
)

// roomLateWarn is how late (p99, µs) arrivals may ask before a run warns
// that the harness could not offer load on schedule: a few timer ticks.
const roomLateWarn = 5000

// roomRates are the target rates, admissions per second.
var roomRates = []float64{100, 1000}

// roomOutcome is how one request for admission ended.
type roomOutcome uint8

const (
	roomPending  roomOutcome = iota // not answered (never seen after a run)
	roomAdmitted                    // admitted
	roomRefused                     // refused without waiting: Sentinel's block, ErrFull, ErrWaitTooLong
	roomTimedOut                    // refused after waiting the maximum wait: ErrWaitTimeout
	roomFailed                      // any other error: fails the run
)

// roomAsk asks once for admission and blocks until the answer. For an
// admission, release ends it; the harness calls it as soon as it has taken
// the admission's timestamp, so admitted work takes no time.
type roomAsk func(ctx context.Context) (out roomOutcome, release func(), err error)

// roomLib builds a fresh admitter of one library for one run: every run
// starts with an empty line.
type roomLib struct {
	name  string
	build func(b *testing.B, rate float64, arrivals int) roomAsk
}

var roomLibs = []roomLib{
	{"sentinel-throttling", sentinelThrottling},
	{"bulwark-room", bulwarkRoom(false)},
	{"bulwark-room-redis", bulwarkRoom(true)},
}

// sentinelOnce initialises Sentinel once per binary, with a configuration
// that writes no files and starts no goroutines: logs go to the console
// (warnings and errors only) instead of ~/logs/csp, the metric log (files
// and a writer goroutine) and the system collectors (CPU, load and memory
// samplers) are off, and the clock is read on every call instead of from a
// ticker goroutine. None of these plays a part in a flow rule's decision.
var sentinelOnce = sync.OnceValue(func() error {
	logging.ResetGlobalLoggerLevel(logging.WarnLevel)
	c := config.NewDefaultConfig()
	c.Sentinel.App.Name = "bulwark-benchmarks"
	c.Sentinel.Log.Logger = logging.NewConsoleLogger()
	c.Sentinel.Log.Metric.FlushIntervalSec = 0
	c.Sentinel.Stat.System = config.SystemStatConfig{}
	c.Sentinel.UseCacheTime = false
	return sentinel.InitWithConfig(c)
})

var sentinelSeq atomic.Int64

// sentinelThrottling is Sentinel's leaky-bucket queue: a flow rule with
// ControlBehavior Throttling spaces passes 1/threshold apart, and Entry
// sleeps the caller until its slot when the slot is at most
// MaxQueueingTimeMs away, or blocks it at once when it is further.
func sentinelThrottling(b *testing.B, rate float64, _ int) roomAsk {
	if err := sentinelOnce(); err != nil {
		b.Fatalf("sentinel init: %v", err)
	}
	// A resource of its own per run, so each run starts with a fresh rule
	// (the throttling checker keeps the time of the last pass).
	res := "bench-room-" + strconv.FormatInt(sentinelSeq.Add(1), 10)
	_, err := flow.LoadRulesOfResource(res, []*flow.Rule{{
		Resource:               res,
		TokenCalculateStrategy: flow.Direct,
		ControlBehavior:        flow.Throttling,
		Threshold:              rate,
		MaxQueueingTimeMs:      uint32(roomMaxWait / time.Millisecond),
		StatIntervalInMs:       1000,
	}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := flow.ClearRulesOfResource(res); err != nil {
			b.Error(err)
		}
	})
	// Entry takes no context: a queued caller sleeps until its slot.
	return func(context.Context) (roomOutcome, func(), error) {
		e, blk := sentinel.Entry(res, sentinel.WithTrafficType(base.Inbound))
		if blk != nil {
			if blk.BlockType() == base.BlockTypeFlow {
				return roomRefused, nil, nil
			}
			return roomFailed, nil, blk
		}
		return roomAdmitted, func() { e.Exit() }, nil
	}
}

// bulwarkRoom is Bulwark's waiting room, in this process or on Redis
// (BULWARK_REDIS_ADDR, else 127.0.0.1:6379, else a private redis-server;
// skipped when there is none, as in the rest of this module). Its line holds
// every arrival of the run, so only the maximum wait refuses.
func bulwarkRoom(onRedis bool) func(b *testing.B, rate float64, arrivals int) roomAsk {
	return func(b *testing.B, rate float64, arrivals int) roomAsk {
		opts := []queue.RoomOption{queue.WithMaxWait(roomMaxWait), queue.WithMaxLength(arrivals)}
		if onRedis {
			client := redistest.NewClient(b, redistest.Addr(b))
			prefix := redistest.Prefix(b)
			// Cleanups run last first: the room closes, then its keys
			// go, then the client.
			b.Cleanup(func() { deleteKeys(b, client, prefix) })
			opts = append(opts, queue.WithRedis(client), queue.WithKeyPrefix(prefix))
		}
		room, err := queue.NewRoom("bench", rate, opts...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			if err := room.Close(); err != nil {
				b.Errorf("closing the room: %v", err)
			}
		})
		return func(ctx context.Context) (roomOutcome, func(), error) {
			adm, err := room.Wait(ctx)
			switch {
			case err == nil:
				return roomAdmitted, adm.Done, nil
			case errors.Is(err, queue.ErrFull), errors.Is(err, queue.ErrWaitTooLong):
				return roomRefused, nil, nil
			case errors.Is(err, queue.ErrWaitTimeout):
				return roomTimedOut, nil, nil
			default:
				return roomFailed, nil, err
			}
		}
	}
}

// BenchmarkRoom offers each admitter roomOverload times its target rate
// for D (-room.duration) and reports how evenly and how exactly it admits
// and how fast it refuses; see README.md ("Waiting room at 2× overload")
// for what each figure means. One iteration is one run of D; b.N is
// honoured but -count is the way to repeat, since the figures of b.N runs
// are averaged.
func BenchmarkRoom(b *testing.B) {
	d := roomDuration(b)
	for _, rate := range roomRates {
		for _, lib := range roomLibs {
			b.Run(fmt.Sprintf("rate=%g/lib=%s", rate, lib.name), func(b *testing.B) {
				benchRoom(b, lib, rate, d)
			})
		}
	}
}

func benchRoom(b *testing.B, lib roomLib, rate float64, d time.Duration) {
	b.ReportAllocs()
	var sum roomReport
	for range b.N {
		interval := time.Duration(float64(time.Second) / (roomOverload * rate))
		arrivals := int(d / interval)
		ask := lib.build(b, rate, arrivals)
		recs := offerRoom(ask, arrivals, interval, d)
		r := analyseRoom(recs, interval, d, rate)
		if r.failed > 0 {
			b.Fatalf("%d of %d requests failed; first: %v", r.failed, arrivals, r.firstErr)
		}
		if r.inWindow < 2 {
			b.Fatalf("%d admissions within D: nothing to measure", r.inWindow)
		}
		if r.late99 > roomLateWarn {
			b.Logf("arrivals asked up to %.1f ms after their schedule (p99): the machine is too busy for these figures", r.late99/1000)
		}
		sum.add(r)
	}
	sum.scale(1 / float64(b.N))
	sum.report(b)
}

// roomRec is what the harness saw of one arrival, in time since the start
// of the run (monotonic).
type roomRec struct {
	asked    time.Duration // just before asking
	answered time.Duration // just after the answer came
	out      roomOutcome
	err      error
}

// offerRoom makes arrivals requests for admission, the i-th due at
// i·interval after the start, each in a goroutine of its own, and returns
// once every one has been answered. The pacing loop sleeps until the next
// arrival is due and then starts every arrival that is due: a sleep that
// overshoots (Go's timers wake up to about a millisecond late on an idle
// machine) delays arrivals but never drops one, so exactly arrivals are
// offered over D.
func offerRoom(ask roomAsk, arrivals int, interval, d time.Duration) []roomRec {
	// A safety net only: every admitter answers within its maximum wait.
	ctx, cancel := context.WithTimeout(context.Background(), d+10*time.Second)
	defer cancel()
	recs := make([]roomRec, arrivals)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range recs {
		if wait := time.Duration(i)*interval - time.Since(start); wait > 0 {
			time.Sleep(wait)
		}
		rec := &recs[i]
		wg.Go(func() {
			rec.asked = time.Since(start)
			out, release, err := ask(ctx)
			rec.answered = time.Since(start)
			rec.out, rec.err = out, err
			if release != nil {
				release()
			}
		})
	}
	wg.Wait()
	return recs
}

// roomWaiters is how many callers BenchmarkRoomMemory parks in line.
const roomWaiters = 100_000

// parkLib parks callers in one library's line.
type parkLib struct {
	name string
	// build returns a wait that blocks until ctx ends (or, rarely, the
	// caller is admitted) and a close that frees what build made.
	build func(b *testing.B, n int) (wait func(ctx context.Context) error, close func() error)
}

var parkLibs = []parkLib{
	// The floor: a goroutine that does nothing but wait for its context.
	{"goroutines", func(*testing.B, int) (func(context.Context) error, func() error) {
		return func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}, func() error { return nil }
	}},
	// A room that admits one caller every 100 s, with a line and a
	// maximum wait long enough for all of them.
	{"bulwark-room", func(b *testing.B, n int) (func(context.Context) error, func() error) {
		const rate = 0.01
		maxWait := time.Duration(float64(n+1)/rate) * time.Second * 2
		room, err := queue.NewRoom("bench-memory", rate, queue.WithMaxLength(n+1), queue.WithMaxWait(maxWait))
		if err != nil {
			b.Fatal(err)
		}
		return func(ctx context.Context) error {
			adm, err := room.Wait(ctx)
			if err == nil {
				adm.Done()
			}
			return err
		}, room.Close
	}},
}

// BenchmarkRoomMemory parks roomWaiters callers in a line (goroutines
// blocked in Wait on a room that admits almost no one) and reports the
// growth of the process's resident memory, after a GC, in MiB and per
// waiter, with the Go heap and goroutine stacks it is made of. Then it
// cancels every caller, closes the room, and fails if a goroutine is left.
//
// The runtime keeps the descriptor of every goroutine that ever ran, for
// reuse, so whichever run came first would pay for descriptors the later
// ones reuse. To make the order of the runs not matter, roomWaiters
// goroutines are started and ended once before the first run: the figures
// then leave out the descriptors (about half a KiB per goroutine) that a
// process's first 100k waiters also cost.
func BenchmarkRoomMemory(b *testing.B) {
	warmGoroutines(roomWaiters)
	for _, lib := range parkLibs {
		b.Run("lib="+lib.name, func(b *testing.B) {
			benchPark(b, lib, roomWaiters)
		})
	}
}

// warmGoroutines starts n goroutines, lets them all block, and ends
// them, once per process.
var warmGoroutines = func() func(n int) {
	var once sync.Once
	return func(n int) {
		once.Do(func() {
			release := make(chan struct{})
			var wg sync.WaitGroup
			var entered atomic.Int64
			for range n {
				wg.Go(func() {
					entered.Add(1)
					<-release
				})
			}
			settle(&entered, n, 30*time.Second)
			close(release)
			wg.Wait()
		})
	}
}()

func benchPark(b *testing.B, lib parkLib, n int) {
	b.ReportAllocs()
	var sum memGrowth
	for range b.N {
		sum = sum.plus(parkOnce(b, lib, n))
	}
	g := sum.div(float64(b.N))
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(g.rss/(1<<20), "rss-MiB")
	b.ReportMetric(g.rss/float64(n), "rss-B/waiter")
	b.ReportMetric(g.heap/float64(n), "heap-B/waiter")
	b.ReportMetric(g.stacks/float64(n), "stack-B/waiter")
}

func parkOnce(b *testing.B, lib parkLib, n int) memGrowth {
	goroutines := runtime.NumGoroutine()
	wait, closeFn := lib.build(b, n)
	before := readMem(b)

	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg       sync.WaitGroup
		entered  atomic.Int64
		firstErr atomic.Pointer[error]
	)
	for range n {
		wg.Go(func() {
			entered.Add(1)
			err := wait(ctx)
			// Admitted (the odd caller at the start) or cancelled at
			// the end: anything else is a refusal or a failure.
			if err != nil && !errors.Is(err, context.Canceled) {
				firstErr.CompareAndSwap(nil, &err)
			}
		})
	}
	settled := settle(&entered, n, 30*time.Second)
	after := readMem(b)
	cancel()
	wg.Wait()
	if err := closeFn(); err != nil {
		b.Errorf("close: %v", err)
	}
	if !settled {
		b.Errorf("the %d callers did not settle in line within 30s", n)
	}
	if err := firstErr.Load(); err != nil {
		b.Errorf("a parked caller returned %v", *err)
	}
	// Goroutines end shortly after Close; give them a moment.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if left := runtime.NumGoroutine() - goroutines; left > 0 {
		b.Errorf("%d goroutines left after cancelling every caller and closing", left)
	}
	return after.minus(before)
}

// settle waits until all n callers have started and the scheduler has no
// runnable goroutine left for a while, which is when every caller is
// blocked in line. It reports false if that did not happen within limit.
func settle(entered *atomic.Int64, n int, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	quiet := 0
	for time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		if entered.Load() < int64(n) || runnableGoroutines() > 1 {
			quiet = 0
			continue
		}
		if quiet++; quiet == 5 {
			return true
		}
	}
	return false
}

// readMem collects garbage, returns freed memory to the OS, and reads the
// resident set size and the Go runtime's own figures.
func readMem(b *testing.B) memGrowth {
	b.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	rss, err := readRSS()
	if err != nil {
		b.Skipf("resident memory unknown on this system: %v", err)
	}
	heap, stacks := goMemory()
	return memGrowth{rss: float64(rss), heap: float64(heap), stacks: float64(stacks)}
}
