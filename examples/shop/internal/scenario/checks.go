package scenario

// The summary's checks are pure functions of what the run recorded, so
// they can be tested on made-up records.

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
)

// Names of the checks.
const (
	checkOversoldName = "no item oversold"
	checkLostName     = "no accepted order lost"
	checkFIFOName     = "FIFO admission"
	checkBackupName   = "backup used only while the primary was down"
	checkDeclinesName = "declines are final"
	checkDegradedName = "recommendations degraded during the outage and back after"
)

// maxExamples bounds the violations a check's detail names.
const maxExamples = 3

// violations collects a check's violations and names the first few.
type violations struct {
	n        int
	examples []string
}

func (v *violations) add(format string, args ...any) {
	v.n++
	if len(v.examples) < maxExamples {
		v.examples = append(v.examples, fmt.Sprintf(format, args...))
	}
}

// check is the Check named name: ok with detail if there are no
// violations, else failed with them.
func (v *violations) check(name, detail string) Check {
	if v.n == 0 {
		return Check{Name: name, OK: true, Detail: detail}
	}
	more := ""
	if v.n > len(v.examples) {
		more = fmt.Sprintf("; and %d more", v.n-len(v.examples))
	}
	return Check{Name: name, Detail: fmt.Sprintf("%d violations: %s%s (%s)", v.n, strings.Join(v.examples, "; "), more, detail)}
}

// stamp shows t as seconds since origin, or as a time of day without an
// origin.
func stamp(origin, t time.Time) string {
	if origin.IsZero() {
		return t.Format("15:04:05.000")
	}
	return fmt.Sprintf("%+.2fs", t.Sub(origin).Seconds())
}

// stampOr is stamp, or instead for a zero t.
func stampOr(origin, t time.Time, instead string) string {
	if t.IsZero() {
		return instead
	}
	return stamp(origin, t)
}

// skuStock is one flash-sale item's stock and the orders the users saw
// accepted for it.
type skuStock struct {
	SKU            string
	Initial, Final int64
	// FinalKnown is false when the final stock could not be read.
	FinalKnown bool
	// Accepted counts the orders accepted (paid or pending), as the
	// clients saw them.
	Accepted int
	// Unanswered counts the order requests that got no answer: each may
	// or may not have been taken.
	Unanswered int
}

// checkOversold checks that, for each item, the stock sold is what the
// clients saw accepted and the stock never went below zero, and that the
// shop's own count of paid and pending orders made during the run
// (shopAccepted, if shopKnown) agrees.
func checkOversold(skus []skuStock, shopAccepted int64, shopKnown bool) Check {
	var (
		v                 violations
		sold              int64
		accepted, unknown int
		parts             []string
	)
	for _, s := range skus {
		accepted += s.Accepted
		unknown += s.Unanswered
		if !s.FinalKnown {
			v.add("%s: final stock unknown", s.SKU)
			continue
		}
		n := s.Initial - s.Final
		sold += n
		parts = append(parts, fmt.Sprintf("%s %d/%d", s.SKU, n, s.Initial))
		switch {
		case s.Final < 0:
			v.add("%s: stock left %d", s.SKU, s.Final)
		case n < int64(s.Accepted):
			v.add("%s: %d accepted orders but only %d units gone from stock", s.SKU, s.Accepted, n)
		case n > int64(s.Accepted+s.Unanswered):
			v.add("%s: %d units gone from stock for %d accepted orders", s.SKU, n, s.Accepted)
		}
	}
	if shopKnown && shopAccepted != sold {
		v.add("the shop counts %d paid and pending orders, the stock %d units sold", shopAccepted, sold)
	}
	detail := fmt.Sprintf("%d units sold for %d accepted orders (sold/stock: %s)", sold, accepted, strings.Join(parts, ", "))
	if unknown > 0 {
		detail += fmt.Sprintf("; %d order requests got no answer", unknown)
	}
	if shopKnown {
		detail += fmt.Sprintf("; the shop counts %d", shopAccepted)
	} else {
		detail += "; the shop's counts could not be read"
	}
	return v.check(checkOversoldName, detail)
}

