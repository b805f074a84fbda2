package scenario

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
	"github.com/bulwarkgo/bulwark/queue"
)

var (
	platforms = []string{"ios", "android", "wechat-miniprogram", "web"}
	versions  = []string{"3.2.0", "3.2.0", "3.1.4", "2.9.1"}
)

// Streams of the seeded randomness, so users and browsers do not share
// one.
const (
	userStream   = 1
	browseStream = 2
)

// maxBrowsing bounds the page views in flight; beyond it views are
// skipped rather than piling up on a slow shop.
const maxBrowsing = 512

// record updates the totals and this second's window.
func (r *run) record(f func(t *totals, w *window)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.tot, &r.sec)
}

// refused counts a refusal (or, as "error", a request with no answer).
func (r *run) refused(reason string) {
	r.record(func(t *totals, w *window) {
		t.refusals[reason]++
		w.refusals[reason]++
	})
}

// arrive brings the users in on the timeline, each in a goroutine of
// work, until arrivals end.
func (r *run) arrive(ctx context.Context, work *sync.WaitGroup) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	end := r.at(arrivalsEnd)
	for n := 0; ; {
		now := time.Now()
		for due := int(arrivals(r.cfg, now.Sub(r.start))); n < due; n++ {
			u := r.newUser(n + 1)
			work.Go(func() { u.run(ctx) })
		}
		if !now.Before(end) {
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		case <-r.saleOver:
			return
		}
	}
}

// browse views product pages at twice the shop's capacity until the sale
// closes.
func (r *run) browse(ctx context.Context, work *sync.WaitGroup) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	rng := rand.New(rand.NewPCG(r.cfg.Seed, browseStream))
	inFlight := make(chan struct{}, maxBrowsing)
	for n := 0; ; {
		for due := int(views(r.cfg, time.Since(r.start))); n < due; n++ {
			target := n % len(r.cfg.Targets)
			hdr := headers("v"+strconv.Itoa(n+1), rng)
			sku := r.allSKUs[rng.IntN(len(r.allSKUs))]
			select {
			case inFlight <- struct{}{}:
			default:
				continue // the shop is slow: this visitor does not come
			}
			work.Go(func() {
				defer func() { <-inFlight }()
				r.view(ctx, target, hdr, sku)
			})
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		case <-r.saleOver:
			return
		}
	}
}

func headers(user string, rng *rand.Rand) http.Header {
	h := http.Header{}
	h.Set(api.UserHeader, user)
	h.Set("X-Platform", platforms[rng.IntN(len(platforms))])
	h.Set("X-App-Version", versions[rng.IntN(len(versions))])
	return h
}

// view fetches a product page and notes the parts left out of it.
func (r *run) view(ctx context.Context, target int, hdr http.Header, sku string) {
	rep, err := r.do(ctx, http.MethodGet, target, "/api/products/"+url.PathEscape(sku), hdr, nil, true, false)
	var page api.ProductPage
	if err != nil || rep.status != http.StatusOK || json.Unmarshal(rep.body, &page) != nil {
		if ctx.Err() == nil {
			r.record(func(t *totals, _ *window) { t.pageFailures++ })
		}
		return
	}
	r.record(func(t *totals, _ *window) {
		t.pageViews++
		seen := map[string]bool{}
		for _, d := range page.Degraded {
			if seen[d.Feature] {
				continue
			}
			seen[d.Feature] = true
			t.degradedViews[d.Feature]++
			if d.Feature == recommendations {
				t.recOff = append(t.recOff, rep.at)
			}
		}
	})
}

// pickSKU picks a flash-sale item, among those that still had stock in the
// last report if any did.
func (r *run) pickSKU(rng *rand.Rand) string {
	stock := *r.stockLeft.Load()
	var left []string
	for _, s := range r.skus {
		if stock[s] > 0 {
			left = append(left, s)
		}
	}
	if len(left) == 0 {
		left = r.skus
	}
	return left[rng.IntN(len(left))]
}

// user is one simulated user.
type user struct {
	r      *run
	id     string
	target int
	rng    *rand.Rand
	bot    bool
	card   string
	hdr    http.Header
}

func (r *run) newUser(n int) *user {
	rng := rand.New(rand.NewPCG(r.cfg.Seed^userStream<<32, uint64(n)))
	u := &user{
		r:      r,
		id:     "u" + strconv.Itoa(n),
		target: (n - 1) % len(r.cfg.Targets),
		rng:    rng,
		bot:    rng.Float64() < botShare,
		card:   api.CardOK,
	}
	if rng.Float64() < declinedShare {
		u.card = api.CardDeclined
	}
	u.hdr = headers(u.id, rng)
	return u
}

func (u *user) call(ctx context.Context, method, path string, hdr http.Header, body any) (reply, error) {
	if hdr == nil {
		hdr = u.hdr
	}
	return u.r.do(ctx, method, u.target, path, hdr, body, true, false)
}

