package fleettest

import (
	"cmp"
	"fmt"
	"slices"
	"testing"
	"time"
)

// The checks of correctness are pure functions of the records, so they
// are tested here on made-up records, including the violations they must
// catch.

// ticketRecord is what one client saw of one ticket. Instants are ns on
// Redis' clock, 0 when unknown.
type ticketRecord struct {
	Number uint64
	Worker int
	// Held is true for a Room.Wait caller's ticket, which is never seen
	// in line, only admitted.
	Held bool
	// Joined is when the call that took the ticket returned (for a held
	// ticket, when Wait was called): Redis had numbered it by then.
	Joined int64
	// InLine is when the last call that found the ticket still in line
	// began: Redis found it in line at that instant or later.
	InLine int64
	// Admitted is when the call that found the ticket admitted returned:
	// Redis had admitted it by then.
	Admitted int64
}

// overtaking is a ticket seen in line after a higher-numbered one was
// seen admitted.
type overtaking struct {
	Waiting, Admitted ticketRecord
}

func (o overtaking) String() string {
	return fmt.Sprintf("#%d (worker %d) was still in line at %d ns, %d ns after #%d (worker %d, held %v) was seen admitted",
		o.Waiting.Number, o.Waiting.Worker, o.Waiting.InLine, o.Waiting.InLine-o.Admitted.Admitted,
		o.Admitted.Number, o.Admitted.Worker, o.Admitted.Held)
}

// findOvertaking returns the tickets that were overtaken, each with the
// earliest admission among the higher numbers that proves it, and the
// number of ticket pairs (a in line, b admitted, a < b) compared.
//
// The check is sound under any delays: Redis admitted b at or before
// b.Admitted, and found a in line at or after a.InLine, so a.InLine >
// b.Admitted means a was in line after b was admitted, which a FIFO line
// never allows. Sorted by number, a sweep from the highest number down
// keeps the earliest admission among the numbers above, so it is
// O(n log n). Tickets sharing a number are compared only with higher
// numbers; duplicateNumbers reports them.
func findOvertaking(tickets []ticketRecord) (found []overtaking, pairs int64) {
	ts := slices.Clone(tickets)
	slices.SortFunc(ts, func(a, b ticketRecord) int { return cmp.Compare(a.Number, b.Number) })
	earliest := -1 // the earliest admitted among the tickets swept
	admitted := 0
	for hi := len(ts); hi > 0; {
		lo := hi - 1
		for lo > 0 && ts[lo-1].Number == ts[hi-1].Number {
			lo--
		}
		for _, a := range ts[lo:hi] {
			if a.InLine == 0 {
				continue
			}
			pairs += int64(admitted)
			if earliest >= 0 && ts[earliest].Admitted < a.InLine {
				found = append(found, overtaking{Waiting: a, Admitted: ts[earliest]})
			}
		}
		for i := lo; i < hi; i++ {
			if ts[i].Admitted == 0 {
				continue
			}
			admitted++
			if earliest < 0 || ts[i].Admitted < ts[earliest].Admitted {
				earliest = i
			}
		}
		hi = lo
	}
	return found, pairs
}

// duplicateNumbers returns the numbers given to more than one ticket.
func duplicateNumbers(tickets []ticketRecord) []uint64 {
	seen := map[uint64]int{}
	var dup []uint64
	for _, t := range tickets {
		if t.Number == 0 {
			continue
		}
		if seen[t.Number]++; seen[t.Number] == 2 {
			dup = append(dup, t.Number)
		}
	}
	slices.Sort(dup)
	return dup
}

// span is an interval [From, To] of instants.
type span struct{ From, To int64 }

// inLineSpans returns, for each ticket both numbered and later seen in
// line, the interval during which it was certainly in line: Redis
// numbered it by Joined and still found it in line at InLine or later, and
// a ticket never comes back once admitted.
func inLineSpans(tickets []ticketRecord) []span {
	var out []span
	for _, t := range tickets {
		if t.Joined != 0 && t.InLine > t.Joined {
			out = append(out, span{t.Joined, t.InLine})
		}
	}
	return out
}

