package shop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/queue"
)

func TestMain(m *testing.M) { redistest.Main(m) }

const (
	opToken     = "operator-token-0123456789"
	viewerToken = "viewer-token-0123456789"
)

// testShop starts a shop behind an httptest server. With redis true it
// keeps everything in the test's Redis, under the test's own prefix.
func testShop(t *testing.T, redis bool, stock int64, tweak ...func(*Config)) (*Shop, *httptest.Server) {
	t.Helper()
	cfg := Config{
		Stock:          map[string]int64{"mooncake-box": stock, "rice-cooker": stock, "tea-set": stock},
		Rate:           1000,
		OperatorToken:  opToken,
		ViewerToken:    viewerToken,
		OpenTimeout:    300 * time.Millisecond,
		AttemptTimeout: 100 * time.Millisecond,
	}
	if redis {
		cfg.Redis = redistest.Client(t)
		cfg.Prefix = redistest.Prefix(t)
		cfg.Reset = true
	}
	for _, f := range tweak {
		f(&cfg)
	}
	s, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		srv.Close()
		s.Close()
	})
	return s, srv
}

// call makes a request as user and decodes the JSON answer into out.
func call(t *testing.T, srv *httptest.Server, method, path, user string, hdr map[string]string, body any, out any) *http.Response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(api.UserHeader, user)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp
}

