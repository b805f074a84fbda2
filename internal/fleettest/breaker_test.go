package fleettest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
)

// The breaker scenario: four processes each have a breaker named "dep"
// with the same options on one breaker.Fleet prefix, and call it every
// breakerCallEvery from breakerCallers goroutines, for breakerCycles
// cycles of breakerCycle each. Two kinds of cycle alternate:
//
//   - a burst (even cycles): the dependency of worker k mod 4 alone fails
//     from breakerFailFrom to breakerBurstTo into cycle k, which trips that
//     worker's breaker and, through the fleet, every breaker. The
//     dependency is back long before the open timeout runs out, so the
//     one probe succeeds and every breaker closes.
//   - an outage (odd cycles): every worker's dependency fails from
//     breakerFailFrom to breakerOutageTo, past the first probe, so the
//     breakers trip on their own and together, the first probe fails and
//     opens them all again, and the probe after the next open timeout
//     succeeds.
const (
	breakerTimeout   = 500 * time.Millisecond
	breakerCycle     = 1400 * time.Millisecond
	breakerCycles    = 6
	breakerFailFrom  = 100 * time.Millisecond
	breakerBurstTo   = 250 * time.Millisecond
	breakerOutageTo  = breakerFailFrom + breakerTimeout + 150*time.Millisecond
	breakerTrip      = 5
	breakerCallers   = 2
	breakerCallEvery = 2 * time.Millisecond
	// breakerSpread bounds how long after the first breaker opens the
	// last one may open, and after the probe's success the last closes.
	breakerSpread = 100 * time.Millisecond
	// breakerStall bounds how long a breaker may stay half-open: its
	// callers call every couple of milliseconds, so the first call after
	// the open timeout probes, and the probe's outcome reaches every
	// instance within milliseconds. The stall this guards against lasts
	// an open timeout or more; the bound leaves room for a busy machine.
	breakerStall = breakerTimeout / 2
)

// outage reports whether cycle k is an outage of every worker's
// dependency rather than one worker's burst of failures.
func outage(k int) bool { return k%2 == 1 }

// stateChange is a change of a breaker's state as a worker saw it; At is
// ns on Redis' clock.
type stateChange struct {
	From, To string
	At       int64
}

// depCall is a call that reached a worker's dependency: when Execute was
// called (Start) and when the dependency was (At), and whether the
// dependency failed it.
type depCall struct {
	Start, At int64
	Failed    bool `json:",omitempty"`
}

// breakerReport is one worker's account.
type breakerReport struct {
	// Changes are the changes its listener was told of.
	Changes []stateChange
	// Polled are the changes seen by polling State every millisecond,
	// which also shows when an open breaker became half-open (no
	// listener is told of that).
	Polled []stateChange
	// Calls are the calls that reached the dependency.
	Calls []depCall
	// RejectedOpen and RejectedHalfOpen count rejected calls.
	RejectedOpen, RejectedHalfOpen int
	Errors                         []string
}

var errDown = errors.New("dependency down")

