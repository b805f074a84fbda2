package fleettest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/degrade"
)

// The degrade scenario: four processes have a switchboard on one
// degrade.NewRedisStore. Worker 0 flips a switch degradeFlips times, every
// degradeEvery, alternately off and on with Switchboard.Set; every worker
// records when its switchboard tells it (Subscribe) of each flip. The
// store's periodic re-read is set far beyond the run, so what is measured
// is the change notification, not the refresh.
const (
	degradeFeature = "recommendations"
	degradeFlips   = 100
	degradeEvery   = 50 * time.Millisecond
	// degradeFirst is when the first flip is made, after the start.
	degradeFirst = 100 * time.Millisecond
	// degradeSettle is how long after the last flip the workers go on
	// listening.
	degradeSettle = 500 * time.Millisecond
	// degradeP99 bounds the 99th percentile of the propagation latency.
	degradeP99 = 100 * time.Millisecond
)

// flipRecord is one Set by the flipping worker: its index and mode, and
// when the call began and returned (ns, Redis' clock).
type flipRecord struct {
	I          int
	Mode       string
	Start, End int64
	Err        string
	// Unavailable is true if Set failed because Redis did not answer.
	Unavailable bool `json:",omitempty"`
}

// seenRecord is a change a switchboard told of: the flip it carries (from
// the state's message) and when the listener ran.
type seenRecord struct {
	I    int
	Mode string
	At   int64
}

type degradeReport struct {
	Flips []flipRecord
	Seen  []seenRecord
	// Final is whether the feature was on at the end.
	Final bool
}

// flipMessage tags a flip's state, so every switchboard's event names the
// flip it shows.
func flipMessage(i int) string { return "flip " + strconv.Itoa(i) }

func degradeWorker(ctx context.Context, w *worker) (any, error) {
	store, err := degrade.NewRedisStore(w.client, degrade.WithRedisPrefix(w.prefix+"degrade:"), degrade.WithRedisName("fleet"))
	if err != nil {
		return nil, err
	}
	sb, err := degrade.New([]degrade.Feature{{Name: degradeFeature, Level: degrade.Optional}},
		degrade.WithStore(store), degrade.WithRefresh(10*time.Minute))
	if err != nil {
		return nil, err
	}
	defer sb.Close()
	var (
		mu  sync.Mutex
		rep degradeReport
	)
	stop := sb.Subscribe(func(e degrade.Event) {
		at := w.clock.ns()
		if e.Feature != degradeFeature {
			return
		}
		i := -1
		if m, ok := strings.CutPrefix(e.After.State.Messages[""], "flip "); ok {
			if n, err := strconv.Atoi(m); err == nil {
				i = n
			}
		}
		mu.Lock()
		rep.Seen = append(rep.Seen, seenRecord{I: i, Mode: string(e.After.State.Mode), At: at})
		mu.Unlock()
	})
	defer stop()
	if err := w.waitStart(ctx); err != nil {
		return nil, err
	}
	if w.index == 0 {
		for i := range degradeFlips {
			if err := w.clock.sleepUntil(ctx, w.at(degradeFirst+time.Duration(i)*degradeEvery)); err != nil {
				return nil, err
			}
			mode := degrade.Off
			if i%2 == 1 {
				mode = degrade.On
			}
			f := flipRecord{I: i, Mode: string(mode), Start: w.clock.ns()}
			err := sb.Set(ctx, degradeFeature,
				degrade.State{Mode: mode, Messages: map[string]string{"": flipMessage(i)}},
				degrade.Change{By: "fleettest", Reason: flipMessage(i)})
			f.End = w.clock.ns()
			if err != nil {
				f.Err = err.Error()
				f.Unavailable = errors.Is(err, degrade.ErrUnavailable)
			}
			rep.Flips = append(rep.Flips, f)
		}
	}
	end := w.at(degradeFirst + degradeFlips*degradeEvery + degradeSettle)
	if err := w.clock.sleepUntil(ctx, end); err != nil {
		return nil, err
	}
	stop()
	rep.Final = sb.Enabled(ctx, degradeFeature)
	mu.Lock()
	defer mu.Unlock()
	return rep, nil
}