// admit joins the line as user and polls until admitted; it returns the
// admission token.
func admit(t *testing.T, srv *httptest.Server, user string) string {
	t.Helper()
	var v queue.TicketView
	resp := call(t, srv, "POST", "/api/sale/line", user, nil, nil, &v)
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusOK {
		t.Fatalf("join: %d %+v", resp.StatusCode, v)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !v.Admitted {
		if time.Now().After(deadline) {
			t.Fatalf("%s not admitted: %+v", user, v)
		}
		time.Sleep(20 * time.Millisecond)
		resp = call(t, srv, "GET", "/api/sale/line?ticket="+v.Ticket, user, nil, nil, &v)
		if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusOK {
			t.Fatalf("poll: %d %+v", resp.StatusCode, v)
		}
	}
	return v.Token
}

// buy orders one unit with an admission token, trying again while the
// order path sheds the request (the token is not used up then).
func buy(t *testing.T, srv *httptest.Server, user, token, sku, card string) (int, api.OrderReply, api.Error) {
	t.Helper()
	for try := 0; ; try++ {
		var raw json.RawMessage
		resp := call(t, srv, "POST", "/api/sale/orders", user, map[string]string{queue.AdmissionHeader: token},
			api.OrderRequest{SKU: sku, Card: card}, &raw)
		var rep api.OrderReply
		var e api.Error
		_ = json.Unmarshal(raw, &rep)
		_ = json.Unmarshal(raw, &e)
		if e.Error == "overloaded" && try < 100 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		return resp.StatusCode, rep, e
	}
}

func stats(t *testing.T, srv *httptest.Server) api.Stats {
	t.Helper()
	var st api.Stats
	if resp := call(t, srv, "GET", "/ops/stats", "", map[string]string{"Authorization": "Bearer " + viewerToken}, nil, &st); resp.StatusCode != 200 {
		t.Fatalf("stats: %d", resp.StatusCode)
	}
	return st
}

func forBoth(t *testing.T, f func(t *testing.T, redis bool)) {
	t.Run("memory", func(t *testing.T) { f(t, false) })
	t.Run("redis", func(t *testing.T) { f(t, true) })
}

func TestOrderPaidDeclinedSoldOut(t *testing.T) {
	forBoth(t, func(t *testing.T, redis bool) {
		_, srv := testShop(t, redis, 2)
		code, rep, _ := buy(t, srv, "u1", admit(t, srv, "u1"), "tea-set", api.CardOK)
		if code != http.StatusCreated || rep.Status != api.StatusPaid || rep.Provider != Primary {
			t.Fatalf("first order: %d %+v", code, rep)
		}
		// A declined card is final: 402, the unit goes back, and alipay
		// is never asked.
		code, _, e := buy(t, srv, "u2", admit(t, srv, "u2"), "tea-set", api.CardDeclined)
		if code != http.StatusPaymentRequired || e.Error != "declined" {
			t.Fatalf("declined: %d %+v", code, e)
		}
		if st := stats(t, srv); st.Stock["tea-set"] != 1 || st.Orders[api.StatusDeclined] != 1 || st.PaidBy[Primary] != 1 {
			t.Fatalf("after a decline: %+v", st)
		}
		code, _, _ = buy(t, srv, "u3", admit(t, srv, "u3"), "tea-set", api.CardOK)
		if code != http.StatusCreated {
			t.Fatalf("second sale: %d", code)
		}
		code, _, e = buy(t, srv, "u4", admit(t, srv, "u4"), "tea-set", api.CardOK)
		if code != http.StatusConflict || e.Error != "sold_out" {
			t.Fatalf("sold out: %d %+v", code, e)
		}
		// The token was used: a second order with it is refused.
		tok := admit(t, srv, "u5")
		buy(t, srv, "u5", tok, "mooncake-box", api.CardOK)
		if code, _, e = buy(t, srv, "u5", tok, "mooncake-box", api.CardOK); code != http.StatusForbidden || e.Error != "token_replayed" {
			t.Fatalf("replayed token: %d %+v", code, e)
		}
		if code, _, e = buy(t, srv, "u6", "forged.token", "mooncake-box", api.CardOK); code != http.StatusForbidden || e.Error != "token_invalid" {
			t.Fatalf("forged token: %d %+v", code, e)
		}
		var pays []api.Attempt
		for _, a := range stockLedger(t, srv) {
			if a.Provider == Backup {
				pays = append(pays, a)
			}
		}
		if len(pays) != 0 {
			t.Fatalf("alipay was asked: %+v", pays)
		}
	})
}

func stockLedger(t *testing.T, srv *httptest.Server) []api.Attempt {
	var l api.Ledger
	call(t, srv, "GET", "/ops/ledger", "", map[string]string{"Authorization": "Bearer " + opToken}, nil, &l)
	return l.Attempts
}

func TestNothingOversoldUnderARace(t *testing.T) {
	// Forty admitted users race for ten units: ten orders, no more.
	forBoth(t, func(t *testing.T, redis bool) {
		_, srv := testShop(t, redis, 10)
		tokens := make([]string, 40)
		for i := range tokens {
			tokens[i] = admit(t, srv, fmt.Sprintf("r%d", i))
		}
		var mu sync.Mutex
		codes := map[int]int{}
		var wg sync.WaitGroup
		for i, tok := range tokens {
			wg.Go(func() {
				code, _, _ := buy(t, srv, fmt.Sprintf("r%d", i), tok, "rice-cooker", api.CardOK)
				mu.Lock()
				codes[code]++
				mu.Unlock()
			})
		}
		wg.Wait()
		if codes[http.StatusCreated] != 10 || codes[http.StatusConflict] != 30 {
			t.Fatalf("answers %v, want 10 created and 30 sold out", codes)
		}
		if st := stats(t, srv); st.Stock["rice-cooker"] != 0 || st.Orders[api.StatusPaid] != 10 {
			t.Fatalf("stats %+v", st)
		}
	})
}

func TestPaymentsBufferedWhileEveryProviderIsDown(t *testing.T) {
	forBoth(t, func(t *testing.T, redis bool) {
		s, srv := testShop(t, redis, 50)
		down := func(name string, rate float64) {
			if err := s.SetProvider(t.Context(), api.ProviderFault{Name: name, FailRate: rate}); err != nil {
				t.Fatal(err)
			}
		}
		down(Primary, 1)
		down(Backup, 1)
		var pending, owners []string
		for i := range 12 {
			u := fmt.Sprintf("b%d", i)
			code, rep, e := buy(t, srv, u, admit(t, srv, u), "mooncake-box", api.CardOK)
			if code != http.StatusAccepted || rep.Status != api.StatusPending {
				t.Fatalf("order %d while payment is down: %d %+v %+v", i, code, rep, e)
			}
			pending, owners = append(pending, rep.Order), append(owners, u)
		}
		if st := stats(t, srv); st.Breakers[Primary] != "open" || st.Breakers[Backup] != "open" || st.Buffered != 12 {
			t.Fatalf("stats while down: %+v", st)
		}
		// alipay recovers: the buffer pays every order through it.
		down(Backup, 0)
		deadline := time.Now().Add(15 * time.Second)
		for {
			st := stats(t, srv)
			if st.Orders[api.StatusPaid] == 12 && st.Buffered == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("buffer not drained: %+v", st)
			}
			time.Sleep(50 * time.Millisecond)
		}
		charged := map[string]int{}
		for _, a := range stockLedger(t, srv) {
			if a.Outcome == api.OutcomeCharged {
				charged[a.Order]++
			}
		}
		for i, id := range pending {
			var o api.Order
			call(t, srv, "GET", "/api/orders/"+id, owners[i], nil, nil, &o)
			if o.Status != api.StatusPaid || o.Provider != Backup || charged[id] != 1 {
				t.Fatalf("order %s: %+v, charged %d times", id, o, charged[id])
			}
		}
	})
}

