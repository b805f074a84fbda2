package scenario

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
)

// printer serializes the writes of the report, the events and the
// summary.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, args...)
}

// event prints an event, indented between the report's lines, with its
// time in the sale.
func (r *run) event(at time.Time, format string, args ...any) {
	r.out.printf("%13.2fs  %s\n", at.Sub(r.start).Seconds(), fmt.Sprintf(format, args...))
}

// reasons are the refusals in the order the report shows them, with their
// short names; others show under their code.
var reasons = []struct{ key, label string }{
	{"queue_full", "full"},
	{"wait_too_long", "too-long"},
	{"unavailable", "unavailable"},
	{"user_limit", "user-limit"},
	{"global_limit", "global-limit"},
	{"ticket_expired", "expired"},
	{"sold_out", "sold-out"},
	{"overloaded", "overloaded"},
	{"payment_unavailable", "payment-unavailable"},
	{"error", "no-answer"},
}

// countsText lists the non-zero counts, known reasons first.
func countsText(counts map[string]int, sep string) string {
	var parts []string
	known := map[string]bool{}
	for _, r := range reasons {
		known[r.key] = true
		if n := counts[r.key]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", r.label, n))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		if n := counts[k]; n > 0 && !known[k] {
			parts = append(parts, fmt.Sprintf("%s %d", strings.ReplaceAll(k, "_", "-"), n))
		}
	}
	return strings.Join(parts, sep)
}

// intro prints what is about to happen.
func (r *run) intro() {
	c := r.cfg
	var total int64
	var items []string
	for _, s := range r.skus {
		total += r.initial[s]
		items = append(items, fmt.Sprintf("%s %d", s, r.initial[s]))
	}
	instances := "instance"
	if len(c.Targets) > 1 {
		instances = "instances"
	}
	d := c.Duration
	at := func(f float64) string { return fmt.Sprintf("%.1fs", f*d.Seconds()) }
	r.out.printf("Flash sale on %d %s (%s) for %v; the waiting room admits %g users a second.\n",
		len(c.Targets), instances, strings.Join(c.Targets, ", "), d, c.Rate)
	r.out.printf("  - %d items on sale, %d units: %s.\n", len(r.skus), total, strings.Join(items, ", "))
	r.out.printf("  - Users arrive at %g a second until %s, then at %g a second until %s; %.0f%% are scalper bots\n",
		c.Load*c.Rate, at(rushEnds), c.Rate/2, at(arrivalsEnd), botShare*100)
	r.out.printf("    who ask for %d places at once, %.0f%% pay with a card that is declined. Visitors browse %g pages a second.\n",
		botJoins, declinedShare*100, 2*c.Rate)
	r.out.printf("  - Payments: %s fails at %s (half its calls fail, half hang), %s at %s; %s recovers at %s, %s at %s.\n",
		primary, at(primaryDown), backup, at(backupDown), backup, at(backupUp), primary, at(primaryUp))
	r.out.printf("  - At %s the sale closes: users in line leave; then up to %v for the payment buffer to drain\n", at(1), c.Drain)
	r.out.printf("    and %s to come back on.\n\n", recommendations)

	w := r.breakerWidth()
	breakers := "breakers"
	if len(c.Targets) > 1 {
		breakers = "breakers by instance"
	}
	r.out.printf("%5s %6s %6s %8s %13s %6s %14s %8s  %s\n",
		"", "", "", "", "wait", "", "paid", "", breakers)
	r.out.printf("%5s %6s %6s %8s %6s %6s %6s %7s %6s %8s  %-*s %-*s  %s\n",
		"time", "req/s", "line", "admitted", "p50", "p99", "stock", primary, backup, "buffered",
		w, primary, w, backup, "then what is off, what was rejected")
}

// breakerWidth is the width of a breaker column: each target's state,
// joined with "/".
func (r *run) breakerWidth() int {
	return len(r.cfg.Targets)*len("closed") + len(r.cfg.Targets) - 1
}

// breakerState is a breaker's state as the report shows it: "half" is
// half-open, to keep the column narrow.
func breakerState(s string) string {
	if s == "half-open" {
		return "half"
	}
	return orDash(s)
}

