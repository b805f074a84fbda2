package shop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/degrade"
	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
	"github.com/bulwarkgo/bulwark/limiter"
	"github.com/bulwarkgo/bulwark/queue"
)

// routes wires the handlers and the Bulwark middleware around them.
func (s *Shop) routes() (http.Handler, error) {
	c := s.cfg
	admin, err := degrade.NewAdminHandler(s.board,
		degrade.WithTokens(map[string]degrade.Principal{
			c.OperatorToken: {Name: "operator", Role: degrade.Operator},
			c.ViewerToken:   {Name: "viewer", Role: degrade.Viewer},
		}),
		degrade.WithMountPrefix("/admin/"))
	if err != nil {
		return nil, err
	}
	perUser, err := limiter.NewMiddleware(s.perUser,
		limiter.KeyOr(limiter.KeyByHeader(api.UserHeader), limiter.KeyByIP()),
		limiter.WithDenyHandler(denyRate("user", "Slow down: too many requests from you.")))
	if err != nil {
		return nil, err
	}
	everyone := func(*http.Request) (string, error) { return "all", nil }
	joins, err := limiter.NewMiddleware(s.joins, everyone,
		limiter.WithDenyHandler(denyRate("global", "The sale is very busy: try to join again in a moment.")))
	if err != nil {
		return nil, err
	}

	line := queue.StatusHandler(s.room)
	sale := degrade.Guard(s.board, FeatureFlashSale, 30*time.Second)

	apiMux := http.NewServeMux()
	apiMux.HandleFunc("GET /api/products", s.products)
	apiMux.HandleFunc("GET /api/products/{sku}", s.productPage)
	apiMux.Handle("POST /api/sale/line", sale(joins.Handler(line)))
	apiMux.Handle("GET /api/sale/line", sale(line))
	apiMux.Handle("DELETE /api/sale/line", line)
	// The body is checked before the token is redeemed, so that a typo
	// does not cost the user their place; the concurrency limit comes
	// first, so that shedding does not either.
	apiMux.Handle("POST /api/sale/orders", sale(s.shed(s.orderBody(queue.RequireAdmission(s.room)(http.HandlerFunc(s.placeOrder))))))
	apiMux.HandleFunc("GET /api/orders/{id}", s.getOrder)
	apiMux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, api.Error{Error: "not_found", Message: "No such endpoint."})
	})

	mux := http.NewServeMux()
	mux.Handle("/api/", degrade.WithRequestAttributes(degrade.HeaderAttributes)(perUser.Handler(apiMux)))
	mux.Handle("/admin/", admin)
	mux.Handle("GET /ops/stats", s.authorized(false, s.serveStats))
	mux.Handle("GET /ops/ledger", s.authorized(false, s.serveLedger))
	mux.Handle("GET /ops/providers", s.authorized(false, s.serveProviders))
	mux.Handle("PUT /ops/providers/{name}", s.authorized(true, s.setProvider))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "instance": c.Instance})
	})
	mux.HandleFunc("GET /{$}", s.index)
	return mux, nil
}

// denyRate answers a request refused by a rate limit.
func denyRate(scope, message string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e := api.Error{Error: "rate_limited", Message: message, Scope: scope}
		if d, ok := limiter.DecisionFromContext(r.Context()); ok {
			e.RetryAfterSeconds = int((d.RetryAfter + time.Second - 1) / time.Second)
		}
		writeError(w, http.StatusTooManyRequests, e)
	})
}

// shed puts the order path behind the adaptive concurrency limit: beyond
// it a request is refused at once with 503 rather than queued, and its
// admission token is not used up, so the user may try again.
func (s *Shop) shed(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := s.adaptive.Acquire(r.Context())
		if err != nil {
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, api.Error{Error: "overloaded",
				Message: "Too many orders at once: your place is kept, try again in a second.", RetryAfterSeconds: 1})
			return
		}
		// The latency of every answer moves the limit; a refusal by
		// another part (a 503 while Redis is down) is no sign that the
		// order path is overloaded.
		defer p.Finish(nil)
		next.ServeHTTP(w, r)
	})
}

type orderKey struct{}

// orderBody reads and checks the body of an order before anything else
// looks at the request.
func (s *Shop) orderBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req api.OrderRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10)).Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, api.Error{Error: "bad_request", Message: "The body must be {\"sku\":...,\"card\":...}."})
			return
		}
		if p, ok := s.product(req.SKU); !ok || !p.FlashSale || req.Card == "" {
			writeError(w, http.StatusBadRequest, api.Error{Error: "bad_request",
				Message: fmt.Sprintf("sku must be one of %v and card must be set.", s.saleSKUs)})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), orderKey{}, req)))
	})
}