func TestLimits(t *testing.T) {
	_, srv := testShop(t, false, 10, func(c *Config) { c.Rate = 10 })
	// One user hammering the line is refused past its burst.
	limited := 0
	for range 30 {
		var e api.Error
		if resp := call(t, srv, "POST", "/api/sale/line", "bot", nil, nil, &e); resp.StatusCode == http.StatusTooManyRequests {
			if e.Error != "rate_limited" || e.Scope != "user" || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("429 body %+v", e)
			}
			limited++
		}
	}
	if limited < 15 {
		t.Fatalf("only %d of 30 rapid joins limited", limited)
	}
	// The crowd together is limited on joining: distinct users, beyond
	// the burst of 20 (two seconds of the room's rate).
	global := 0
	for i := range 200 {
		var e api.Error
		if resp := call(t, srv, "POST", "/api/sale/line", fmt.Sprintf("c%d", i), nil, nil, &e); resp.StatusCode == http.StatusTooManyRequests && e.Scope == "global" {
			global++
			break
		}
	}
	if global == 0 {
		t.Fatal("200 joins in a row never met the global limit")
	}
}

func TestOpsNeedTokens(t *testing.T) {
	_, srv := testShop(t, false, 1)
	if resp := call(t, srv, "GET", "/ops/stats", "", nil, nil, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("stats without a token: %d", resp.StatusCode)
	}
	fault := api.ProviderFault{FailRate: 1}
	if resp := call(t, srv, "PUT", "/ops/providers/wxpay", "", map[string]string{"Authorization": "Bearer " + viewerToken}, fault, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a viewer changed a provider: %d", resp.StatusCode)
	}
	if resp := call(t, srv, "PUT", "/ops/providers/wxpay", "", map[string]string{"Authorization": "Bearer " + opToken}, api.ProviderFault{FailRate: 2}, nil); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a bad fault: %d", resp.StatusCode)
	}
	var got api.ProviderFault
	if resp := call(t, srv, "PUT", "/ops/providers/wxpay", "", map[string]string{"Authorization": "Bearer " + opToken}, fault, &got); resp.StatusCode != 200 || got.FailRate != 1 || got.Name != "wxpay" {
		t.Fatalf("operator's change: %d %+v", resp.StatusCode, got)
	}
}

func TestProductPageDegrades(t *testing.T) {
	forBoth(t, func(t *testing.T, redis bool) {
		_, srv := testShop(t, redis, 1)
		var page api.ProductPage
		call(t, srv, "GET", "/api/products/thermos", "u", nil, nil, &page)
		if len(page.Recommendations) == 0 || len(page.Reviews) == 0 || len(page.Degraded) != 0 {
			t.Fatalf("healthy page %+v", page)
		}
		// An operator turns reviews off in the console's API.
		body := map[string]any{"state": map[string]any{"mode": "off"}, "reason": "test"}
		if resp := call(t, srv, "PUT", "/admin/api/features/reviews", "", map[string]string{"Authorization": "Bearer " + opToken}, body, nil); resp.StatusCode != 200 {
			t.Fatalf("switching reviews off: %d", resp.StatusCode)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			page = api.ProductPage{}
			call(t, srv, "GET", "/api/products/thermos", "u", map[string]string{"Accept-Language": "zh-CN"}, nil, &page)
			if len(page.Reviews) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("reviews still shown")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if len(page.Degraded) != 1 || page.Degraded[0].Feature != FeatureReviews || page.Degraded[0].Message != "评价稍后恢复" || len(page.Recommendations) == 0 {
			t.Fatalf("degraded page %+v", page)
		}
	})
}

func TestConfigValidation(t *testing.T) {
	base := func() Config {
		return Config{Stock: map[string]int64{"mooncake-box": 1, "rice-cooker": 1, "tea-set": 1}, OperatorToken: "a", ViewerToken: "b"}
	}
	cases := map[string]func(*Config){
		"Stock":          func(c *Config) { delete(c.Stock, "tea-set") },
		"not a flash":    func(c *Config) { c.Stock["thermos"] = 1 },
		"ViewerToken":    func(c *Config) { c.ViewerToken = c.OperatorToken },
		"Prefix":         func(c *Config) { c.Prefix = "a{b}" },
		"Prefix ":        func(c *Config) { c.Prefix = "sale*" },
		"AttemptTimeout": func(c *Config) { c.AttemptTimeout = time.Hour },
	}
	for want, f := range cases {
		c := base()
		f(&c)
		s, err := New(context.Background(), c)
		if err == nil {
			s.Close()
			t.Errorf("%s: no error", want)
		} else if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %q does not name it", want, err)
		}
	}
}