// gaps returns the parts of [from, to] that no span covers.
func gaps(spans []span, from, to int64) []span {
	s := slices.Clone(spans)
	slices.SortFunc(s, func(a, b span) int { return cmp.Compare(a.From, b.From) })
	var out []span
	at := from // covered up to here
	for _, sp := range s {
		if sp.To <= at {
			continue
		}
		if sp.From > at {
			if sp.From >= to {
				break
			}
			out = append(out, span{at, sp.From})
		}
		at = sp.To
		if at >= to {
			return out
		}
	}
	if at < to {
		out = append(out, span{at, to})
	}
	return out
}

func TestFindOvertaking(t *testing.T) {
	fair := []ticketRecord{
		{Number: 1, Joined: 10, InLine: 20, Admitted: 50},
		{Number: 2, Joined: 11, InLine: 55, Admitted: 70, Worker: 1},
		{Number: 3, Held: true, Joined: 12, Admitted: 80, Worker: 2},
		{Number: 4, Joined: 13, InLine: 79, Admitted: 95, Worker: 3}, // in line before #3 was seen admitted
		{Number: 5, Joined: 14, InLine: 90},                          // never admitted
	}
	if found, pairs := findOvertaking(fair); len(found) != 0 || pairs != 5 {
		t.Fatalf("fair line: %v, %d pairs compared, want none and 5", found, pairs)
	}
	// #2 is seen in line after #3, held on another worker, was admitted.
	unfair := slices.Clone(fair)
	unfair[1].InLine = 85
	found, _ := findOvertaking(unfair)
	if len(found) != 1 || found[0].Waiting.Number != 2 || found[0].Admitted.Number != 3 {
		t.Fatalf("#3 overtook #2: found %v", found)
	}
	// The earliest admission above is the one reported.
	unfair[0].InLine = 100
	found, _ = findOvertaking(unfair)
	if len(found) != 2 || found[1].Waiting.Number != 1 || found[1].Admitted.Number != 2 {
		t.Fatalf("#2 overtook #1: found %v", found)
	}
}

func TestDuplicateNumbers(t *testing.T) {
	got := duplicateNumbers([]ticketRecord{{Number: 3}, {Number: 1}, {Number: 3}, {Number: 2}, {Number: 1}, {Number: 3}, {}})
	if !slices.Equal(got, []uint64{1, 3}) {
		t.Fatalf("got %v, want [1 3]", got)
	}
}

func TestGaps(t *testing.T) {
	spans := []span{{10, 20}, {15, 30}, {40, 50}, {45, 48}, {60, 70}}
	for _, c := range []struct {
		from, to int64
		want     []span
	}{
		{12, 28, nil},
		{0, 100, []span{{0, 10}, {30, 40}, {50, 60}, {70, 100}}},
		{25, 45, []span{{30, 40}}},
		{71, 80, []span{{71, 80}}},
	} {
		if got := gaps(spans, c.from, c.to); !slices.Equal(got, c.want) {
			t.Errorf("gaps in [%d, %d]: %v, want %v", c.from, c.to, got, c.want)
		}
	}
}

func TestCheckProbes(t *testing.T) {
	milli := int64(time.Millisecond)
	p := func(at int64, failed bool) probe {
		return probe{depCall: depCall{Start: at * milli, At: at * milli, Failed: failed}}
	}
	for _, c := range []struct {
		name  string
		ps    []probe
		valid bool
	}{
		{"one probe", []probe{p(600, false)}, true},
		{"a failed probe, then one an open timeout later", []probe{p(600, true), p(1105, false)}, true},
		{"none", nil, false},
		{"the last failed", []probe{p(600, true)}, false},
		{"two in one half-open stretch", []probe{p(600, true), p(602, false)}, false},
		{"a call while open, then the probe", []probe{p(300, false), p(600, false)}, false},
	} {
		if err := checkProbes(c.ps); (err == nil) != c.valid {
			t.Errorf("%s: %v, want valid %v", c.name, err, c.valid)
		}
	}
}
