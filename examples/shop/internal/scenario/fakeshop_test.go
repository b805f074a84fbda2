package scenario

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
	"github.com/bulwarkgo/bulwark/queue"
)

// fakeShop is a small, well-behaved stand-in for the shop, enough to play
// the scenario against: the real waiting room in front of a stock, two
// providers that are either healthy or down (a fault with any failure
// rate), a buffer that is paid when a provider is healthy again, and
// recommendations switched off while wxpay is down. Several instances
// (handlers) share it, each with its own ledger.
type fakeShop struct {
	token string
	room  *queue.Room

	mu      sync.Mutex
	stock   map[string]int64
	orders  map[string]*api.Order
	cards   map[string]string
	buffer  []string
	ledgers map[string][]api.Attempt
	faults  map[string]api.ProviderFault
	seq     int
}

const fakeToken = "operator-token"

func newFakeShop(t *testing.T, rate float64, stock map[string]int64) *fakeShop {
	t.Helper()
	signer, err := queue.NewSigner([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	room, err := queue.NewRoom("flash-sale", rate, queue.WithSigner(signer),
		queue.WithTicketTTL(5*time.Second), queue.WithPollInterval(time.Second, 2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = room.Close() })
	return &fakeShop{
		token: fakeToken, room: room, stock: stock,
		orders: map[string]*api.Order{}, cards: map[string]string{},
		ledgers: map[string][]api.Attempt{}, faults: map[string]api.ProviderFault{},
	}
}

// serve starts an instance of the shop.
func (f *fakeShop) serve(t *testing.T, instance string) string {
	t.Helper()
	srv := httptest.NewServer(f.handler(instance))
	t.Cleanup(srv.Close)
	return srv.URL
}

func (f *fakeShop) healthy(provider string) bool { return f.faults[provider].FailRate == 0 }

// provider is the provider that would take a payment now; "" if none.
func (f *fakeShop) provider() string {
	for _, p := range []string{primary, backup} {
		if f.healthy(p) {
			return p
		}
	}
	return ""
}

// pay settles order o at provider p, on instance's ledger.
func (f *fakeShop) pay(instance, p string, o *api.Order) {
	now := time.Now()
	if f.cards[o.ID] == api.CardDeclined {
		f.ledgers[instance] = append(f.ledgers[instance], api.Attempt{Order: o.ID, Provider: p, Outcome: api.OutcomeDeclined, At: now})
		o.Status = api.StatusDeclined
		f.stock[o.SKU]++
		return
	}
	f.ledgers[instance] = append(f.ledgers[instance], api.Attempt{Order: o.ID, Provider: p, Outcome: api.OutcomeCharged, At: now})
	o.Status, o.Provider, o.Updated = api.StatusPaid, p, now
}

// flush pays the buffered orders while a provider is healthy.
func (f *fakeShop) flush(instance string) {
	for len(f.buffer) > 0 {
		p := f.provider()
		if p == "" {
			return
		}
		f.pay(instance, p, f.orders[f.buffer[0]])
		f.buffer = f.buffer[1:]
	}
}

func (f *fakeShop) handler(instance string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/products", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		var out api.Products
		for _, sku := range slices.Sorted(maps.Keys(f.stock)) {
			out.Products = append(out.Products, api.Product{SKU: sku, Name: sku, PriceCents: 100, FlashSale: true, StockLeft: f.stock[sku]})
		}
		out.Products = append(out.Products, api.Product{SKU: "umbrella", Name: "Umbrella", PriceCents: 100, StockLeft: -1})
		writeTestJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /api/products/{sku}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		page := api.ProductPage{Product: api.Product{SKU: r.PathValue("sku")}}
		if !f.healthy(primary) {
			page.Degraded = append(page.Degraded, api.Degraded{Feature: recommendations, Message: "resting"})
		}
		writeTestJSON(w, http.StatusOK, page)
	})
	line := queue.StatusHandler(f.room)
	mux.Handle("/api/sale/line", line)
	mux.Handle("POST /api/sale/orders", queue.RequireAdmission(f.room)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req api.OrderRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeTestJSON(w, http.StatusBadRequest, api.Error{Error: "bad_request"})
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.stock[req.SKU] <= 0 {
			writeTestJSON(w, http.StatusConflict, api.Error{Error: "sold_out"})
			return
		}
		f.stock[req.SKU]--
		f.seq++
		now := time.Now()
		o := &api.Order{ID: fmt.Sprintf("%s-%d", instance, f.seq), User: r.Header.Get(api.UserHeader), SKU: req.SKU, Created: now, Updated: now}
		f.orders[o.ID], f.cards[o.ID] = o, req.Card
		p := f.provider()
		if p == "" {
			o.Status = api.StatusPending
			f.buffer = append(f.buffer, o.ID)
			writeTestJSON(w, http.StatusAccepted, api.OrderReply{Order: o.ID, Status: o.Status})
			return
		}
		f.pay(instance, p, o)
		if o.Status == api.StatusDeclined {
			writeTestJSON(w, http.StatusPaymentRequired, api.Error{Error: "declined", Order: o.ID})
			return
		}
		writeTestJSON(w, http.StatusCreated, api.OrderReply{Order: o.ID, Status: o.Status, Provider: o.Provider})
	})))
	mux.HandleFunc("GET /api/orders/{id}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		o, ok := f.orders[r.PathValue("id")]
		if !ok {
			writeTestJSON(w, http.StatusNotFound, api.Error{Error: "not_found"})
			return
		}
		writeTestJSON(w, http.StatusOK, o)
	})
	ops := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer "+f.token {
				writeTestJSON(w, http.StatusUnauthorized, api.Error{Error: "unauthorized"})
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("GET /ops/stats", ops(func(w http.ResponseWriter, r *http.Request) {
		rs, err := f.room.Stats(r.Context())
		if err != nil {
			writeTestJSON(w, http.StatusServiceUnavailable, api.Error{Error: "unavailable"})
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.flush(instance)
		st := api.Stats{
			Instance: instance,
			Room:     api.RoomStats{Length: rs.Length, Active: rs.Active},
			Stock:    map[string]int64{}, Orders: map[string]int64{}, PaidBy: map[string]int64{},
			Buffered: int64(len(f.buffer)),
			Breakers: map[string]string{}, Degraded: []string{},
		}
		for k, v := range f.stock {
			st.Stock[k] = v
		}
		for _, o := range f.orders {
			st.Orders[o.Status]++
			if o.Status == api.StatusPaid {
				st.PaidBy[o.Provider]++
			}
		}
		for _, p := range []string{primary, backup} {
			st.Breakers[p] = "closed"
			if !f.healthy(p) {
				st.Breakers[p] = "open"
			}
		}
		if !f.healthy(primary) {
			st.Degraded = append(st.Degraded, recommendations)
		}
		writeTestJSON(w, http.StatusOK, st)
	}))
	mux.HandleFunc("GET /ops/ledger", ops(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		writeTestJSON(w, http.StatusOK, api.Ledger{Instance: instance, Attempts: slices.Clone(f.ledgers[instance])})
	}))
	mux.HandleFunc("PUT /ops/providers/{name}", ops(func(w http.ResponseWriter, r *http.Request) {
		var pf api.ProviderFault
		if err := json.NewDecoder(r.Body).Decode(&pf); err != nil || pf.Name != r.PathValue("name") {
			writeTestJSON(w, http.StatusBadRequest, api.Error{Error: "bad_request"})
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.faults[pf.Name] = pf
		writeTestJSON(w, http.StatusOK, pf)
	}))
	return mux
}

func writeTestJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