// flakySale fails the first calls of pay and decline, as a store that
// cannot be reached would, after the provider has answered.
type flakySale struct {
	sale
	failPay, failDecline atomic.Int32
}

var errStoreDown = errors.New("store unreachable")

func (f *flakySale) pay(ctx context.Context, id, provider string) (bool, error) {
	if f.failPay.Add(-1) >= 0 {
		return false, errStoreDown
	}
	return f.sale.pay(ctx, id, provider)
}

func (f *flakySale) decline(ctx context.Context, id string) (bool, error) {
	if f.failDecline.Add(-1) >= 0 {
		return false, errStoreDown
	}
	return f.sale.decline(ctx, id)
}

func TestOutcomeNotRecordedIsReconciledNotRepeated(t *testing.T) {
	// A payment taken, or a card declined, whose outcome the store could
	// not record, is settled from the buffer by asking the providers:
	// never charged twice, never retried at the backup, the unit back
	// once for the decline.
	forBoth(t, func(t *testing.T, redis bool) {
		flaky := &flakySale{}
		flaky.failPay.Store(3)
		flaky.failDecline.Store(3)
		s, srv := testShop(t, redis, 5, func(c *Config) {
			c.wrapSale = func(inner sale) sale { flaky.sale = inner; return flaky }
		})
		code, rep, _ := buy(t, srv, "p1", admit(t, srv, "p1"), "tea-set", api.CardOK)
		if code != http.StatusCreated || rep.Provider != Primary {
			t.Fatalf("paid order: %d %+v", code, rep)
		}
		code, _, e := buy(t, srv, "p2", admit(t, srv, "p2"), "tea-set", api.CardDeclined)
		if code != http.StatusPaymentRequired {
			t.Fatalf("declined order: %d %+v", code, e)
		}
		// wxpay goes down: a repeated charge would go to alipay.
		if err := s.SetProvider(t.Context(), api.ProviderFault{Name: Primary, FailRate: 1}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			st := stats(t, srv)
			if st.Orders[api.StatusPaid] == 1 && st.Orders[api.StatusDeclined] == 1 && st.Orders[api.StatusPending] == 0 {
				if st.Stock["tea-set"] != 4 || st.PaidBy[Primary] != 1 {
					t.Fatalf("settled, but %+v", st)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("not reconciled: %+v", st)
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, a := range stockLedger(t, srv) {
			if a.Provider == Backup || a.Outcome == api.OutcomeRepeat {
				t.Fatalf("a settled order was asked again: %+v", a)
			}
		}
	})
}

func TestBadOrderKeepsTheAdmission(t *testing.T) {
	_, srv := testShop(t, false, 5)
	tok := admit(t, srv, "typo")
	if code, _, e := buy(t, srv, "typo", tok, "teaset", api.CardOK); code != http.StatusBadRequest {
		t.Fatalf("unknown SKU: %d %+v", code, e)
	}
	if code, rep, e := buy(t, srv, "typo", tok, "tea-set", api.CardOK); code != http.StatusCreated {
		t.Fatalf("the same token after a typo: %d %+v %+v", code, rep, e)
	}
}

func TestOrdersAreShownToTheirOwnersOnly(t *testing.T) {
	_, srv := testShop(t, false, 5)
	_, rep, _ := buy(t, srv, "alice", admit(t, srv, "alice"), "tea-set", api.CardOK)
	var o api.Order
	if resp := call(t, srv, "GET", "/api/orders/"+rep.Order, "alice", nil, nil, &o); resp.StatusCode != 200 || o.User != "alice" {
		t.Fatalf("alice's own order: %d %+v", resp.StatusCode, o)
	}
	if resp := call(t, srv, "GET", "/api/orders/"+rep.Order, "mallory", nil, nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("mallory reading alice's order: %d", resp.StatusCode)
	}
}