func (s *Shop) products(w http.ResponseWriter, r *http.Request) {
	left, err := s.sale.left(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, api.Error{Error: "unavailable", Message: "The catalogue is unavailable."})
		return
	}
	out := api.Products{Products: slices.Clone(s.catalog)}
	for i := range out.Products {
		if p := &out.Products[i]; p.FlashSale {
			p.StockLeft = left[p.SKU]
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Shop) product(sku string) (api.Product, bool) {
	i := slices.IndexFunc(s.catalog, func(p api.Product) bool { return p.SKU == sku })
	if i < 0 {
		return api.Product{}, false
	}
	return s.catalog[i], true
}

// productPage shows a product and, while their features are on, its
// recommendations and reviews; a part that is off is named with its
// message, so the page degrades instead of failing.
func (s *Shop) productPage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	p, ok := s.product(r.PathValue("sku"))
	if !ok {
		writeError(w, http.StatusNotFound, api.Error{Error: "not_found", Message: "No such product."})
		return
	}
	page := api.ProductPage{Product: p}
	if p.FlashSale {
		if left, err := s.sale.left(ctx); err == nil {
			page.Product.StockLeft = left[p.SKU]
		}
	}
	if err := s.board.Check(ctx, FeatureRecommendations); err != nil {
		page.Degraded = append(page.Degraded, degraded(err))
	} else {
		for _, q := range s.catalog {
			if q.SKU != p.SKU && len(page.Recommendations) < 3 {
				page.Recommendations = append(page.Recommendations, q)
			}
		}
	}
	if err := s.board.Check(ctx, FeatureReviews); err != nil {
		page.Degraded = append(page.Degraded, degraded(err))
	} else {
		page.Reviews = []api.Review{
			{User: "小林", Stars: 5, Text: "Arrived before the festival, well packed."},
			{User: "Wang", Stars: 4, Text: "Good value at the sale price."},
		}
	}
	writeJSON(w, http.StatusOK, page)
}

func degraded(err error) api.Degraded {
	var de *degrade.DegradedError
	if errors.As(err, &de) {
		return api.Degraded{Feature: de.Feature, Message: de.Message}
	}
	return api.Degraded{Message: err.Error()}
}

// placeOrder sells one unit to an admitted user. The unit is taken and the
// order created as pending in one atomic step, so nothing is oversold;
// then the payment goes through the failover. A payment no provider could
// take is not lost: the order is accepted as pending and its payment waits
// in the buffer.
func (s *Shop) placeOrder(w http.ResponseWriter, r *http.Request) {
	req := r.Context().Value(orderKey{}).(api.OrderRequest)
	ctx := r.Context()
	now := time.Now()
	o := order{Order: api.Order{ID: s.newOrderID(), User: r.Header.Get(api.UserHeader), SKU: req.SKU,
		Status: api.StatusPending, Created: now, Updated: now}, Card: req.Card}
	if err := s.sale.reserve(ctx, o); err != nil {
		if errors.Is(err, errSoldOut) {
			writeError(w, http.StatusConflict, api.Error{Error: "sold_out", Message: "Sold out, sorry."})
			return
		}
		s.cfg.Logf("order %s: %v", o.ID, err)
		writeError(w, http.StatusServiceUnavailable, api.Error{Error: "unavailable", Message: "The shop cannot sell right now."})
		return
	}

	// From here on the unit is held by the order: the order is settled
	// even if the client goes away.
	payCtx, cancel := context.WithTimeout(ctx, s.cfg.PaymentTimeout)
	res, err := s.payOrder(payCtx, o)
	cancel()
	declined := errors.Is(err, errDeclined)
	s.latency.Record(time.Since(now))
	if declined {
		s.errRate.Record(nil) // the provider worked: the card said no
	} else {
		s.errRate.Record(err) // a caller who went away is not counted
	}

	bg, cancelBg := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancelBg()
	switch {
	case err == nil:
		if _, err := s.sale.pay(bg, o.ID, res.Provider); err != nil {
			s.reconcile(bg, o, err)
		}
		writeJSON(w, http.StatusCreated, api.OrderReply{Order: o.ID, Status: api.StatusPaid, Provider: res.Provider})
	case declined:
		if _, err := s.sale.decline(bg, o.ID); err != nil {
			s.reconcile(bg, o, err)
		}
		writeError(w, http.StatusPaymentRequired, api.Error{Error: "declined", Message: "Your card was declined.", Order: o.ID})
	default:
		// No provider took the payment: every breaker was open, every
		// provider failed, or the time ran out. Hold it in the buffer.
		if _, err := s.buffer.Enqueue(bg, o.ID, []byte(o.ID)); err != nil {
			if _, cerr := s.sale.cancel(bg, o.ID); cerr != nil {
				s.cfg.Logf("order %s could be neither held (%v) nor cancelled (%v): it stays pending", o.ID, err, cerr)
			}
			writeError(w, http.StatusServiceUnavailable, api.Error{Error: "payment_unavailable",
				Message: "Payment is unavailable and the order could not be kept; nothing was charged."})
			return
		}
		writeJSON(w, http.StatusAccepted, api.OrderReply{Order: o.ID, Status: api.StatusPending,
			Message: "Order accepted: payment will complete as soon as the payment service recovers."})
	}
}