func breakerWorker(ctx context.Context, w *worker) (any, error) {
	fleet, err := breaker.NewFleet(ctx, w.client, breaker.WithFleetPrefix(w.prefix+"breaker:"))
	if err != nil {
		return nil, err
	}
	defer fleet.Close()
	var (
		mu  sync.Mutex
		rep breakerReport
	)
	br := breaker.New[int]("dep",
		breaker.WithTripPolicy(breaker.ConsecutiveFailures(breakerTrip)),
		breaker.WithOpenTimeout(breakerTimeout),
		breaker.WithFleet(fleet),
		breaker.WithListener(func(c breaker.StateChange) {
			at := c.At.Add(w.clock.offset).UnixNano()
			mu.Lock()
			rep.Changes = append(rep.Changes, stateChange{c.From.String(), c.To.String(), at})
			mu.Unlock()
		}))
	if err := w.waitStart(ctx); err != nil {
		return nil, err
	}
	end := w.at(breakerCycles * breakerCycle)
	// failing reports whether this worker's dependency is down at t.
	failing := func(t time.Time) bool {
		in := t.Sub(w.start)
		k := int(in / breakerCycle)
		off := in - time.Duration(k)*breakerCycle
		if outage(k) {
			return off >= breakerFailFrom && off < breakerOutageTo
		}
		return k%w.count == w.index && off >= breakerFailFrom && off < breakerBurstTo
	}
	// dep is the dependency, for a call made through the breaker at start.
	dep := func(start int64) func(context.Context) (int, error) {
		return func(context.Context) (int, error) {
			now := w.clock.now()
			down := failing(now)
			mu.Lock()
			rep.Calls = append(rep.Calls, depCall{start, now.UnixNano(), down})
			mu.Unlock()
			if down {
				return 0, errDown
			}
			return 1, nil
		}
	}

	var wg sync.WaitGroup
	for range breakerCallers {
		wg.Go(func() {
			tick := time.NewTicker(breakerCallEvery)
			defer tick.Stop()
			for w.clock.now().Before(end) {
				_, err := br.Execute(ctx, dep(w.clock.ns()))
				mu.Lock()
				switch {
				case err == nil, errors.Is(err, errDown):
				case errors.Is(err, breaker.ErrTooManyRequests):
					rep.RejectedHalfOpen++
				case errors.Is(err, breaker.ErrOpen):
					rep.RejectedOpen++
				default:
					if len(rep.Errors) < 5 {
						rep.Errors = append(rep.Errors, err.Error())
					}
				}
				mu.Unlock()
				select {
				case <-tick.C:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	wg.Go(func() {
		last := breaker.StateClosed
		for w.clock.now().Before(end) && ctx.Err() == nil {
			if s := br.State(); s != last {
				mu.Lock()
				rep.Polled = append(rep.Polled, stateChange{last.String(), s.String(), w.clock.ns()})
				mu.Unlock()
				last = s
			}
			time.Sleep(time.Millisecond)
		}
	})
	wg.Wait()
	return rep, nil
}

// TestFleetBreaker checks that breakers sharing a breaker.Fleet in four
// processes act as one: when one trips, all are open within breakerSpread;
// no breaker stays half-open longer than breakerStall; each time the open
// timeout runs out exactly one call reaches the dependency (the probe),
// and when a probe succeeds all close within breakerSpread.
//
// Probes are counted from the records alone: a call made through a
// worker's breaker (Execute called) after that worker saw its breaker
// open, that reached the dependency before the first worker saw its
// breaker close (the prober, once its probe succeeded), was let through
// while the fleet was open or half-open: it is a probe. A call that began
// before its breaker opened is not one, even if it reached the dependency
// after. A call by another instance after the fleet closed reaches the
// dependency after the prober's close is published and its claim on the
// probe deleted in Redis, round trips later, so it is not counted however
// the processes' clocks differ within their measured offsets. The probes
// of a cycle must be failed ones, each followed by an open timeout, and
// then one that succeeded: a burst cycle has exactly one probe; an outage
// cycle usually two.
//
// That count is a check of correctness and is never run again, and it is
// made in every cycle. The spreads of opening and closing, and how long a
// breaker stays half-open, are timing targets (see fleetScenario): they
// are not judged in a cycle (or a stretch of half-open) during which any
// process saw the machine stall (see lagWatch), and at least half the
// cycles must be judged.
func TestFleetBreaker(t *testing.T) {
	fleetScenario(t, "breaker", breakerCycles*breakerCycle+30*time.Second, checkBreaker)
}

func checkBreaker(t *testing.T, run fleetRun) (misses []string) {
	reps := reports[breakerReport](t, run)
	for _, r := range reps {
		// Listeners run in order, but a change's instant is taken when
		// it is queued.
		slices.SortStableFunc(r.Changes, func(a, b stateChange) int { return cmp.Compare(a.At, b.At) })
	}
	for i, r := range reps {
		if len(r.Errors) > 0 {
			t.Errorf("worker %d: unexpected errors: %s", i, strings.Join(r.Errors, "; "))
		}
		t.Logf("worker %d: %d calls reached the dependency, %d rejected open, %d rejected half-open, %d changes",
			i, len(r.Calls), r.RejectedOpen, r.RejectedHalfOpen, len(r.Changes))
	}

	// Every stretch of half-open seen by polling, over the whole run.
	var halfOpen []time.Duration
	for i, r := range reps {
		var since int64
		for _, c := range r.Polled {
			if since != 0 {
				d := time.Duration(c.At - since)
				halfOpen = append(halfOpen, d)
				if d > breakerStall && !run.stalledIn(since, c.At) {
					k := int(time.Duration(since-run.start) / breakerCycle)
					from := run.start + int64(time.Duration(k)*breakerCycle)
					misses = append(misses, fmt.Sprintf("cycle %d: worker %d stayed half-open for %v from %s, want at most %v; calls meanwhile: %s; all: %s",
						k, i, round(d), ms(from, since), breakerStall, callsIn(reps, since, c.At, from), polledStates(reps, from, from+int64(breakerCycle))))
				}
				since = 0
			}
			if c.To == "half-open" {
				since = c.At
			}
		}
	}

	var spreadOpen, spreadClose, probeToClosed []time.Duration
	timed := 0 // cycles whose timing was judged
	for k := range breakerCycles {
		from := run.start + int64(time.Duration(k)*breakerCycle)
		to := from + int64(breakerCycle)
		// The cycle's episode begins with its failures: every breaker
		// must be closed by then, or the last cycle's episode ran into
		// this one (a stalled machine) and the records of the two cannot
		// be told apart.
		episode := from + int64(breakerFailFrom-time.Millisecond)
		failer := k % len(reps)
		kind := fmt.Sprintf("burst on worker %d", failer)
		if outage(k) {
			kind = "outage"
		}
		overlap := false
		for i, r := range reps {
			if st := stateAt(r.Changes, episode); st != "closed" {
				misses = append(misses, fmt.Sprintf("cycle %d (%s): worker %d was %s when the cycle's failures began: the last cycle ran late, so this one is not checked",
					k, kind, i, st))
				overlap = true
			}
		}
		if overlap {
			continue
		}
		// When each worker saw its breaker first open, and then closed.
		opened := make([]int64, len(reps))
		closed := make([]int64, len(reps))
		for i, r := range reps {
			for _, c := range r.Changes {
				if c.At < episode || c.At >= to {
					continue
				}
				if c.To == "open" && opened[i] == 0 {
					opened[i] = c.At
				}
				if c.To == "closed" && opened[i] != 0 {
					closed[i] = c.At // the last close of the cycle
				}
			}
		}
		bad := false
		for i := range reps {
			if opened[i] == 0 || closed[i] == 0 {
				misses = append(misses, fmt.Sprintf("cycle %d (%s): worker %d opened at %s and closed at %s; its changes: %v",
					k, kind, i, msOr(from, opened[i], "never"), msOr(from, closed[i], "never"), cycleChanges(reps[i].Changes, from, to)))
				bad = true
			}
		}
		if bad {
			continue
		}
		first, lastOpen := slices.Min(opened), slices.Max(opened)
		if !outage(k) {
			// Nobody opens before the failing worker trips, to within
			// the error of the two workers' clocks.
			for i := range reps {
				slack := int64(run.envs[i].ClockRTT+run.envs[failer].ClockRTT) / 2
				if opened[i]+slack < opened[failer] {
					t.Errorf("cycle %d (%s): worker %d's breaker opened at %s, before the failing worker's at %s",
						k, kind, i, ms(from, opened[i]), ms(from, opened[failer]))
				}
			}
		}
		// The worker that closed first sent the probe that succeeded.
		prober := slices.Index(closed, slices.Min(closed))
		probed, lastClose := closed[prober], slices.Max(closed)
		var probes []probe
		for i, r := range reps {
			if i != prober {
				spreadClose = append(spreadClose, time.Duration(closed[i]-probed))
			}
			if i != slices.Index(opened, first) {
				spreadOpen = append(spreadOpen, time.Duration(opened[i]-first))
			}
			for _, c := range r.Calls {
				if c.Start > opened[i] && c.At < probed {
					probes = append(probes, probe{i, c})
				}
			}
		}
		slices.SortFunc(probes, func(a, b probe) int { return cmp.Compare(a.At, b.At) })
		probeToClosed = append(probeToClosed, time.Duration(lastClose-probed))
		t.Logf("cycle %d (%s): opened %s…%s; probes %s; closed %s…%s",
			k, kind, ms(from, first), ms(from, lastOpen), showProbes(probes, from), ms(from, probed), ms(from, lastClose))

		if run.stalledIn(first, lastClose) {
			t.Logf("cycle %d (%s): a process saw the machine stall during the episode: its timing is not judged", k, kind)
		} else {
			timed++
			if d := time.Duration(lastOpen - first); d > breakerSpread {
				misses = append(misses, fmt.Sprintf("cycle %d (%s): the last breaker opened %v after the first, want within %v", k, kind, round(d), breakerSpread))
			}
			if d := time.Duration(lastClose - probed); d > breakerSpread {
				misses = append(misses, fmt.Sprintf("cycle %d (%s): the last breaker closed %v after the probe succeeded, want within %v", k, kind, round(d), breakerSpread))
			}
		}
		if err := checkProbes(probes); err != nil {
			t.Errorf("cycle %d (%s): %v: probes %s; changes: %s", k, kind, err, showProbes(probes, from), allChanges(reps, from, to))
		} else if !outage(k) && len(probes) != 1 {
			t.Errorf("cycle %d (%s): %d calls reached the dependency while the fleet was open or half-open, want 1: %s; changes: %s",
				k, kind, len(probes), showProbes(probes, from), allChanges(reps, from, to))
		}
	}
	t.Logf("open, after the first breaker opened: %v", distOf(spreadOpen))
	t.Logf("half-open, each stretch seen by polling: %v", distOf(halfOpen))
	t.Logf("closed, after the probe succeeded: %v", distOf(spreadClose))
	t.Logf("all closed, after the probe succeeded: %v", distOf(probeToClosed))
	if timed < breakerCycles/2 {
		misses = append(misses, fmt.Sprintf("the timing of only %d of %d cycles could be judged: the machine stalled in the others", timed, breakerCycles))
	}
	return misses
}

// stateAt is the state a breaker was in at instant at, by its changes;
// closed before the first.
func stateAt(changes []stateChange, at int64) string {
	st := "closed"
	for _, c := range changes {
		if c.At >= at {
			break
		}
		st = c.To
	}
	return st
}

// probe is a call made while the fleet was not closed.
type probe struct {
	Worker int
	depCall
}

// checkProbes checks a cycle's probes: each but the last failed and was
// followed by an open timeout without calls, and the last succeeded.
func checkProbes(ps []probe) error {
	if len(ps) == 0 {
		return errors.New("no call reached the dependency while the fleet was not closed, yet it closed")
	}
	for i, p := range ps {
		if i == len(ps)-1 {
			if p.Failed {
				return errors.New("the last probe failed, yet the fleet closed")
			}
			break
		}
		if !p.Failed {
			return fmt.Errorf("probe %d succeeded, yet more followed", i+1)
		}
		// A failed probe opens the fleet for an open timeout; allow for
		// the clocks and for the timer firing early.
		if d := time.Duration(ps[i+1].At - p.At); d < breakerTimeout-20*time.Millisecond {
			return fmt.Errorf("probes %d and %d only %v apart: two probes in one half-open stretch", i+1, i+2, round(d))
		}
	}
	return nil
}

func showProbes(ps []probe, origin int64) string {
	var parts []string
	for _, p := range ps {
		outcome := "ok"
		if p.Failed {
			outcome = "failed"
		}
		parts = append(parts, fmt.Sprintf("worker %d %s %s", p.Worker, ms(origin, p.At), outcome))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// callsIn shows the calls that reached any dependency in [from, to].
func callsIn(reps []breakerReport, from, to, origin int64) string {
	var ps []probe
	for i, r := range reps {
		for _, c := range r.Calls {
			if c.At >= from && c.At <= to {
				ps = append(ps, probe{i, c})
			}
		}
	}
	slices.SortFunc(ps, func(a, b probe) int { return cmp.Compare(a.At, b.At) })
	return showProbes(ps, origin)
}

// cycleChanges shows the changes within [from, to).
func cycleChanges(cs []stateChange, from, to int64) string {
	var parts []string
	for _, c := range cs {
		if c.At >= from && c.At < to {
			parts = append(parts, fmt.Sprintf("%s→%s %s", c.From, c.To, ms(from, c.At)))
		}
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// allChanges shows every worker's changes in [from, to).
func allChanges(reps []breakerReport, from, to int64) string {
	var parts []string
	for i, r := range reps {
		parts = append(parts, fmt.Sprintf("worker %d %s", i, cycleChanges(r.Changes, from, to)))
	}
	return strings.Join(parts, "; ")
}

// polledStates shows the states each worker was seen in by polling in
// [from, to).
func polledStates(reps []breakerReport, from, to int64) string {
	var parts []string
	for i, r := range reps {
		parts = append(parts, fmt.Sprintf("worker %d %s", i, cycleChanges(r.Polled, from, to)))
	}
	return strings.Join(parts, "; ")
}