// report prints a line a second, with the events seen in the stats
// before it, until stop is closed.
func (r *run) report(ctx context.Context, stop <-chan struct{}) {
	prev := make([]statsReply, len(r.cfg.Targets))
	for i := range prev {
		prev[i].s = r.baseline[i]
	}
	var sent int64
	for k := 1; ; k++ {
		if !sleepUntil(ctx, r.start.Add(time.Duration(k)*time.Second), stop) {
			return
		}
		stats := r.allStats(ctx, statsTimeout)
		if ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		w := r.sec
		r.sec = window{refusals: map[string]int{}}
		r.mu.Unlock()
		total := r.requests.Load()
		reqs := total - sent
		sent = total

		r.observe(stats)
		for _, e := range r.changes(prev, stats) {
			r.event(e.at, "%s", e.what)
		}
		r.out.printf("%s\n", r.line(k, reqs, w, stats))
		for i, s := range stats {
			if s.err == nil {
				prev[i] = s
			} else {
				prev[i].err = s.err
			}
		}
	}
}

// observe takes from the stats what the users and the checks need: the
// stock left, and whether recommendations are switched off.
func (r *run) observe(stats []statsReply) {
	if s := stats[0]; s.err == nil && s.s.Stock != nil {
		stock := make(map[string]int64, len(r.skus))
		for _, sku := range r.skus {
			if n, ok := s.s.Stock[sku]; ok {
				stock[sku] = n
			} else {
				stock[sku] = (*r.stockLeft.Load())[sku]
			}
		}
		r.stockLeft.Store(&stock)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range stats {
		if s.err == nil && slices.Contains(s.s.Degraded, recommendations) {
			r.tot.recOff = append(r.tot.recOff, s.at)
		}
	}
}

type change struct {
	at   time.Time
	what string
}

// changes lists the breakers' and features' changes between two rounds of
// stats, and the targets whose stats failed or came back. A change seen on
// several targets at once is told once, naming them.
func (r *run) changes(prev, now []statsReply) []change {
	var (
		order []string
		where = map[string][]string{}
		when  = map[string]time.Time{}
	)
	add := func(i int, what string) {
		if _, ok := where[what]; !ok {
			order = append(order, what)
			when[what] = now[i].at
		}
		where[what] = append(where[what], r.names[i])
	}
	for i, s := range now {
		p := prev[i]
		switch {
		case s.err != nil && p.err == nil:
			add(i, fmt.Sprintf("no stats: %v", s.err))
			continue
		case s.err != nil:
			continue
		case p.err != nil:
			add(i, "stats again")
		}
		for _, name := range providers(p.s.Breakers, s.s.Breakers) {
			if from, to := p.s.Breakers[name], s.s.Breakers[name]; from != to {
				add(i, fmt.Sprintf("breaker %s: %s -> %s", name, orDash(from), orDash(to)))
			}
		}
		for _, f := range s.s.Degraded {
			if !slices.Contains(p.s.Degraded, f) {
				add(i, fmt.Sprintf("%s switched off", f))
			}
		}
		for _, f := range p.s.Degraded {
			if !slices.Contains(s.s.Degraded, f) {
				add(i, fmt.Sprintf("%s back on", f))
			}
		}
	}
	out := make([]change, 0, len(order))
	for _, what := range order {
		c := change{when[what], what}
		if len(now) > 1 {
			c.what += " (" + strings.Join(where[what], ", ") + ")"
		}
		out = append(out, c)
	}
	return out
}

// providers lists the providers named in some maps: the primary, the
// backup, then the others by name.
func providers[V any](ms ...map[string]V) []string {
	names := []string{primary, backup}
	var others []string
	for _, m := range ms {
		for k := range m {
			if !slices.Contains(names, k) && !slices.Contains(others, k) {
				others = append(others, k)
			}
		}
	}
	slices.Sort(others)
	return append(names, others...)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// line is the report's line for second k.
func (r *run) line(k int, reqs int64, w window, stats []statsReply) string {
	first := stats[0]
	num := func(ok bool, n int64) string {
		if !ok {
			return "?"
		}
		return fmt.Sprint(n)
	}
	ok := first.err == nil
	var stock int64
	for _, sku := range r.skus {
		stock += first.s.Stock[sku]
	}
	p50, p99 := "-", "-"
	if len(w.waits) > 0 {
		p50 = seconds(percentile(w.waits, 0.5))
		p99 = seconds(percentile(w.waits, 0.99))
	}
	breakers := func(provider string) string {
		states := make([]string, len(stats))
		for i, s := range stats {
			states[i] = "?"
			if s.err == nil {
				states[i] = breakerState(s.s.Breakers[provider])
			}
		}
		return strings.Join(states, "/")
	}
	// The features off on each target, joined with "/" unless every
	// target has the same ones off.
	var degraded []string
	anyOff, same := false, true
	for _, s := range stats {
		off := "-"
		switch {
		case s.err != nil:
			off = "?"
		case len(s.s.Degraded) > 0:
			anyOff = true
			off = strings.Join(s.s.Degraded, ",")
		}
		degraded = append(degraded, off)
		same = same && off == degraded[0]
	}
	if same {
		degraded = degraded[:1]
	}
	var tail []string
	if anyOff {
		tail = append(tail, "degraded "+strings.Join(degraded, "/"))
	}
	if rej := countsText(w.refusals, " "); rej != "" {
		tail = append(tail, "rejected "+rej)
	}
	bw := r.breakerWidth()
	return fmt.Sprintf("%4ds %6d %6s %8d %6s %6s %6s %7s %6s %8s  %-*s %-*s  %s",
		k, reqs, num(ok, int64(first.s.Room.Length)), w.admitted, p50, p99, num(ok, stock),
		num(ok, first.s.PaidBy[primary]), num(ok, first.s.PaidBy[backup]), num(ok, first.s.Buffered),
		bw, breakers(primary), bw, breakers(backup), strings.Join(tail, "  "))
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }

// percentile is the q-quantile of ds by nearest rank; 0 for none.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// result is the totals so far, without the checks.
func (r *run) result() Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := &r.tot
	res := Result{
		Users: t.users, Bots: t.bots, Joined: t.joined, Admitted: t.admitted, Expired: t.expired, LeftLine: t.leftLine,
		TurnedAway: maps.Clone(t.turnedAway), Refusals: maps.Clone(t.refusals),
		BotJoins: t.botJoins, BotTickets: t.botTickets,
		Paid: t.paid, Pending: t.pending, Declined: len(t.declined), SoldOut: t.soldOut,
		WaitP50: percentile(t.waits, 0.5), WaitP99: percentile(t.waits, 0.99),
		Requests: r.requests.Load(), PageViews: t.pageViews, PageFailures: t.pageFailures, DegradedViews: maps.Clone(t.degradedViews),
		Faults: slices.Clone(r.faults),
	}
	for _, n := range t.unanswered {
		res.Unanswered += n
	}
	return res
}

// printTotals prints what the users saw.
func (r *run) printTotals(res Result) {
	p := r.out.printf
	elapsed := min(time.Since(r.start), r.cfg.Duration)
	p("\nTotals\n")
	p("  users     %d arrived (%d bots); %d joined the line, %d were admitted, %d left it when the sale ended, %d tickets expired\n",
		res.Users, res.Bots, res.Joined, res.Admitted, res.LeftLine, res.Expired)
	p("  bots      asked for %d places and got %d; each kept one and gave the others back\n", res.BotJoins, res.BotTickets)
	p("  rejected  %s\n", orDash(countsText(res.Refusals, ", ")))
	p("  gave up   %s\n", orDash(countsText(res.TurnedAway, ", ")))
	fromBuffer := ""
	if res.Checks != nil {
		fromBuffer = fmt.Sprintf(" (by the end %d of them paid, %d declined)", res.PaidFromBuffer, res.DeclinedLater)
	}
	p("  orders    %d accepted: %d paid at once, %d pending%s; %d declined at once, %d sold out, %d unanswered\n",
		res.Paid+res.Pending, res.Paid, res.Pending, fromBuffer, res.Declined, res.SoldOut, res.Unanswered)
	if res.PaidBy != nil {
		var paid []string
		for _, name := range providers(res.PaidBy) {
			paid = append(paid, fmt.Sprintf("%s %d", name, res.PaidBy[name]))
		}
		p("  paid by   %s; %d payments buffered at the end\n", strings.Join(paid, ", "), res.Buffered)
	}
	p("  waited    p50 %s, p99 %s in line (join to admission, %d admitted users)\n",
		seconds(res.WaitP50), seconds(res.WaitP99), res.Admitted)
	p("  requests  %d from users and visitors (%.0f a second while the sale was open)\n", res.Requests, float64(res.Requests)/elapsed.Seconds())
	var degraded []string
	for _, f := range slices.Sorted(maps.Keys(res.DegradedViews)) {
		degraded = append(degraded, fmt.Sprintf("%d without %s", res.DegradedViews[f], f))
	}
	if len(degraded) == 0 {
		degraded = []string{"none degraded"}
	}
	p("  pages     %d product pages viewed; %s; %d failed\n", res.PageViews, strings.Join(degraded, ", "), res.PageFailures)
}

// summary reads the shop's final state, checks the run and prints the
// totals and the checks.
func (r *run) summary(ctx context.Context) Result {
	finals := r.allStats(ctx, requestTimeout)
	var products api.Products
	productsErr := r.getJSON(ctx, 0, "/api/products", false, &products)
	ledgers, ledgerErr := r.ledgers(ctx)

	r.mu.Lock()
	accepted := slices.Clone(r.tot.accepted)
	declined := slices.Clone(r.tot.declined)
	tickets := slices.Clone(r.tickets)
	recOff := slices.Clone(r.tot.recOff)
	unanswered := maps.Clone(r.tot.unanswered)
	faults := slices.Clone(r.faults)
	r.mu.Unlock()
	orders := r.fetchOrders(ctx, accepted, declined)

	res := r.result()
	// A ledger holds every call since its instance started; the sale's
	// are those since it opened. Orders are told apart by their ids.
	attempts := mergeLedgers(ledgers)
	var sale []api.Attempt
	for _, a := range attempts {
		if !a.At.Before(r.start) {
			sale = append(sale, a)
		}
	}
	first := finals[0]
	res.Buffered = first.s.Buffered
	if ledgerErr == nil {
		res.PaidBy = map[string]int64{}
		for _, a := range sale {
			if a.Outcome == api.OutcomeCharged {
				res.PaidBy[a.Provider]++
			}
		}
	} else if first.err == nil {
		res.PaidBy = maps.Clone(first.s.PaidBy)
	}

	// 1. Stock.
	final := map[string]int64{}
	finalKnown := productsErr == nil
	if finalKnown {
		for _, p := range products.Products {
			final[p.SKU] = p.StockLeft
		}
	} else if first.err == nil && first.s.Stock != nil {
		final, finalKnown = first.s.Stock, true
	}
	// An order accepted as pending and declined from the buffer gave its
	// unit back: it counts among the declines, not the units sold.
	perSKU := map[string]int{}
	for _, o := range accepted {
		if f, ok := orders[o.ID]; ok && f.Status == api.StatusDeclined {
			declined = append(declined, declinedOrder{ID: o.ID, User: o.User, SKU: o.SKU, Target: o.Target})
			res.DeclinedLater++
			continue
		}
		perSKU[o.SKU]++
	}
	var stock []skuStock
	for _, sku := range r.skus {
		left, ok := final[sku]
		stock = append(stock, skuStock{SKU: sku, Initial: r.initial[sku], Final: left, FinalKnown: finalKnown && ok,
			Accepted: perSKU[sku], Unanswered: unanswered[sku]})
	}
	count := func(s api.Stats) int64 { return s.Orders[api.StatusPaid] + s.Orders[api.StatusPending] }
	res.Checks = append(res.Checks, checkOversold(stock, count(first.s)-count(r.baseline[0]), first.err == nil))

	// 2. Accepted orders.
	buffered := first.s.Buffered
	if first.err != nil {
		buffered = 0
	}
	lost, fromBuffer := checkLost(accepted, orders, buffered, attempts)
	res.PaidFromBuffer = fromBuffer
	if first.err != nil {
		lost.OK, lost.Detail = false, fmt.Sprintf("the buffer's depth could not be read (%v); %s", first.err, lost.Detail)
	}
	res.Checks = append(res.Checks, withLedgers(lost, ledgerErr))

	// 3. FIFO.
	res.Checks = append(res.Checks, checkFIFO(r.start, tickets))

	// 4. The backup's window: from the first moment wxpay may have
	// failed somewhere until the last it may have, plus its breakers'
	// open timeout and some slack.
	var down, up Fault
	for _, f := range faults {
		if f.Name != primary {
			continue
		}
		if f.Down {
			down = f
		} else {
			up = f
		}
	}
	res.Checks = append(res.Checks, withLedgers(checkBackupWindow(r.start, sale, down.Sent, up.Answered, 2*r.cfg.OpenTimeout+backupSlack), ledgerErr))

	// 5. Declines.
	status := map[string]string{}
	for _, d := range declined {
		if o, ok := orders[d.ID]; ok {
			status[d.ID] = o.Status
		}
	}
	res.Checks = append(res.Checks, withLedgers(checkDeclinesFinal(declined, status, attempts), ledgerErr))

	// 6. Recommendations: off at some time while wxpay surely was down,
	// or a little after, and on again at the end.
	var ends []targetFeatures
	for i, s := range finals {
		ends = append(ends, targetFeatures{Target: r.names[i], Known: s.err == nil, Off: s.s.Degraded})
	}
	var to time.Time
	if !up.At.IsZero() {
		to = up.At.Add(time.Duration(degradeSlack * float64(r.cfg.Duration)))
	}
	res.Checks = append(res.Checks, checkDegraded(r.start, recommendations, recOff, down.At, to, ends))

	r.printTotals(res)
	r.out.printf("\nChecks\n")
	for _, c := range res.Checks {
		r.out.printf("%s\n", wrap("  "+c.String(), 150, "         "))
	}
	if n := len(res.Failed()); n > 0 {
		r.out.printf("\n%d of %d checks failed.\n", n, len(res.Checks))
	} else {
		r.out.printf("\nAll %d checks passed.\n", len(res.Checks))
	}
	return res
}

// withLedgers fails a check that relies on the ledgers if one of them
// could not be read.
func withLedgers(c Check, err error) Check {
	if err != nil {
		c.OK = false
		c.Detail = fmt.Sprintf("%v; %s", err, c.Detail)
	}
	return c
}

// ledgers reads every target's ledger.
func (r *run) ledgers(ctx context.Context) ([]api.Ledger, error) {
	ls := make([]api.Ledger, len(r.cfg.Targets))
	errs := make([]error, len(r.cfg.Targets))
	var wg sync.WaitGroup
	for i := range r.cfg.Targets {
		wg.Go(func() {
			if err := r.getJSON(ctx, i, "/ops/ledger", true, &ls[i]); err != nil {
				errs[i] = fmt.Errorf("the ledger of %s could not be read: %w", r.names[i], err)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return ls, err
		}
	}
	return ls, nil
}

// fetchOrders reads the accepted and declined orders from the targets
// that took them, as their users.
func (r *run) fetchOrders(ctx context.Context, accepted []acceptedOrder, declined []declinedOrder) map[string]api.Order {
	type job struct {
		id, user string
		target   int
	}
	var jobs []job
	for _, o := range accepted {
		if o.ID != "" {
			jobs = append(jobs, job{o.ID, o.User, o.Target})
		}
	}
	for _, d := range declined {
		if d.ID != "" {
			jobs = append(jobs, job{d.ID, d.User, d.Target})
		}
	}
	var (
		mu     sync.Mutex
		orders = make(map[string]api.Order, len(jobs))
		next   = make(chan job)
		wg     sync.WaitGroup
	)
	for range min(32, len(jobs)) {
		wg.Go(func() {
			for j := range next {
				o, ok := r.fetchOrder(ctx, j.target, j.id, j.user)
				if !ok {
					continue
				}
				mu.Lock()
				orders[j.id] = o
				mu.Unlock()
			}
		})
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	return orders
}

// fetchOrder reads an order as its user, waiting out a rate limit or a
// hiccup a few times.
func (r *run) fetchOrder(ctx context.Context, target int, id, user string) (api.Order, bool) {
	hdr := http.Header{}
	hdr.Set(api.UserHeader, user)
	for try := 0; ; try++ {
		rep, err := r.do(ctx, http.MethodGet, target, "/api/orders/"+url.PathEscape(id), hdr, nil, false, false)
		if err != nil {
			return api.Order{}, false
		}
		var o api.Order
		switch {
		case rep.status == http.StatusOK:
			err := json.Unmarshal(rep.body, &o)
			return o, err == nil
		case (rep.status == http.StatusTooManyRequests || rep.status == http.StatusServiceUnavailable) && try < 3:
			if !sleepUntil(ctx, time.Now().Add(retryAfter(rep)), nil) {
				return api.Order{}, false
			}
		default:
			return api.Order{}, false
		}
	}
}

// wrap breaks s at spaces into lines of at most width columns (a word
// longer than that stays whole), indenting the lines after the first.
func wrap(s string, width int, indent string) string {
	var b strings.Builder
	line, fresh := 0, true // fresh: nothing on the line but the indent
	for i, word := range strings.Split(s, " ") {
		switch {
		case i == 0:
		case line+1+len(word) > width && !fresh:
			b.WriteString("\n" + indent)
			line, fresh = len(indent), true
		default:
			b.WriteByte(' ')
			line++
		}
		b.WriteString(word)
		line += len(word)
		fresh = fresh && word == ""
	}
	return b.String()
}