// reconcile hands an order whose provider answered but whose answer could
// not be recorded to the buffer: its handler asks the providers what they
// did before paying anything, and records that.
func (s *Shop) reconcile(ctx context.Context, o order, cause error) {
	if _, err := s.buffer.Enqueue(ctx, o.ID, []byte(o.ID)); err != nil {
		s.cfg.Logf("order %s: the payment's outcome could not be recorded (%v) nor queued for reconciliation (%v): it stays pending", o.ID, cause, err)
	}
}

// payBuffered is the buffer's handler: it settles a pending order. It
// first asks the providers whether an earlier attempt already charged or
// declined the order (an outcome that was not recorded, or a delivery
// repeated after a crash), so that no payment is taken twice and no
// declined card is tried again. A breaker's refusal defers the message
// (WithDeferIf); a provider failure counts as an attempt and is retried
// after a backoff.
func (s *Shop) payBuffered(ctx context.Context, m queue.Message) error {
	id := string(m.Body)
	o, ok, err := s.sale.get(ctx, id)
	if err != nil {
		return err
	}
	if !ok || o.Status != api.StatusPending {
		return nil // settled by an earlier delivery, or cancelled
	}
	prov, outcome, err := s.gw.lookup(ctx, id)
	if err != nil {
		return err
	}
	switch outcome {
	case api.OutcomeCharged:
		_, err = s.sale.pay(ctx, id, prov)
		return err
	case api.OutcomeDeclined:
		_, err = s.sale.decline(ctx, id)
		return err
	}
	res, err := s.payOrder(ctx, o)
	switch {
	case err == nil:
		_, err = s.sale.pay(ctx, id, res.Provider)
	case errors.Is(err, errDeclined):
		_, err = s.sale.decline(ctx, id)
	}
	return err
}

// payOrder takes the payment of o through the failover: each provider
// is asked in turn with the order ID as its idempotency key.
func (s *Shop) payOrder(ctx context.Context, o order) (breaker.Result[string], error) {
	return s.pay.Execute(ctx, func(ctx context.Context, name string) (string, error) {
		return s.provs[name].charge(ctx, o.ID, o.Card)
	})
}

// newOrderID returns an order ID: the instance, a sequence number to read
// by, and random bits so that IDs cannot be guessed.
func (s *Shop) newOrderID() string {
	return fmt.Sprintf("%s-%d-%s", s.cfg.Instance, s.orderSeq.Add(1), randomHex(4))
}

// getOrder shows an order to the user who placed it; to anyone else it
// does not exist.
func (s *Shop) getOrder(w http.ResponseWriter, r *http.Request) {
	o, ok, err := s.sale.get(r.Context(), r.PathValue("id"))
	switch {
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, api.Error{Error: "unavailable", Message: "Orders are unavailable."})
	case !ok || o.User != r.Header.Get(api.UserHeader):
		writeError(w, http.StatusNotFound, api.Error{Error: "not_found", Message: "No such order."})
	default:
		writeJSON(w, http.StatusOK, o.Order)
	}
}

// authorized serves h to holders of the operator token, and of the viewer
// token too unless operatorOnly.
func (s *Shop) authorized(operatorOnly bool, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if checkToken(r, s.cfg.OperatorToken) || (!operatorOnly && checkToken(r, s.cfg.ViewerToken)) {
			h(w, r)
			return
		}
		writeError(w, http.StatusUnauthorized, api.Error{Error: "unauthorized", Message: "An operator bearer token is required."})
	})
}

