package scenario

import (
	"bytes"
	"context"
	"errors"
	"math"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// t0 is the origin of the made-up records; at(s) is s seconds after it.
var t0 = time.Date(2025, 11, 11, 0, 0, 0, 0, time.UTC)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

func TestCheckFIFO(t *testing.T) {
	tests := []struct {
		name    string
		tickets []ticketRecord
		ok      bool
	}{
		{"empty", nil, true},
		{"in order", []ticketRecord{
			{User: "u1", Number: 1, InLine: []time.Time{at(1), at(2)}, Admitted: at(3)},
			{User: "u2", Number: 2, InLine: []time.Time{at(1), at(3.5)}, Admitted: at(4)},
			{User: "u3", Number: 3, InLine: []time.Time{at(4.5)}, Admitted: at(5)},
		}, true},
		{"overtaken", []ticketRecord{
			{User: "u1", Number: 1, InLine: []time.Time{at(1), at(5)}, Admitted: at(6)},
			{User: "u2", Number: 2, Admitted: at(4)},
		}, false},
		{"overtaken by a far later ticket", []ticketRecord{
			{User: "u1", Number: 1, InLine: []time.Time{at(7)}},
			{User: "u2", Number: 2, InLine: []time.Time{at(1)}, Admitted: at(8)},
			{User: "u9", Number: 90, Admitted: at(6)},
		}, false},
		{"overtaken, ticket never admitted", []ticketRecord{
			{User: "u1", Number: 1, InLine: []time.Time{at(5)}},
			{User: "u2", Number: 2, Admitted: at(4)},
		}, false},
		{"poll started before the later ticket's admission", []ticketRecord{
			{User: "u1", Number: 1, InLine: []time.Time{at(3.9)}, Admitted: at(4.5)},
			{User: "u2", Number: 2, Admitted: at(4)},
		}, true},
		{"poll started the instant the later ticket was admitted", []ticketRecord{
			{User: "u1", Number: 1, InLine: []time.Time{at(4)}, Admitted: at(4.5)},
			{User: "u2", Number: 2, Admitted: at(4)},
		}, true},
		{"a later ticket still in line after an earlier one's admission", []ticketRecord{
			{User: "u1", Number: 1, Admitted: at(2)},
			{User: "u2", Number: 2, InLine: []time.Time{at(3), at(4)}, Admitted: at(5)},
		}, true},
		{"the same number does not overtake", []ticketRecord{
			{User: "u1", Number: 1, InLine: []time.Time{at(5)}, Admitted: at(6)},
			{User: "u1b", Number: 1, Admitted: at(4)},
		}, true},
		{"records out of order", []ticketRecord{
			{User: "u3", Number: 3, Admitted: at(2)},
			{User: "u1", Number: 1, Admitted: at(1)},
			{User: "u2", Number: 2, InLine: []time.Time{at(2.5)}, Admitted: at(3)},
		}, false},
		{"tickets without a number are left out", []ticketRecord{
			{User: "u1", Number: 1, InLine: []time.Time{at(5)}, Admitted: at(6)},
			{User: "u0", Admitted: at(1)},
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := checkFIFO(t0, tt.tickets)
			if c.OK != tt.ok || c.Name != checkFIFOName {
				t.Errorf("got %v, want ok=%v", c, tt.ok)
			}
			t.Log(c)
		})
	}
}

func TestCheckFIFOCountsPairs(t *testing.T) {
	c := checkFIFO(t0, []ticketRecord{
		{Number: 1, InLine: []time.Time{at(1)}, Admitted: at(2)},
		{Number: 2, InLine: []time.Time{at(1)}, Admitted: at(3)},
		{Number: 3, InLine: []time.Time{at(1)}, Admitted: at(4)},
	})
	if !c.OK || !strings.Contains(c.Detail, "3 pairs") {
		t.Errorf("got %v, want ok with 3 pairs", c)
	}
}

func TestCheckFIFOScales(t *testing.T) {
	// A long line admitted in order, then one overtaking at the end.
	const n = 200_000
	tickets := make([]ticketRecord, n)
	for i := range tickets {
		tickets[i] = ticketRecord{Number: uint64(i + 1), InLine: []time.Time{at(float64(i) / 1000)}, Admitted: at(float64(i)/1000 + 0.0005)}
	}
	start := time.Now()
	if c := checkFIFO(t0, tickets); !c.OK {
		t.Fatalf("in order: %v", c)
	}
	tickets[0].InLine = append(tickets[0].InLine, at(n))
	if c := checkFIFO(t0, tickets); c.OK || !strings.Contains(c.Detail, "#1 ") {
		t.Fatalf("overtaken: %v", c)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v for %d tickets", d, n)
	}
}

func TestCheckBackupWindow(t *testing.T) {
	down, up := at(10), at(20)
	slack := 3 * time.Second // open timeout and slack: until 23s
	charged := func(provider string, s float64) api.Attempt {
		return api.Attempt{Order: "o", Provider: provider, Outcome: api.OutcomeCharged, At: at(s)}
	}
	tests := []struct {
		name     string
		attempts []api.Attempt
		down, up time.Time
		ok       bool
	}{
		{"no charges", nil, down, up, true},
		{"wxpay any time, alipay inside", []api.Attempt{charged(primary, 1), charged(backup, 10), charged(backup, 15), charged(backup, 23), charged(primary, 30)}, down, up, true},
		{"alipay before the outage", []api.Attempt{charged(backup, 9.9)}, down, up, false},
		{"alipay after the window", []api.Attempt{charged(backup, 23.1)}, down, up, false},
		{"alipay failing outside does not count", []api.Attempt{{Order: "o", Provider: backup, Outcome: api.OutcomeFailed, At: at(1)}}, down, up, true},
		{"alipay repeat outside does not count", []api.Attempt{{Order: "o", Provider: backup, Outcome: api.OutcomeRepeat, At: at(40)}}, down, up, true},
		{"no outage", []api.Attempt{charged(backup, 15)}, time.Time{}, time.Time{}, false},
		{"never back", []api.Attempt{charged(backup, 99)}, down, time.Time{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := checkBackupWindow(t0, tt.attempts, tt.down, tt.up, slack)
			if c.OK != tt.ok || c.Name != checkBackupName {
				t.Errorf("got %v, want ok=%v", c, tt.ok)
			}
			t.Log(c)
		})
	}
}

func TestCheckDeclinesFinal(t *testing.T) {
	attempt := func(order, provider, outcome string, s float64) api.Attempt {
		return api.Attempt{Order: order, Provider: provider, Outcome: outcome, At: at(s)}
	}
	d := []declinedOrder{{ID: "d1", User: "u1"}}
	tests := []struct {
		name     string
		declined []declinedOrder
		status   map[string]string
		attempts []api.Attempt
		ok       bool
	}{
		{"declined by wxpay", d, map[string]string{"d1": api.StatusDeclined},
			[]api.Attempt{attempt("d1", primary, api.OutcomeDeclined, 1), attempt("o2", backup, api.OutcomeCharged, 2)}, true},
		{"wxpay failed, alipay declined", d, nil,
			[]api.Attempt{attempt("d1", primary, api.OutcomeTimeout, 1), attempt("d1", backup, api.OutcomeDeclined, 2)}, true},
		{"retried at alipay", d, nil,
			[]api.Attempt{attempt("d1", primary, api.OutcomeDeclined, 1), attempt("d1", backup, api.OutcomeCharged, 2)}, false},
		{"retried at wxpay", d, nil,
			[]api.Attempt{attempt("d1", primary, api.OutcomeDeclined, 1), attempt("d1", primary, api.OutcomeFailed, 2)}, false},
		{"declined twice", d, nil,
			[]api.Attempt{attempt("d1", primary, api.OutcomeDeclined, 1), attempt("d1", backup, api.OutcomeDeclined, 2)}, false},
		{"no declined attempt", d, nil, []api.Attempt{attempt("d1", primary, api.OutcomeFailed, 1)}, false},
		{"not declined in the end", d, map[string]string{"d1": api.StatusPaid},
			[]api.Attempt{attempt("d1", primary, api.OutcomeDeclined, 1)}, false},
		{"no order id", []declinedOrder{{User: "u1"}}, nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := checkDeclinesFinal(tt.declined, tt.status, tt.attempts)
			if c.OK != tt.ok || c.Name != checkDeclinesName {
				t.Errorf("got %v, want ok=%v", c, tt.ok)
			}
			t.Log(c)
		})
	}
}

