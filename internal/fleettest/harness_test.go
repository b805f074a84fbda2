package fleettest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// The environment of a worker process.
const (
	envRole   = "BULWARK_FLEETTEST_ROLE"
	envIndex  = "BULWARK_FLEETTEST_INDEX"
	envCount  = "BULWARK_FLEETTEST_WORKERS"
	envAddr   = "BULWARK_FLEETTEST_REDIS"
	envPrefix = "BULWARK_FLEETTEST_PREFIX"
	// envStart is the earliest common start instant, in ns since the Unix
	// epoch on Redis' clock.
	envStart = "BULWARK_FLEETTEST_START"
)

const (
	// fleetSize is the number of worker processes of every scenario.
	fleetSize = 4
	// reportMarker starts the line of a worker's stdout that holds its
	// report, so that whatever else the test binary prints is skipped.
	reportMarker = "FLEETTEST-REPORT "
	// startLead is how long after the parent reads the clock the workers
	// are asked to start: time for four race-instrumented processes to
	// start, connect and meet at the barrier (about 150ms on an idle
	// machine). Should they need longer, the barrier starts them later.
	startLead = 750 * time.Millisecond
	// startMargin is how long after the last worker reaches the barrier
	// the start is, when that is later than the asked start.
	startMargin = 200 * time.Millisecond
)

// roles are the scenarios' workers: each runs in its own process, starts
// the fleet's work at w.start (waitStart) and returns its report.
var roles = map[string]func(ctx context.Context, w *worker) (any, error){
	"limiter": limiterWorker,
	"room":    roomWorker,
	"breaker": breakerWorker,
	"degrade": degradeWorker,
}

// worker is one process of the fleet, as its role sees it.
type worker struct {
	index, count int
	prefix       string
	client       *redis.Client
	clock        clock
	// asked is the start instant from the environment; start, the one
	// agreed at the barrier (waitStart); readyAt, when this worker
	// reached the barrier.
	asked, start, readyAt time.Time
	// lag watches the machine from the start on.
	lag lagWatch
}

// envelope is what a worker prints: its report and how it started.
type envelope struct {
	Worker int
	Role   string
	// Start is the agreed start instant and Asked the one the parent
	// asked for (ns, Redis' clock).
	Start, Asked int64
	// Ready is when this worker reached the barrier (ns, Redis' clock).
	Ready int64
	// ClockRTT is the round trip of the TIME call that set its clock.
	ClockRTT time.Duration
	// Lag is what the worker's lag watch saw while the scenario ran.
	Lag    lagReport
	Report json.RawMessage
}

// TestFleetWorker is the body of a worker process; run directly, it skips.
func TestFleetWorker(t *testing.T) {
	role := os.Getenv(envRole)
	if role == "" {
		t.Skip("a worker of the fleet tests: runs only in a process they start")
	}
	run, ok := roles[role]
	if !ok {
		t.Fatalf("unknown role %q", role)
	}
	index, err1 := strconv.Atoi(os.Getenv(envIndex))
	count, err2 := strconv.Atoi(os.Getenv(envCount))
	startNS, err3 := strconv.ParseInt(os.Getenv(envStart), 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatalf("bad worker environment: %v", err)
	}
	// Every scenario ends well within this. Past it the worker's calls
	// fail and it says so; should it hang regardless, -test.timeout (a
	// little later) makes it print its goroutines and exit, and the
	// parent's own deadline kills it.
	ctx, cancel := context.WithTimeout(context.Background(), workerTimeout)
	defer cancel()

	client := redis.NewClient(&redis.Options{Addr: os.Getenv(envAddr)})
	defer client.Close()
	clk, err := syncClock(ctx, client)
	if err != nil {
		t.Fatalf("reading Redis' clock: %v", err)
	}
	w := &worker{
		index: index, count: count,
		prefix: os.Getenv(envPrefix),
		client: client, clock: clk,
		asked: time.Unix(0, startNS),
	}
	rep, err := run(ctx, w)
	lag := w.lag.stop()
	if err != nil {
		t.Fatalf("worker %d (%s): %v", index, role, err)
	}
	body, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	env := envelope{
		Worker: index, Role: role,
		Start: w.start.UnixNano(), Asked: startNS, Ready: w.readyAt.UnixNano(),
		ClockRTT: clk.rtt, Lag: lag, Report: body,
	}
	line, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(os.Stdout, "\n%s%s\n", reportMarker, line)
}