// acceptedOrder is an order a user saw accepted.
type acceptedOrder struct {
	ID, User, SKU string
	Card          string
	Status        string // when accepted: paid or pending
	Provider      string
	Target        int // the target that took it
}

// checkLost checks that every accepted order is paid or pending when
// fetched after the drain (final; an order missing there could not be
// fetched), no more are pending than the buffer holds, and, in the
// ledgers of every target, each paid order has exactly one charge and
// each pending one none. An order accepted as pending may also have been
// declined since, if its card is the declined one and it was never
// charged: its payment waited in the buffer and got a final answer. It
// also returns how many orders accepted as pending were paid by the end.
func checkLost(accepted []acceptedOrder, final map[string]api.Order, buffered int64, attempts []api.Attempt) (Check, int) {
	charges := map[string][]api.Attempt{}
	for _, a := range attempts {
		if a.Outcome == api.OutcomeCharged {
			charges[a.Order] = append(charges[a.Order], a)
		}
	}
	var (
		v                                      violations
		paid, pending, fromBuffer, declined, n int
	)
	for _, o := range accepted {
		n++
		if o.ID == "" {
			v.add("an order of %s accepted without an id", o.User)
			continue
		}
		f, ok := final[o.ID]
		if !ok {
			v.add("order %s (%s) could not be fetched", o.ID, o.User)
			continue
		}
		c := charges[o.ID]
		switch f.Status {
		case api.StatusPaid:
			paid++
			if o.Status == api.StatusPending {
				fromBuffer++
			}
			switch {
			case len(c) != 1:
				v.add("order %s is paid with %d charges", o.ID, len(c))
			case f.Provider != "" && c[0].Provider != f.Provider:
				v.add("order %s is paid by %s but was charged by %s", o.ID, f.Provider, c[0].Provider)
			}
		case api.StatusPending:
			pending++
			if o.Status == api.StatusPaid {
				v.add("order %s was paid, now is pending", o.ID)
			}
			if len(c) != 0 {
				v.add("order %s is pending but was charged %d times", o.ID, len(c))
			}
		case api.StatusDeclined:
			declined++
			switch {
			case o.Status != api.StatusPending || o.Card != api.CardDeclined:
				v.add("order %s accepted as %s with card %s is now declined", o.ID, o.Status, o.Card)
			case len(c) != 0:
				v.add("order %s is declined but was charged %d times", o.ID, len(c))
			}
		default:
			v.add("order %s accepted as %s is now %q", o.ID, o.Status, f.Status)
		}
	}
	if int64(pending) > buffered {
		v.add("%d orders pending but only %d payments buffered", pending, buffered)
	}
	detail := fmt.Sprintf("%d accepted orders: %d paid (%d of them from the buffer), %d pending with %d buffered",
		n, paid, fromBuffer, pending, buffered)
	if declined > 0 {
		detail += fmt.Sprintf(", %d declined from the buffer", declined)
	}
	return v.check(checkLostName, detail), fromBuffer
}

// ticketRecord is what one user saw of its ticket.
type ticketRecord struct {
	User   string
	Number uint64
	// InLine holds the start of each poll that found the ticket still in
	// line.
	InLine []time.Time
	// Admitted is when the answer that admitted the ticket came; zero if
	// it never was.
	Admitted time.Time
}