func TestCheckOversold(t *testing.T) {
	tests := []struct {
		name      string
		skus      []skuStock
		shop      int64
		shopKnown bool
		ok        bool
	}{
		{"as accepted", []skuStock{
			{SKU: "a", Initial: 10, Final: 0, FinalKnown: true, Accepted: 10},
			{SKU: "b", Initial: 10, Final: 7, FinalKnown: true, Accepted: 3},
		}, 13, true, true},
		{"shop counts unknown", []skuStock{{SKU: "a", Initial: 10, Final: 4, FinalKnown: true, Accepted: 6}}, 0, false, true},
		{"oversold", []skuStock{{SKU: "a", Initial: 10, Final: -1, FinalKnown: true, Accepted: 11}}, 11, true, false},
		{"more accepted than taken from stock", []skuStock{{SKU: "a", Initial: 10, Final: 0, FinalKnown: true, Accepted: 12}}, 10, true, false},
		{"stock gone without an order", []skuStock{{SKU: "a", Initial: 10, Final: 2, FinalKnown: true, Accepted: 7}}, 8, true, false},
		{"an unanswered order explains it", []skuStock{{SKU: "a", Initial: 10, Final: 2, FinalKnown: true, Accepted: 7, Unanswered: 1}}, 8, true, true},
		{"the shop counts otherwise", []skuStock{{SKU: "a", Initial: 10, Final: 5, FinalKnown: true, Accepted: 5}}, 6, true, false},
		{"final stock unknown", []skuStock{{SKU: "a", Initial: 10, Accepted: 5}}, 5, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := checkOversold(tt.skus, tt.shop, tt.shopKnown)
			if c.OK != tt.ok || c.Name != checkOversoldName {
				t.Errorf("got %v, want ok=%v", c, tt.ok)
			}
			t.Log(c)
		})
	}
}