// TestFleetDegrade checks that a switch flipped on one instance reaches
// every other instance of a fleet sharing a Redis store within
// milliseconds: over degradeFlips flips, the 99th percentile of the time
// from the Set call to each other switchboard showing the flip must stay
// under degradeP99.
//
// A switchboard reads the whole state when told of a change, so when a
// flip follows another within its propagation time it may go straight to
// the later one and never show the earlier: the flip has been superseded,
// not lost. A flip's latency on a worker is therefore until the worker
// showed that flip or a later one. Latency is measured from when Set was
// called, no later than the change reached Redis, so it errs long, never
// short; it is also shown from when Set returned. A switchboard must never
// go back to an older flip.
//
// The target is for a machine that runs the fleet: a sample during which
// any process saw the machine stall (a 10ms sleep or a Redis PING
// stallMin late) is left out of the percentile, and at least 90% of the
// samples must be left in. Both figures are logged.
func TestFleetDegrade(t *testing.T) {
	fleetScenario(t, "degrade", degradeFlips*degradeEvery+30*time.Second, checkDegrade)
}

func checkDegrade(t *testing.T, run fleetRun) (misses []string) {
	reps := reports[degradeReport](t, run)
	flips := reps[0].Flips
	if len(flips) != degradeFlips {
		t.Errorf("worker 0 made %d flips, want %d", len(flips), degradeFlips)
		return nil
	}
	var setLat []time.Duration
	for i, f := range flips {
		switch {
		case f.Unavailable:
			misses = append(misses, fmt.Sprintf("flip %d found Redis unavailable: %s", f.I, f.Err))
		case f.Err != "":
			t.Errorf("flip %d failed: %s", f.I, f.Err)
		}
		if f.I != i {
			t.Errorf("flip %d recorded as %d", i, f.I)
			return nil
		}
		setLat = append(setLat, time.Duration(f.End-f.Start))
	}
	// clean holds the latencies of the samples during which no process
	// saw the machine stall (see lagWatch).
	var fromStart, fromEnd, clean []time.Duration
	superseded := 0
	for w := 1; w < len(reps); w++ {
		r := reps[w]
		slices.SortFunc(r.Seen, func(a, b seenRecord) int { return cmp.Compare(a.At, b.At) })
		// newest[i] is when the worker first showed flip i or a later one.
		newest := make([]int64, degradeFlips)
		shown := make([]bool, degradeFlips)
		last := -1
		for _, s := range r.Seen {
			switch {
			case s.I < 0 || s.I >= degradeFlips || s.Mode != flips[s.I].Mode:
				t.Errorf("worker %d showed a change that matches no flip: %+v", w, s)
				continue
			case s.I <= last:
				t.Errorf("worker %d went from flip %d back to flip %d at %s", w, last, s.I, ms(run.start, s.At))
				continue
			}
			shown[s.I] = true
			for i := last + 1; i <= s.I; i++ {
				newest[i] = s.At
			}
			last = s.I
		}
		var ws []time.Duration
		var skipped, never []int
		for i, f := range flips {
			if newest[i] == 0 {
				never = append(never, i)
				// Never reached: longer than any bound.
				fromStart = append(fromStart, time.Hour)
				continue
			}
			if !shown[i] {
				skipped = append(skipped, i)
			}
			d := time.Duration(newest[i] - f.Start)
			fromStart = append(fromStart, d)
			if !run.stalledIn(f.Start, newest[i]) {
				clean = append(clean, d)
			}
			fromEnd = append(fromEnd, time.Duration(newest[i]-f.End))
			ws = append(ws, d)
		}
		superseded += len(skipped)
		t.Logf("worker %d: showed %d of %d flips (superseded before shown: %v); latency from Set called: %v",
			w, degradeFlips-len(skipped)-len(never), degradeFlips, skipped, distOf(ws))
		if len(never) > 0 {
			misses = append(misses, fmt.Sprintf("worker %d never showed flips %v, even %v after the last", w, never, degradeSettle))
		} else if want := flips[len(flips)-1].Mode == string(degrade.On); r.Final != want {
			t.Errorf("worker %d showed the last flip, yet the feature ends enabled=%v, want %v", w, r.Final, want)
		}
	}
	all, d := distOf(fromStart), distOf(clean)
	t.Logf("Set latency on worker 0: %v", distOf(setLat))
	t.Logf("propagation from Set called, workers 1-3: %v; %d flips superseded before shown", all, superseded)
	t.Logf("propagation from Set called, samples in which no process stalled: %v", d)
	t.Logf("propagation from Set returned, workers 1-3: %v", distOf(fromEnd))
	if d.n < len(fromStart)*9/10 {
		misses = append(misses, fmt.Sprintf("only %d of %d samples were taken while no process stalled; p99 of all is %v", d.n, len(fromStart), round(all.p99)))
	} else if d.p99 >= degradeP99 {
		misses = append(misses, fmt.Sprintf("p99 of the propagation latency is %v, want under %v (of all samples, stalls included: %v)", round(d.p99), degradeP99, round(all.p99)))
	}
	return misses
}