// checkFIFO checks that nobody overtook anybody: for tickets a and b with
// a's number below b's, b must not have been seen admitted before a poll
// of a that started later and found a still in line. Sorted by number, a
// sweep from the back keeps the earliest admission among the higher
// numbers, so the check is O(n log n).
func checkFIFO(origin time.Time, tickets []ticketRecord) Check {
	ts := make([]ticketRecord, 0, len(tickets))
	unnumbered := 0
	for _, t := range tickets {
		if t.Number == 0 {
			unnumbered++
			continue
		}
		ts = append(ts, t)
	}
	slices.SortFunc(ts, func(a, b ticketRecord) int { return cmp.Compare(a.Number, b.Number) })

	var (
		v        violations
		earliest = -1  // the earliest admitted among the tickets swept so far
		admitted int   // tickets swept so far that were admitted
		pairs    int64 // pairs (a in line, b admitted, number a < number b)
		polled   int   // tickets seen in line at least once
	)
	for hi := len(ts); hi > 0; {
		// The group of tickets sharing the lowest number not yet swept
		// (one, unless numbers repeat) is checked against the higher
		// numbers only.
		lo := hi - 1
		for lo > 0 && ts[lo-1].Number == ts[hi-1].Number {
			lo--
		}
		for _, a := range ts[lo:hi] {
			if len(a.InLine) == 0 {
				continue
			}
			polled++
			pairs += int64(admitted)
			last := slices.MaxFunc(a.InLine, time.Time.Compare)
			if earliest >= 0 && ts[earliest].Admitted.Before(last) {
				b := ts[earliest]
				v.add("#%d (%s) was still in line at %s, after #%d (%s) was admitted at %s",
					a.Number, a.User, stamp(origin, last), b.Number, b.User, stamp(origin, b.Admitted))
			}
		}
		for i := lo; i < hi; i++ {
			if ts[i].Admitted.IsZero() {
				continue
			}
			admitted++
			if earliest < 0 || ts[i].Admitted.Before(ts[earliest].Admitted) {
				earliest = i
			}
		}
		hi = lo
	}
	detail := fmt.Sprintf("%d tickets, %d admitted, %d seen in line; %d pairs of a ticket in line and a later one admitted compared",
		len(ts), admitted, polled, pairs)
	if unnumbered > 0 {
		detail += fmt.Sprintf("; %d tickets without a number left out", unnumbered)
	}
	return v.check(checkFIFOName, detail)
}

// checkBackupWindow checks that every charge by the backup lies within
// [down, up+slack]: from when the primary went down until it came back,
// plus its breakers' open timeout and some slack. A zero down means the
// primary never went down; a zero up, that it never came back.
func checkBackupWindow(origin time.Time, attempts []api.Attempt, down, up time.Time, slack time.Duration) Check {
	var (
		v           violations
		n           int
		first, last time.Time
	)
	end := up.Add(slack)
	for _, a := range attempts {
		if a.Provider != backup || a.Outcome != api.OutcomeCharged {
			continue
		}
		n++
		if first.IsZero() || a.At.Before(first) {
			first = a.At
		}
		if a.At.After(last) {
			last = a.At
		}
		if down.IsZero() || a.At.Before(down) || !up.IsZero() && a.At.After(end) {
			v.add("order %s charged by %s at %s", a.Order, backup, stamp(origin, a.At))
		}
	}
	var window string
	switch {
	case down.IsZero():
		window = fmt.Sprintf("%s never went down", primary)
	case up.IsZero():
		window = fmt.Sprintf("%s down from %s and never back", primary, stamp(origin, down))
	default:
		window = fmt.Sprintf("%s down from %s to %s, backup allowed until %s",
			primary, stamp(origin, down), stamp(origin, up), stamp(origin, end))
	}
	detail := fmt.Sprintf("%s never charged; %s", backup, window)
	if n > 0 {
		detail = fmt.Sprintf("%d charges by %s from %s to %s; %s", n, backup, stamp(origin, first), stamp(origin, last), window)
	}
	return v.check(checkBackupName, detail)
}

// declinedOrder is an order whose card a user saw declined.
type declinedOrder struct {
	ID, User, SKU string
	Target        int
}