// Stats reports what this instance sees.
func (s *Shop) Stats(ctx context.Context) (api.Stats, error) {
	st := api.Stats{Instance: s.cfg.Instance, Breakers: map[string]string{}, ConcurrencyLimit: s.adaptive.Limit()}
	rs, err := s.room.Stats(ctx)
	if err != nil {
		return st, fmt.Errorf("room: %w", err)
	}
	st.Room = api.RoomStats{Length: rs.Length, Active: rs.Active, Outflow: rs.Outflow, ETASeconds: rs.ETA.Seconds()}
	if st.Stock, err = s.sale.left(ctx); err != nil {
		return st, fmt.Errorf("stock: %w", err)
	}
	if st.Orders, st.PaidBy, err = s.sale.counts(ctx); err != nil {
		return st, fmt.Errorf("orders: %w", err)
	}
	bs, err := s.buffer.Stats(ctx)
	if err != nil {
		return st, fmt.Errorf("buffer: %w", err)
	}
	st.Buffered = bs.Depth + bs.Dead
	for _, name := range s.pay.Providers() {
		st.Breakers[name] = s.pay.Breaker(name).State().String()
	}
	st.Degraded = []string{}
	for _, f := range s.board.Features() {
		if f.State.Mode == degrade.Off {
			st.Degraded = append(st.Degraded, f.Name)
		}
	}
	return st, nil
}

func (s *Shop) serveStats(w http.ResponseWriter, r *http.Request) {
	st, err := s.Stats(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, api.Error{Error: "unavailable", Message: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Shop) serveLedger(w http.ResponseWriter, r *http.Request) {
	l, err := s.gw.ledger(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, api.Error{Error: "unavailable", Message: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, l)
}

func (s *Shop) serveProviders(w http.ResponseWriter, r *http.Request) {
	out := make([]api.ProviderFault, 0, len(s.provs))
	for _, name := range s.pay.Providers() {
		f, err := s.gw.fault(r.Context(), name)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, api.Error{Error: "unavailable", Message: err.Error()})
			return
		}
		out = append(out, f)
	}
	writeJSON(w, http.StatusOK, out)
}

// setProvider changes how a simulated provider behaves; with Redis, for
// every instance.
func (s *Shop) setProvider(w http.ResponseWriter, r *http.Request) {
	var f api.ProviderFault
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10)).Decode(&f); err != nil {
		writeError(w, http.StatusBadRequest, api.Error{Error: "bad_request", Message: err.Error()})
		return
	}
	f.Name = r.PathValue("name")
	switch err := s.SetProvider(r.Context(), f); {
	case errors.Is(err, errNoProvider):
		writeError(w, http.StatusNotFound, api.Error{Error: "not_found", Message: err.Error()})
	case err != nil:
		writeError(w, http.StatusBadRequest, api.Error{Error: "bad_request", Message: err.Error()})
	default:
		s.cfg.Logf("provider %s: fail %.0f%%, hang %.0f%%, latency %dms", f.Name, 100*f.FailRate, 100*f.HangRate, f.LatencyMS)
		writeJSON(w, http.StatusOK, f)
	}
}

var errNoProvider = errors.New("no such provider")

// SetProvider changes how a simulated provider behaves; with Redis, for
// every instance.
func (s *Shop) SetProvider(ctx context.Context, f api.ProviderFault) error {
	if _, ok := s.provs[f.Name]; !ok {
		return fmt.Errorf("%w: %q", errNoProvider, f.Name)
	}
	return s.gw.setFault(ctx, f)
}

func (s *Shop) index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, `Bulwark flash-sale shop (%s)

  GET    /api/products
  GET    /api/products/{sku}          recommendations and reviews degrade
  POST   /api/sale/line               join the line: a ticket, your number and place
  GET    /api/sale/line?ticket=ID     poll: your place, then an admission token
  POST   /api/sale/orders             {"sku":"mooncake-box","card":"%s"} with Bulwark-Admission: TOKEN
  GET    /api/orders/{id}
  /admin/                             the switch console (bearer token printed at start-up)
  GET    /ops/stats, /ops/ledger, /ops/providers; PUT /ops/providers/{name} (bearer token)
  GET    /metrics

Send X-User-Id: you on every /api request.
`, s.cfg.Instance, api.CardOK)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, e api.Error) {
	if e.RetryAfterSeconds > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.RetryAfterSeconds))
	}
	writeJSON(w, status, e)
}
