package benchmarks

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// roomReport is what one run of BenchmarkRoom measured; the float fields
// are averaged over the runs of one benchmark call.
type roomReport struct {
	// rate is admissions per second over the window from the first
	// admission to the last admission before the end of D:
	// (k−1)/(t_k−t_1) for the k admissions t_1 ≤ … ≤ t_k ≤ D. Counting
	// from the first admission leaves out the start-up, and ending at the
	// last admission, not at D, keeps a perfect pacer exact (k admissions
	// in a window of length L would be off by up to one gap, 1/(rate·L):
	// 0.1% at 100/s over 10 s).
	rate float64
	// errPct is 100·(rate−target)/target.
	errPct float64
	// gap1, gap50, gap99 are percentiles of the time between consecutive
	// admissions within the window, in µs; gapRatio is gap99 over the
	// ideal gap 1/target.
	gap1, gap50, gap99, gapRatio float64
	// refusal50, refusal99 are percentiles of the time from asking to a
	// refusal without waiting (Sentinel's block, ErrFull,
	// ErrWaitTooLong), in µs; refusals counts them (0: no percentiles).
	refusal50, refusal99 float64
	refusals             float64
	// timeouts counts callers refused after waiting the maximum wait.
	timeouts float64
	// fifo counts admitted callers that were admitted before an admitted
	// caller who had asked earlier; fifoFar counts those of them admitted
	// more than fifoSlack before such a caller. Both are seen from the
	// callers, so fifo also counts callers woken in the same timer tick
	// that ran in another order than they were admitted, and callers
	// delayed between taking their timestamp and asking.
	fifo, fifoFar float64
	// late99 is the 99th percentile of how late an arrival asked, against
	// its even schedule, in µs: how faithfully the harness offered load.
	late99 float64

	// Not averaged: checked after each run.
	inWindow int
	failed   int
	firstErr error
}

// fifoSlack is how far apart two admissions in the wrong order must be for
// fifo-over-1ms: farther than the scheduler's wake-up granularity here (Go's
// timers fire up to about a millisecond late on an idle machine).
const fifoSlack = time.Millisecond

// analyseRoom computes one run's report from its records; the i-th record
// was due at i·interval, D is d, and target the admissions per second
// wanted.
func analyseRoom(recs []roomRec, interval, d time.Duration, target float64) roomReport {
	var (
		r        roomReport
		window   []time.Duration // admissions up to D
		admitted []roomRec
		refusals []time.Duration
		late     = make([]time.Duration, 0, len(recs))
	)
	for i, rec := range recs {
		late = append(late, rec.asked-time.Duration(i)*interval)
		switch rec.out {
		case roomAdmitted:
			admitted = append(admitted, rec)
			if rec.answered <= d {
				window = append(window, rec.answered)
			}
		case roomRefused:
			refusals = append(refusals, rec.answered-rec.asked)
		case roomTimedOut:
			r.timeouts++
		default:
			r.failed++
			if r.firstErr == nil {
				r.firstErr = rec.err
				if r.firstErr == nil {
					r.firstErr = errors.New("no answer")
				}
			}
		}
	}
	slices.Sort(late)
	r.late99 = micros(percentile(late, 99))

	slices.Sort(window)
	r.inWindow = len(window)
	if len(window) >= 2 {
		span := window[len(window)-1] - window[0]
		r.rate = float64(len(window)-1) / span.Seconds()
		r.errPct = 100 * (r.rate - target) / target
		gaps := make([]time.Duration, len(window)-1)
		for i := range gaps {
			gaps[i] = window[i+1] - window[i]
		}
		slices.Sort(gaps)
		r.gap1 = micros(percentile(gaps, 1))
		r.gap50 = micros(percentile(gaps, 50))
		r.gap99 = micros(percentile(gaps, 99))
		r.gapRatio = r.gap99 / (1e6 / target)
	}

	r.refusals = float64(len(refusals))
	if len(refusals) > 0 {
		slices.Sort(refusals)
		r.refusal50 = micros(percentile(refusals, 50))
		r.refusal99 = micros(percentile(refusals, 99))
	}

	// In the order they asked, a caller admitted before the latest
	// admission of those who asked earlier overtook one of them.
	slices.SortFunc(admitted, func(a, b roomRec) int { return int(a.asked - b.asked) })
	latest := time.Duration(math.MinInt64)
	for _, rec := range admitted {
		if rec.answered < latest {
			r.fifo++
			if latest-rec.answered > fifoSlack {
				r.fifoFar++
			}
		}
		latest = max(latest, rec.answered)
	}
	return r
}

// add sums another run's averaged fields into r.
func (r *roomReport) add(o roomReport) {
	if o.refusals > 0 {
		// Weighted by count, so scale's average stays a per-refusal one.
		r.refusal50 += o.refusal50 * o.refusals
		r.refusal99 += o.refusal99 * o.refusals
	}
	r.rate += o.rate
	r.errPct += o.errPct
	r.gap1 += o.gap1
	r.gap50 += o.gap50
	r.gap99 += o.gap99
	r.gapRatio += o.gapRatio
	r.refusals += o.refusals
	r.timeouts += o.timeouts
	r.fifo += o.fifo
	r.fifoFar += o.fifoFar
	r.late99 += o.late99
}