func TestCheckLost(t *testing.T) {
	charge := func(order, provider string) api.Attempt {
		return api.Attempt{Order: order, Provider: provider, Outcome: api.OutcomeCharged, At: at(1)}
	}
	paid := func(id, provider string) api.Order {
		return api.Order{ID: id, Status: api.StatusPaid, Provider: provider}
	}
	accepted := []acceptedOrder{
		{ID: "p1", User: "u1", Card: api.CardOK, Status: api.StatusPaid, Provider: primary},
		{ID: "b1", User: "u2", Card: api.CardOK, Status: api.StatusPending},
		{ID: "q1", User: "u3", Card: api.CardOK, Status: api.StatusPending},
	}
	good := map[string]api.Order{"p1": paid("p1", primary), "b1": paid("b1", backup), "q1": {ID: "q1", Status: api.StatusPending}}
	goodLedger := []api.Attempt{
		{Order: "p1", Provider: primary, Outcome: api.OutcomeFailed},
		charge("p1", primary),
		{Order: "p1", Provider: primary, Outcome: api.OutcomeRepeat},
		charge("b1", backup),
	}
	with := func(m map[string]api.Order, o api.Order) map[string]api.Order {
		c := map[string]api.Order{}
		for k, v := range m {
			c[k] = v
		}
		c[o.ID] = o
		return c
	}
	tests := []struct {
		name       string
		accepted   []acceptedOrder
		final      map[string]api.Order
		buffered   int64
		attempts   []api.Attempt
		ok         bool
		fromBuffer int
	}{
		{"all there", accepted, good, 1, goodLedger, true, 1},
		{"charged twice", accepted, good, 1, append(goodLedger, charge("b1", primary)), false, 1},
		{"pending but charged", accepted, good, 1, append(goodLedger, charge("q1", primary)), false, 1},
		{"paid without a charge", accepted, good, 1, goodLedger[:1], false, 1},
		{"paid by another provider", accepted, with(good, paid("p1", backup)), 1, goodLedger, false, 1},
		{"not found", accepted, map[string]api.Order{"p1": paid("p1", primary), "b1": paid("b1", backup)}, 1, goodLedger, false, 1},
		{"more pending than buffered", accepted, good, 0, goodLedger, false, 1},
		{"paid, then pending", accepted, with(good, api.Order{ID: "p1", Status: api.StatusPending}), 2, goodLedger[3:], false, 1},
		{"accepted without an id", append(accepted, acceptedOrder{User: "u4", Status: api.StatusPaid}), good, 1, goodLedger, false, 1},
		{"declined from the buffer", append(accepted, acceptedOrder{ID: "d1", User: "u5", Card: api.CardDeclined, Status: api.StatusPending}),
			with(good, api.Order{ID: "d1", Status: api.StatusDeclined}), 1, goodLedger, true, 1},
		{"a good card declined", append(accepted, acceptedOrder{ID: "d1", User: "u5", Card: api.CardOK, Status: api.StatusPending}),
			with(good, api.Order{ID: "d1", Status: api.StatusDeclined}), 1, goodLedger, false, 1},
		{"paid, then declined", append(accepted, acceptedOrder{ID: "d1", User: "u5", Card: api.CardDeclined, Status: api.StatusPaid}),
			with(good, api.Order{ID: "d1", Status: api.StatusDeclined}), 1, goodLedger, false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, fromBuffer := checkLost(tt.accepted, tt.final, tt.buffered, tt.attempts)
			if c.OK != tt.ok || c.Name != checkLostName || fromBuffer != tt.fromBuffer {
				t.Errorf("got %v, %d from the buffer; want ok=%v, %d", c, fromBuffer, tt.ok, tt.fromBuffer)
			}
			t.Log(c)
		})
	}
}