// workerTimeout bounds a worker's whole run.
const workerTimeout = 45 * time.Second

// clock reads Redis' clock through the local one: the local wall clock
// plus the offset measured against Redis' TIME.
type clock struct {
	offset, rtt time.Duration
}

// syncClock measures the local clock's offset from Redis' clock, from the
// TIME call with the shortest round trip of a few: Redis read its clock
// within that round trip, so the error is at most half of it.
func syncClock(ctx context.Context, c *redis.Client) (clock, error) {
	best := clock{rtt: time.Hour}
	for range 9 {
		t0 := time.Now()
		rt, err := c.Time(ctx).Result()
		rtt := time.Since(t0)
		if err != nil {
			return clock{}, err
		}
		if rtt < best.rtt {
			// rt has no monotonic reading: Sub compares wall clocks.
			best = clock{offset: rt.Sub(t0.Add(rtt / 2)), rtt: rtt}
		}
	}
	return best, nil
}

// now is the time on Redis' clock. Differences of two readings use the
// local monotonic clock.
func (c clock) now() time.Time { return time.Now().Add(c.offset) }

// ns is now in ns since the Unix epoch on Redis' clock, for records.
func (c clock) ns() int64 { return c.now().UnixNano() }

// sleepUntil sleeps until the instant at on Redis' clock, or ctx ends.
func (c clock) sleepUntil(ctx context.Context, at time.Time) error {
	d := at.Sub(c.now())
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// barrier counts the workers that are ready; the one that completes the
// count sets the start: the asked start, or startMargin from now if that
// has passed or is nearer. KEYS: counter, start. ARGV: workers, asked start
// µs, margin µs. Reply: the count.
var barrier = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], 300000)
if n == tonumber(ARGV[1]) then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local start = math.max(tonumber(ARGV[2]), now + tonumber(ARGV[3]))
  redis.call('SET', KEYS[2], string.format('%d', start), 'PX', 300000)