// scale turns the sum of runs into their mean (f is 1/runs).
func (r *roomReport) scale(f float64) {
	if r.refusals > 0 {
		r.refusal50 /= r.refusals
		r.refusal99 /= r.refusals
	}
	r.rate *= f
	r.errPct *= f
	r.gap1 *= f
	r.gap50 *= f
	r.gap99 *= f
	r.gapRatio *= f
	r.refusals *= f
	r.timeouts *= f
	r.fifo *= f
	r.fifoFar *= f
	r.late99 *= f
}

func (r *roomReport) report(b *testing.B) {
	b.ReportMetric(0, "ns/op") // a run lasts D whatever the library
	b.ReportMetric(r.rate, "admitted/s")
	b.ReportMetric(r.errPct, "rate-err-%")
	b.ReportMetric(r.gap1, "gap-p1-µs")
	b.ReportMetric(r.gap50, "gap-p50-µs")
	b.ReportMetric(r.gap99, "gap-p99-µs")
	b.ReportMetric(r.gapRatio, "gap-p99/ideal")
	if r.refusals > 0 {
		b.ReportMetric(r.refusal50, "refusal-p50-µs")
		b.ReportMetric(r.refusal99, "refusal-p99-µs")
	}
	b.ReportMetric(r.refusals, "refused")
	b.ReportMetric(r.timeouts, "timeouts")
	b.ReportMetric(r.fifo, "fifo-violations")
	b.ReportMetric(r.fifoFar, "fifo-over-1ms")
	b.ReportMetric(r.late99, "late-p99-µs")
}

// percentile is the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// memGrowth is a reading of memory, or the growth between two, in bytes:
// resident set, live Go heap objects, goroutine stacks.
type memGrowth struct {
	rss, heap, stacks float64
}

func (m memGrowth) minus(o memGrowth) memGrowth {
	return memGrowth{m.rss - o.rss, m.heap - o.heap, m.stacks - o.stacks}
}

func (m memGrowth) plus(o memGrowth) memGrowth {
	return memGrowth{m.rss + o.rss, m.heap + o.heap, m.stacks + o.stacks}
}

func (m memGrowth) div(f float64) memGrowth {
	return memGrowth{m.rss / f, m.heap / f, m.stacks / f}
}

// readRSS returns VmRSS from /proc/self/status, in bytes.
func readRSS() (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		kb, ok := strings.CutSuffix(strings.TrimSpace(v), " kB")
		if !ok {
			return 0, fmt.Errorf("VmRSS %q: not in kB", v)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(kb), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS %q: %w", v, err)
		}
		return n << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no VmRSS line in /proc/self/status")
}

// goMemory returns the bytes of live heap objects and of goroutine stacks,
// as the runtime counts them.
func goMemory() (heap, stacks uint64) {
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
	}
	metrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64()
}

// runnableGoroutines is the number of goroutines ready to run but not
// running.
func runnableGoroutines() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines/runnable:goroutines"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0 // not known to this runtime: rely on the settling time
	}
	return s[0].Value.Uint64()
}

// TestAnalyseRoom checks the arithmetic of the room report on a made-up
// run: a pacer admitting every 10 ms, callers overtaken, refusals.
func TestAnalyseRoom(t *testing.T) {
	ms := time.Millisecond
	recs := []roomRec{
		{asked: 0, answered: 0, out: roomAdmitted},
		{asked: 5 * ms, answered: 20 * ms, out: roomAdmitted}, // overtaken by 10 ms
		{asked: 10 * ms, answered: 10 * ms, out: roomAdmitted},
		{asked: 15 * ms, answered: 15*ms + 40*time.Microsecond, out: roomRefused},
		{asked: 20 * ms, answered: 30 * ms, out: roomAdmitted},
		{asked: 25 * ms, answered: 25*ms + 60*time.Microsecond, out: roomRefused},
		{asked: 30 * ms, answered: 530 * ms, out: roomTimedOut},
		{asked: 35 * ms, answered: 60 * ms, out: roomAdmitted}, // after D
		{asked: 36 * ms, answered: 59 * ms, out: roomAdmitted}, // overtakes by 1 ms: not far
		{asked: 37 * ms, answered: 50 * ms, out: roomAdmitted}, // overtakes by 10 ms
	}
	r := analyseRoom(recs, 5*ms, 40*ms, 100)
	if r.failed != 0 || r.inWindow != 4 {
		t.Fatalf("failed %d, in window %d; want 0, 4", r.failed, r.inWindow)
	}
	if math.Abs(r.rate-100) > 1e-9 || math.Abs(r.errPct) > 1e-9 {
		t.Errorf("rate %v (%v%%), want 100 (0%%)", r.rate, r.errPct)
	}
	if r.gap1 != 10_000 || r.gap50 != 10_000 || r.gap99 != 10_000 || r.gapRatio != 1 {
		t.Errorf("gaps %v %v %v ratio %v, want 10000 µs and 1", r.gap1, r.gap50, r.gap99, r.gapRatio)
	}
	if r.refusals != 2 || r.refusal50 != 40 || r.refusal99 != 60 {
		t.Errorf("refusals %v p50 %v p99 %v, want 2, 40, 60", r.refusals, r.refusal50, r.refusal99)
	}
	if r.timeouts != 1 || r.fifo != 3 || r.fifoFar != 2 || r.late99 != 0 {
		t.Errorf("timeouts %v fifo %v far %v late %v, want 1, 3, 2, 0", r.timeouts, r.fifo, r.fifoFar, r.late99)
	}
}