// checkDeclinesFinal checks that every declined order has exactly one
// declined attempt in the ledgers, no attempt by any provider after it,
// and, if it was fetched (status, by id), the status declined. attempts
// must be in the order they were made.
func checkDeclinesFinal(declined []declinedOrder, status map[string]string, attempts []api.Attempt) Check {
	byOrder := map[string][]api.Attempt{}
	for _, a := range attempts {
		byOrder[a.Order] = append(byOrder[a.Order], a)
	}
	var v violations
	for _, d := range declined {
		if d.ID == "" {
			v.add("a declined order of %s came without an id", d.User)
			continue
		}
		as := byOrder[d.ID]
		at, n := -1, 0
		for i, a := range as {
			if a.Outcome == api.OutcomeDeclined {
				n++
				if at < 0 {
					at = i
				}
			}
		}
		switch {
		case n != 1:
			v.add("order %s has %d declined attempts", d.ID, n)
		case at < len(as)-1:
			next := as[at+1]
			v.add("order %s was declined by %s, then tried at %s (%s)", d.ID, as[at].Provider, next.Provider, next.Outcome)
		}
		if s, ok := status[d.ID]; ok && s != api.StatusDeclined {
			v.add("order %s was declined but is now %q", d.ID, s)
		}
	}
	detail := fmt.Sprintf("%d declined orders, each declined once and never tried again", len(declined))
	return v.check(checkDeclinesName, detail)
}

// targetFeatures is the features a target had switched off at the end.
type targetFeatures struct {
	Target string
	Known  bool // false if its stats could not be read
	Off    []string
}

// checkDegraded checks that feature was seen switched off at some time in
// offSeen within [from, to] (from wxpay going down until some time after
// it came back; a zero to leaves the window open) and is on again at the
// end on every target.
func checkDegraded(origin time.Time, feature string, offSeen []time.Time, from, to time.Time, final []targetFeatures) Check {
	var (
		v           violations
		first, last time.Time
		inWindow    int
	)
	for _, t := range offSeen {
		if first.IsZero() || t.Before(first) {
			first = t
		}
		if t.After(last) {
			last = t
		}
		if !from.IsZero() && !t.Before(from) && (to.IsZero() || !t.After(to)) {
			inWindow++
		}
	}
	switch {
	case from.IsZero():
		v.add("the outage never began")
	case inWindow == 0 && len(offSeen) == 0:
		v.add("%s never seen off", feature)
	case inWindow == 0:
		v.add("%s seen off only from %s to %s, not between %s and %s",
			feature, stamp(origin, first), stamp(origin, last), stamp(origin, from), stampOr(origin, to, "the end"))
	}
	for _, f := range final {
		switch {
		case !f.Known:
			v.add("%s: could not read whether %s is on at the end", f.Target, feature)
		case slices.Contains(f.Off, feature):
			v.add("%s: %s still off at the end", f.Target, feature)
		}
	}
	detail := fmt.Sprintf("%s never seen off", feature)
	if len(offSeen) > 0 {
		detail = fmt.Sprintf("%s seen off %d times from %s to %s (window %s to %s), on again at the end",
			feature, len(offSeen), stamp(origin, first), stamp(origin, last), stampOr(origin, from, "never"), stampOr(origin, to, "the end"))
	}
	if len(final) > 1 {
		detail += fmt.Sprintf(" on all %d targets", len(final))
	}
	return v.check(checkDegradedName, detail)
}

// mergeLedgers joins the ledgers of the targets, each instance once,
// ordered by time (stably, so one ledger's order breaks ties).
func mergeLedgers(ledgers []api.Ledger) []api.Attempt {
	seen := map[string]bool{}
	var all []api.Attempt
	for _, l := range ledgers {
		if l.Instance != "" {
			if seen[l.Instance] {
				continue
			}
			seen[l.Instance] = true
		}
		all = append(all, l.Attempts...)
	}
	slices.SortStableFunc(all, func(a, b api.Attempt) int { return a.At.Compare(b.At) })
	return all
}