func TestCheckDegraded(t *testing.T) {
	from, to := at(10), at(25)
	on := []targetFeatures{{Target: "a", Known: true}, {Target: "b", Known: true, Off: []string{"reviews"}}}
	tests := []struct {
		name  string
		seen  []time.Time
		from  time.Time
		final []targetFeatures
		ok    bool
	}{
		{"off in the outage, on after", []time.Time{at(12), at(13)}, from, on, true},
		{"off at the window's end", []time.Time{at(25)}, from, on, true},
		{"never off", nil, from, on, false},
		{"off only before the outage", []time.Time{at(2)}, from, on, false},
		{"off only long after", []time.Time{at(26)}, from, on, false},
		{"no outage", []time.Time{at(12)}, time.Time{}, on, false},
		{"still off at the end", []time.Time{at(12)}, from, []targetFeatures{{Target: "a", Known: true, Off: []string{recommendations}}}, false},
		{"end unknown", []time.Time{at(12)}, from, []targetFeatures{{Target: "a"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := checkDegraded(t0, recommendations, tt.seen, tt.from, to, tt.final)
			if c.OK != tt.ok || c.Name != checkDegradedName {
				t.Errorf("got %v, want ok=%v", c, tt.ok)
			}
			t.Log(c)
		})
	}
	t.Run("open window", func(t *testing.T) {
		if c := checkDegraded(t0, recommendations, []time.Time{at(99)}, from, time.Time{}, on); !c.OK {
			t.Errorf("got %v", c)
		}
	})
}

func TestCheckDegradedWindowEdges(t *testing.T) {
	for _, tt := range []struct {
		seen float64
		ok   bool
	}{{9.99, false}, {10, true}, {25, true}, {25.01, false}} {
		c := checkDegraded(t0, recommendations, []time.Time{at(tt.seen)}, at(10), at(25), nil)
		if c.OK != tt.ok {
			t.Errorf("seen at %vs: got %v, want ok=%v", tt.seen, c, tt.ok)
		}
	}
}

func TestViolationsNameAFew(t *testing.T) {
	var tickets []ticketRecord
	for i := range 10 {
		tickets = append(tickets, ticketRecord{Number: uint64(2 * (i + 1)), InLine: []time.Time{at(100)}})
	}
	tickets = append(tickets, ticketRecord{Number: 1000, Admitted: at(1)})
	c := checkFIFO(t0, tickets)
	if c.OK || !strings.HasPrefix(c.Detail, "10 violations: ") || !strings.Contains(c.Detail, "and 7 more") {
		t.Errorf("got %v", c)
	}
}

func TestMergeLedgers(t *testing.T) {
	a := api.Ledger{Instance: "a", Attempts: []api.Attempt{
		{Order: "1", Outcome: api.OutcomeFailed, At: at(1)}, {Order: "1", Outcome: api.OutcomeCharged, At: at(1)}, {Order: "3", At: at(3)}}}
	b := api.Ledger{Instance: "b", Attempts: []api.Attempt{{Order: "2", At: at(2)}}}
	got := mergeLedgers([]api.Ledger{a, b, a}) // a reached through two targets
	var orders []string
	for _, x := range got {
		orders = append(orders, x.Order+x.Outcome)
	}
	if want := "1failed 1charged 2 3"; strings.Join(orders, " ") != want {
		t.Errorf("merged %q, want %q", strings.Join(orders, " "), want)
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := range 100 {
		ds = append(ds, time.Duration(100-i)*time.Second)
	}
	if p50, p99 := percentile(ds, 0.5), percentile(ds, 0.99); p50 != 50*time.Second || p99 != 99*time.Second {
		t.Errorf("p50 %v p99 %v, want 50s 99s", p50, p99)
	}
	if p := percentile(nil, 0.5); p != 0 {
		t.Errorf("of none: %v", p)
	}
	if p := percentile([]time.Duration{time.Second}, 0.99); p != time.Second {
		t.Errorf("of one: %v", p)
	}
}

func TestArrivals(t *testing.T) {
	c := Config{Duration: 30 * time.Second, Rate: 100, Load: 10}
	for _, tt := range []struct {
		t    time.Duration
		want float64
	}{
		{0, 0}, {3 * time.Second, 3000}, {6 * time.Second, 6000}, {12 * time.Second, 6300},
		{24 * time.Second, 6900}, {30 * time.Second, 6900}, {time.Minute, 6900},
	} {
		if got := arrivals(c, tt.t); math.Abs(got-tt.want) > 1e-6 {
			t.Errorf("arrivals at %v: %v, want %v", tt.t, got, tt.want)
		}
	}
}

func TestConfig(t *testing.T) {
	good := Config{Targets: []string{"http://127.0.0.1:8080/"}, Token: "t", Rate: 40}
	tests := []struct {
		name   string
		change func(*Config)
		field  string // in the error; "" if valid
	}{
		{"good", func(*Config) {}, ""},
		{"no targets", func(c *Config) { c.Targets = nil }, "Targets"},
		{"not a URL", func(c *Config) { c.Targets = []string{"127.0.0.1:8080"} }, "Targets[0]"},
		{"no host", func(c *Config) { c.Targets = []string{"http://"} }, "Targets[0]"},
		{"second bad", func(c *Config) { c.Targets = append(c.Targets, "ftp://x") }, "Targets[1]"},
		{"with a query", func(c *Config) { c.Targets = []string{"http://x/?a=1"} }, "Targets[0]"},
		{"no token", func(c *Config) { c.Token = "" }, "Token"},
		{"token with a space", func(c *Config) { c.Token = "a b" }, "Token"},
		{"short", func(c *Config) { c.Duration = 500 * time.Millisecond }, "Duration"},
		{"negative duration", func(c *Config) { c.Duration = -time.Second }, "Duration"},
		{"no rate", func(c *Config) { c.Rate = 0 }, "Rate"},
		{"negative rate", func(c *Config) { c.Rate = -1 }, "Rate"},
		{"NaN rate", func(c *Config) { c.Rate = math.NaN() }, "Rate"},
		{"infinite rate", func(c *Config) { c.Rate = math.Inf(1) }, "Rate"},
		{"negative load", func(c *Config) { c.Load = -1 }, "Load"},
		{"NaN load", func(c *Config) { c.Load = math.NaN() }, "Load"},
		{"too many users", func(c *Config) { c.Rate, c.Load = 1e6, 100 }, "Load"},
		{"negative open timeout", func(c *Config) { c.OpenTimeout = -time.Second }, "OpenTimeout"},
		{"negative drain", func(c *Config) { c.Drain = -time.Second }, "Drain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			c.Targets = append([]string(nil), good.Targets...)
			tt.change(&c)
			_, err := c.normalize()
			switch {
			case tt.field == "" && err != nil:
				t.Errorf("error %v", err)
			case tt.field != "" && (err == nil || !strings.Contains(err.Error(), "Config."+tt.field)):
				t.Errorf("error %v, want one naming Config.%s", err, tt.field)
			}
			if tt.field != "" {
				// Run refuses it the same way, before any request.
				if _, err := Run(context.Background(), c); err == nil {
					t.Error("Run accepted it")
				}
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := Config{Targets: []string{"http://127.0.0.1:8080/"}, Token: "t", Rate: 40}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if c.Duration != 30*time.Second || c.Load != 10 || c.Drain != 10*time.Second || c.Out == nil || c.Targets[0] != "http://127.0.0.1:8080" {
		t.Errorf("defaults: %+v", c)
	}
	c, err = Config{Targets: []string{"http://x"}, Token: "t", Rate: 40, Duration: 9 * time.Second}.normalize()
	if err != nil || c.Drain != 5*time.Second {
		t.Errorf("drain of a 9s sale: %v, %v; want 5s", c.Drain, err)
	}
}

func TestRunUnreachable(t *testing.T) {
	srv := httptest.NewServer(nil)
	url := srv.URL
	srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Run(ctx, Config{Targets: []string{url}, Token: fakeToken, Rate: 10, Duration: 2 * time.Second})
	if err == nil || !strings.Contains(err.Error(), url) {
		t.Errorf("error %v, want one naming %s", err, url)
	}
}

func TestRunRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t.Run("wrong token", func(t *testing.T) {
		shop := newFakeShop(t, 10, map[string]int64{"a": 5})
		_, err := Run(ctx, Config{Targets: []string{shop.serve(t, "a")}, Token: "wrong", Rate: 10, Duration: 2 * time.Second})
		if err == nil || !strings.Contains(err.Error(), "Config.Token") {
			t.Errorf("error %v, want one about Config.Token", err)
		}
	})
	t.Run("nothing on sale", func(t *testing.T) {
		shop := newFakeShop(t, 10, map[string]int64{})
		_, err := Run(ctx, Config{Targets: []string{shop.serve(t, "a")}, Token: fakeToken, Rate: 10, Duration: 2 * time.Second})
		if err == nil || !strings.Contains(err.Error(), "no flash-sale item") {
			t.Errorf("error %v, want no flash-sale item", err)
		}
	})
}

// TestRun plays a short sale against two instances of the fake shop.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("plays a sale of a few seconds")
	}
	shop := newFakeShop(t, 30, map[string]int64{"mooncake": 25, "teaset": 25})
	targets := []string{shop.serve(t, "a"), shop.serve(t, "b")}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	res, err := Run(ctx, Config{
		Targets: targets, Token: fakeToken, Duration: 4 * time.Second, Rate: 30, Load: 4,
		Drain: 3 * time.Second, Seed: 7, Out: &out,
	})
	t.Logf("output:\n%s", &out)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Checks) != 6 {
		t.Fatalf("%d checks, want 6", len(res.Checks))
	}
	for _, c := range res.Failed() {
		t.Errorf("check failed: %v", c)
	}
	if res.Users < 50 || res.Joined == 0 || res.Admitted == 0 || res.Paid == 0 || res.Pending+res.Paid > 50 {
		t.Errorf("totals: %+v", res)
	}
	if res.PaidBy[primary] == 0 || res.Buffered != 0 || res.Requests == 0 || res.PageViews == 0 {
		t.Errorf("totals: %+v", res)
	}
	if len(res.Faults) != 4 || !res.Faults[0].Down || res.Faults[3].Name != primary || res.Faults[3].Down {
		t.Errorf("faults: %+v", res.Faults)
	}
	for _, f := range res.Faults {
		want := f.Sent // a repair is surely in force once sent
		if f.Down {
			want = f.Answered // a breaking change once answered
		}
		if f.Answered.Before(f.Sent) || !f.At.Equal(want) {
			t.Errorf("fault %+v: At is not the conservative instant", f)
		}
	}
	for _, want := range []string{"wxpay starts failing", "alipay recovers", "breaker wxpay: closed -> open (a, b)",
		"recommendations switched off (a, b)", "the sale closes", "ok   FIFO admission", "All 6 checks passed."} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q in the output", want)
		}
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if len(line) > 160 {
			t.Errorf("line of %d columns: %q", len(line), line)
		}
	}
}