// pause waits d, and reports whether it did: not if ctx ended or, with
// untilClose, the sale closed first.
func (u *user) pause(ctx context.Context, d time.Duration, untilClose bool) bool {
	var stop <-chan struct{}
	if untilClose {
		stop = u.r.saleOver
	}
	return sleepUntil(ctx, time.Now().Add(d), stop)
}

// turnedAway counts the user as gone for reason, unless the run is being
// interrupted, which is nobody's refusal.
func (u *user) turnedAway(ctx context.Context, reason string) {
	if ctx.Err() != nil {
		return
	}
	u.r.record(func(t *totals, _ *window) { t.turnedAway[reason]++ })
}

// run is the user's visit: a product page, the line, an order.
func (u *user) run(ctx context.Context) {
	u.r.record(func(t *totals, _ *window) {
		t.users++
		if u.bot {
			t.bots++
		}
	})
	u.r.view(ctx, u.target, u.hdr, u.r.skus[u.rng.IntN(len(u.r.skus))])
	if ctx.Err() != nil {
		return
	}
	if u.r.closed() {
		u.turnedAway(ctx, "sale_closed")
		return
	}
	var (
		tv     queue.TicketView
		joined reply
		ok     bool
	)
	if u.bot {
		tv, joined, ok = u.scalp(ctx)
	}
	if !ok {
		if tv, joined, ok = u.join(ctx); !ok {
			return
		}
	}
	u.r.record(func(t *totals, _ *window) { t.joined++ })
	rec := ticketRecord{User: u.id, Number: tv.Number}
	token, admitted, ok := u.await(ctx, tv, joined, &rec)
	u.r.mu.Lock()
	u.r.tickets = append(u.r.tickets, rec)
	u.r.mu.Unlock()
	if !ok {
		return
	}
	wait := admitted.Sub(joined.at)
	u.r.record(func(t *totals, w *window) {
		t.admitted++
		t.waits = append(t.waits, wait)
		w.admitted++
		w.waits = append(w.waits, wait)
	})
	u.order(ctx, token)
}

// scalp is a bot's rush for places: botJoins joins as fast as it can. It
// keeps the first ticket it got and gives the others back.
func (u *user) scalp(ctx context.Context) (queue.TicketView, reply, bool) {
	var (
		kept    queue.TicketView
		keptRep reply
		ok      bool
		extra   []string
	)
	for range botJoins {
		if ctx.Err() != nil || u.r.closed() {
			break
		}
		rep, err := u.call(ctx, http.MethodPost, "/api/sale/line", nil, nil)
		if err != nil {
			if ctx.Err() == nil {
				u.r.refused("error")
			}
			break
		}
		var tv queue.TicketView
		got := rep.status == http.StatusOK || rep.status == http.StatusAccepted
		if got {
			tv, err = ticketOf(rep)
			got = err == nil
		} else {
			u.r.refused(reasonOf(refusalOf(rep)))
		}
		u.r.record(func(t *totals, _ *window) {
			t.botJoins++
			if got {
				t.botTickets++
			}
		})
		switch {
		case !got:
		case !ok:
			kept, keptRep, ok = tv, rep, true
		default:
			extra = append(extra, tv.Ticket)
		}
	}
	for _, id := range extra {
		u.leave(ctx, id)
	}
	return kept, keptRep, ok
}

// join asks for a place in line, retrying a rate limit joinRetries times.
func (u *user) join(ctx context.Context) (queue.TicketView, reply, bool) {
	for try := 0; ; try++ {
		if u.r.closed() {
			u.turnedAway(ctx, "sale_closed")
			return queue.TicketView{}, reply{}, false
		}
		rep, err := u.call(ctx, http.MethodPost, "/api/sale/line", nil, nil)
		if err != nil {
			if ctx.Err() == nil {
				u.r.refused("error")
			}
			u.turnedAway(ctx, "error")
			return queue.TicketView{}, rep, false
		}
		if rep.status == http.StatusOK || rep.status == http.StatusAccepted {
			tv, err := ticketOf(rep)
			if err != nil {
				u.turnedAway(ctx, "bad_ticket")
				return tv, rep, false
			}
			return tv, rep, true
		}
		reason := reasonOf(refusalOf(rep))
		u.r.refused(reason)
		if rep.status == http.StatusTooManyRequests && try < joinRetries {
			if u.pause(ctx, retryAfter(rep), true) {
				continue
			}
			if ctx.Err() == nil {
				u.turnedAway(ctx, "sale_closed")
			}
			return queue.TicketView{}, rep, false
		}
		u.turnedAway(ctx, reason)
		return queue.TicketView{}, rep, false
	}
}