end
return n
`)

// waitStart meets the other workers at the barrier and sleeps until the
// agreed start instant, which it stores in w.start.
func (w *worker) waitStart(ctx context.Context) error {
	w.readyAt = w.clock.now()
	keys := []string{w.prefix + "barrier:ready", w.prefix + "barrier:start"}
	if err := barrier.Run(ctx, w.client, keys, w.count, w.asked.UnixMicro(), startMargin.Microseconds()).Err(); err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	for {
		v, err := w.client.Get(ctx, keys[1]).Int64()
		if err == nil {
			w.start = time.UnixMicro(v)
			break
		}
		if !errors.Is(err, redis.Nil) {
			return fmt.Errorf("barrier: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("barrier: waiting for the other workers: %w", ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
	if err := w.clock.sleepUntil(ctx, w.start); err != nil {
		return err
	}
	w.lag.start(ctx, w.client, w.clock)
	return nil
}

// lagEvery is how often a worker's lag watch looks at the machine;
// stallMin is the lag it records as a stall; disturbed is the lag from
// which a whole run counts as disturbed by the machine rather than by
// what it measures.
const (
	lagEvery  = 10 * time.Millisecond
	stallMin  = 25 * time.Millisecond
	disturbed = 100 * time.Millisecond
	maxStalls = 1000
)

// lagWatch measures how late a worker's process and Redis answer while a
// scenario runs: a busy machine (other processes on the two cores, a
// stalled VM) delays timers, goroutines and Redis alike, and a timing
// target missed in such a run, or a sample taken during such a stall,
// says more about the machine than about the code.
type lagWatch struct {
	cancel context.CancelFunc
	done   chan lagReport
}

// lagReport is the largest delay of the worker's ticks (a sleep of
// lagEvery that took longer) and of a Redis PING, when each was seen, and
// every stretch of time in which either was stallMin late or more (ns,
// Redis' clock).
type lagReport struct {
	Tick, Ping     time.Duration
	TickAt, PingAt int64
	Stalls         []span
}

func (l *lagWatch) start(ctx context.Context, c *redis.Client, clk clock) {
	ctx, l.cancel = context.WithCancel(ctx)
	l.done = make(chan lagReport, 1)
	stalled := func(r *lagReport, from, to time.Time) {
		if len(r.Stalls) < maxStalls {
			r.Stalls = append(r.Stalls, span{from.Add(clk.offset).UnixNano(), to.Add(clk.offset).UnixNano()})
		}
	}
	go func() {
		var r lagReport
		for ctx.Err() == nil {
			t0 := time.Now()
			time.Sleep(lagEvery)
			t1 := time.Now()
			if d := t1.Sub(t0) - lagEvery; d >= stallMin {
				stalled(&r, t0.Add(lagEvery), t1)
				if d > r.Tick {
					r.Tick, r.TickAt = d, clk.ns()
				}
			}
			err := c.Ping(ctx).Err()
			if ctx.Err() != nil {
				break
			}
			if d := time.Since(t1); d >= stallMin || err != nil {
				stalled(&r, t1, time.Now())
				if d > r.Ping {
					r.Ping, r.PingAt = d, clk.ns()
				}
			}
		}
		l.done <- r
	}()
}

// stop ends the watch and returns what it saw.
func (l *lagWatch) stop() lagReport {
	if l.cancel == nil {
		return lagReport{}
	}
	l.cancel()
	return <-l.done
}

// at is the instant d after the start.
func (w *worker) at(d time.Duration) time.Time { return w.start.Add(d) }

// fleetRun is what the parent learned from one run of a scenario's workers.
type fleetRun struct {
	envs []envelope
	// start is the agreed start instant (ns, Redis' clock).
	start int64
}

// runFleet starts fleetSize workers of role against the Redis of the test,
// waits for them (at most limit) and returns their reports. It fails t if
// any worker fails, hangs or prints no report; workers still running when
// t ends are killed.
func runFleet(t *testing.T, role string, limit time.Duration) fleetRun {
	t.Helper()
	if testing.Short() {
		t.Skip("a fleet scenario takes about ten seconds: skipped with -short")
	}
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	client := redistest.NewClient(t, addr)
	// Workers are killed when the limit passes, when one of them fails
	// (the others may be waiting for it at the barrier) and when t ends.
	base, stop := context.WithCancelCause(context.Background())
	ctx, cancel := context.WithTimeoutCause(base, limit, fmt.Errorf("the scenario's limit of %v passed", limit))
	t.Cleanup(cancel)
	clk, err := syncClock(ctx, client)
	if err != nil {
		t.Fatalf("reading Redis' clock: %v", err)
	}
	asked := clk.now().Add(startLead)

	type proc struct {
		cmd         *exec.Cmd
		out, errOut bytes.Buffer
		err         error
	}
	procs := make([]*proc, fleetSize)
	var wg sync.WaitGroup
	// Kills whatever still runs when the test ends early, and waits for
	// the goroutines that wait for the processes.
	t.Cleanup(func() {
		stop(errors.New("the test ended"))
		wg.Wait()
	})
	for i := range procs {
		p := &proc{}
		procs[i] = p
		// Each worker bounds itself too (workerTimeout); this bounds it
		// from outside, should it hang where its own timer cannot help.
		p.cmd = exec.CommandContext(ctx, exe,
			"-test.run=^TestFleetWorker$", "-test.count=1",
			"-test.timeout="+(workerTimeout+10*time.Second).String())
		p.cmd.Env = append(os.Environ(),
			envRole+"="+role,
			envIndex+"="+strconv.Itoa(i),
			envCount+"="+strconv.Itoa(fleetSize),
			envAddr+"="+addr,
			envPrefix+"="+prefix,
			envStart+"="+strconv.FormatInt(asked.UnixNano(), 10),
		)
		p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.errOut
		// After the kill, do not wait long for output pipes.
		p.cmd.WaitDelay = 2 * time.Second
		if err := p.cmd.Start(); err != nil {
			t.Fatalf("starting worker %d: %v", i, err)
		}
		wg.Go(func() {
			p.err = p.cmd.Wait()
			if p.err != nil {
				stop(fmt.Errorf("worker %d failed", i))
			}
		})
	}
	wg.Wait()

	run := fleetRun{}
	var failed bool
	for i, p := range procs {
		if p.err != nil {
			failed = true
			why := ""
			if ctx.Err() != nil {
				why = fmt.Sprintf(" (workers still running were killed: %v)", context.Cause(ctx))
			}
			t.Errorf("worker %d (%s) failed: %v%s\nstdout:\n%s\nstderr:\n%s",
				i, role, p.err, why, tail(p.out.String()), tail(p.errOut.String()))
			continue
		}
		env, err := parseReport(p.out.Bytes())
		if err != nil {
			failed = true
			t.Errorf("worker %d (%s): %v\nstdout:\n%s", i, role, err, tail(p.out.String()))
			continue
		}
		run.envs = append(run.envs, env)
	}
	if failed {
		t.FailNow()
	}
	slices.SortFunc(run.envs, func(a, b envelope) int { return a.Worker - b.Worker })
	run.start = run.envs[0].Start
	var spare []time.Duration
	for _, e := range run.envs {
		if e.Start != run.start {
			t.Fatalf("workers disagree on the start: %d and %d", run.start, e.Start)
		}
		spare = append(spare, time.Duration(e.Asked-e.Ready).Round(time.Millisecond))
	}
	lag, where := run.maxLag()
	t.Logf("%d workers ready %v before the asked start, started %v after it; clock round trips %v; largest lag: %s, %v",
		len(run.envs), spare, time.Duration(run.start-run.envs[0].Asked).Round(time.Millisecond), clockRTTs(run.envs), where, round(lag))
	return run
}

// maxAttempts bounds the runs of a scenario (see fleetScenario).
const maxAttempts = 2

// fleetScenario runs role's workers and checks the run with check. check
// reports failures of correctness through t at once: those are never
// tried again, since an overtaking or a second probe is a defect however
// busy the machine. It returns the timing targets the run missed (a rate,
// a latency): when a worker's lag watch saw the machine stall for
// disturbed or more, the scenario runs once more, since a stalled machine
// misses them whatever the code does; otherwise, or on the last attempt,
// they fail the test, with the lag seen.
func fleetScenario(t *testing.T, role string, limit time.Duration, check func(t *testing.T, run fleetRun) (misses []string)) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		run := runFleet(t, role, limit)
		misses := check(t, run)
		if t.Failed() || len(misses) == 0 {
			return
		}
		lag, where := run.maxLag()
		if lag >= disturbed && attempt < maxAttempts {
			t.Logf("attempt %d missed %d timing targets while the machine stalled (%s lagged %v): %s; running the scenario again",
				attempt, len(misses), where, round(lag), strings.Join(misses, "; "))
			continue
		}
		for _, m := range misses {
			t.Error(m)
		}
		t.Logf("the largest lag seen in this run: %s, %v (a run counts as disturbed from %v)", where, round(lag), disturbed)
		return
	}
}

// stalledIn reports whether any worker's lag watch saw a stall that
// overlaps [from, to]: the machine is shared, so a stall seen by one
// process says the others and Redis may have waited too.
func (r fleetRun) stalledIn(from, to int64) bool {
	for _, e := range r.envs {
		for _, s := range e.Lag.Stalls {
			if s.From <= to && s.To >= from {
				return true
			}
		}
	}
	return false
}

// maxLag is the largest lag the workers' watches saw, and where.
func (r fleetRun) maxLag() (time.Duration, string) {
	var (
		lag   time.Duration
		where = "nothing"
	)
	for _, e := range r.envs {
		if e.Lag.Tick > lag {
			lag, where = e.Lag.Tick, fmt.Sprintf("worker %d's %v tick at %s", e.Worker, lagEvery, ms(r.start, e.Lag.TickAt))
		}
		if e.Lag.Ping > lag {
			lag, where = e.Lag.Ping, fmt.Sprintf("worker %d's Redis PING at %s", e.Worker, ms(r.start, e.Lag.PingAt))
		}
	}
	return lag, where
}

// reports decodes every worker's report into a T.
func reports[T any](t *testing.T, run fleetRun) []T {
	t.Helper()
	out := make([]T, len(run.envs))
	for i, e := range run.envs {
		if err := json.Unmarshal(e.Report, &out[i]); err != nil {
			t.Fatalf("worker %d's report: %v", e.Worker, err)
		}
	}
	return out
}

func clockRTTs(envs []envelope) string {
	var parts []string
	for _, e := range envs {
		parts = append(parts, e.ClockRTT.Round(time.Microsecond).String())
	}
	return strings.Join(parts, " ")
}

// parseReport finds the report line in a worker's stdout.
func parseReport(out []byte) (envelope, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), reportMarker)
		if !ok {
			continue
		}
		var env envelope
		if err := json.Unmarshal([]byte(line), &env); err != nil {
			return envelope{}, fmt.Errorf("bad report: %w", err)
		}
		return env, nil
	}
	if err := sc.Err(); err != nil {
		return envelope{}, err
	}
	return envelope{}, errors.New("no report on stdout")
}

// tail is the end of a long output, for failure messages.
func tail(s string) string {
	const max = 8000
	if len(s) > max {
		return "...\n" + s[len(s)-max:]
	}
	return s
}