// TestRunInterrupted cancels a sale early: Run must return at once with
// ctx's error and leave no goroutine behind (see TestMain).
func TestRunInterrupted(t *testing.T) {
	shop := newFakeShop(t, 20, map[string]int64{"mooncake": 100})
	url := shop.serve(t, "a")
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	res, err := Run(ctx, Config{Targets: []string{url}, Token: fakeToken, Duration: 20 * time.Second, Rate: 20, Out: &out})
	t.Logf("output:\n%s", &out)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want the context's", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("returned after %v", d)
	}
	if res.Users == 0 || res.Checks != nil {
		t.Errorf("result: %+v", res)
	}
	// Users in line gave their place back (but for a join or two cut
	// short after the shop took it).
	rs, err := shop.room.Stats(context.Background())
	if err != nil || rs.Length > 3 {
		t.Errorf("line after the interruption: %+v, %v", rs, err)
	}
	if !strings.Contains(out.String(), "interrupted") {
		t.Error("no word of the interruption")
	}
}

func TestWrap(t *testing.T) {
	got := wrap("  ok   name: one two three four five", 16, "    ")
	want := "  ok   name: one\n    two three\n    four five"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := wrap("short", 16, "  "); got != "short" {
		t.Errorf("got %q", got)
	}
	if got := wrap("a verylongwordindeed b", 8, "  "); got != "a\n  verylongwordindeed\n  b" {
		t.Errorf("got %q", got)
	}
}