// await polls the ticket until its turn comes and returns the admission
// token and when it came. A user still in line when the sale closes (or
// the run is interrupted) leaves it.
func (u *user) await(ctx context.Context, tv queue.TicketView, rep reply, rec *ticketRecord) (string, time.Time, bool) {
	id := tv.Ticket
	leave := func() {
		u.leave(ctx, id)
		u.r.record(func(t *totals, _ *window) { t.leftLine++ })
	}
	for {
		if tv.Admitted {
			rec.Admitted = rep.at
			if tv.Token == "" {
				u.turnedAway(ctx, "token_missing")
				return "", rep.at, false
			}
			return tv.Token, rep.at, true
		}
		if !u.pause(ctx, retryAfter(rep), true) {
			leave()
			return "", time.Time{}, false
		}
		next, err := u.call(ctx, http.MethodGet, "/api/sale/line?ticket="+url.QueryEscape(id), nil, nil)
		if err != nil {
			if ctx.Err() == nil {
				u.r.refused("error")
				u.turnedAway(ctx, "error")
			}
			leave()
			return "", time.Time{}, false
		}
		rep = next
		switch rep.status {
		case http.StatusOK, http.StatusAccepted:
			v, err := ticketOf(rep)
			if err != nil {
				u.turnedAway(ctx, "bad_ticket")
				leave()
				return "", time.Time{}, false
			}
			tv = v
			if !tv.Admitted {
				rec.InLine = append(rec.InLine, rep.sent)
			}
		case http.StatusGone:
			u.r.refused("ticket_expired")
			u.r.record(func(t *totals, _ *window) { t.expired++ })
			return "", time.Time{}, false
		default:
			reason := reasonOf(refusalOf(rep))
			u.r.refused(reason)
			if rep.status == http.StatusTooManyRequests || rep.status == http.StatusServiceUnavailable {
				continue // wait as asked and poll again
			}
			u.turnedAway(ctx, reason)
			leave()
			return "", time.Time{}, false
		}
	}
}

// leave gives a ticket up, best effort: it waits out the per-user limit
// (a bot giving back its extra tickets hits it) a few times, and makes one
// quick try when ctx has ended.
func (u *user) leave(ctx context.Context, id string) {
	if id == "" {
		return
	}
	if ctx.Err() != nil {
		c, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaveTimeout)
		defer cancel()
		_, _ = u.call(c, http.MethodDelete, "/api/sale/line?ticket="+url.QueryEscape(id), nil, nil)
		return
	}
	for try := 0; ; try++ {
		rep, err := u.call(ctx, http.MethodDelete, "/api/sale/line?ticket="+url.QueryEscape(id), nil, nil)
		if err != nil || rep.status != http.StatusTooManyRequests || try == joinRetries || !u.pause(ctx, retryAfter(rep), false) {
			return
		}
	}
}

// orderAnswer reads an answer to an order: an api.OrderReply, or on a
// refusal an api.Error (a declined card may come as either).
type orderAnswer struct {
	Order    string `json:"order"`
	Status   string `json:"status"`
	Provider string `json:"provider"`
	Error    string `json:"error"`
}

// order buys one unit with the admission token, retrying while the order
// path sheds load.
func (u *user) order(ctx context.Context, token string) {
	sku := u.r.pickSKU(u.rng)
	body := api.OrderRequest{SKU: sku, Card: u.card}
	hdr := u.hdr.Clone()
	hdr.Set(queue.AdmissionHeader, token)
	for try := 0; ; try++ {
		rep, err := u.call(ctx, http.MethodPost, "/api/sale/orders", hdr, body)
		if err != nil {
			// The order may or may not have been taken.
			u.r.record(func(t *totals, w *window) {
				t.unanswered[sku]++
				t.refusals["error"]++
				w.refusals["error"]++
			})
			return
		}
		var a orderAnswer
		_ = json.Unmarshal(rep.body, &a)
		switch rep.status {
		case http.StatusCreated, http.StatusAccepted:
			o := acceptedOrder{ID: a.Order, User: u.id, SKU: sku, Card: u.card, Status: a.Status, Provider: a.Provider, Target: u.target}
			if o.Status == "" {
				o.Status = api.StatusPaid
				if rep.status == http.StatusAccepted {
					o.Status = api.StatusPending
				}
			}
			u.r.record(func(t *totals, _ *window) {
				t.accepted = append(t.accepted, o)
				if o.Status == api.StatusPending {
					t.pending++
				} else {
					t.paid++
				}
			})
			return
		case http.StatusPaymentRequired:
			d := declinedOrder{ID: a.Order, User: u.id, SKU: sku, Target: u.target}
			u.r.record(func(t *totals, _ *window) { t.declined = append(t.declined, d) })
			return
		}
		e := refusalOf(rep)
		reason := reasonOf(e)
		u.r.refused(reason)
		if rep.status == http.StatusServiceUnavailable && e.Error == "overloaded" && try < orderRetries {
			if u.pause(ctx, retryAfter(rep), false) {
				continue
			}
			return
		}
		if reason == "sold_out" {
			u.r.record(func(t *totals, _ *window) { t.soldOut++ })
		}
		u.turnedAway(ctx, reason)
		return
	}
}
