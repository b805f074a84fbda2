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
	apiMux.Handle("POST /api/sale/orders", sale(s.shed(queue.RequireAdmission(s.room)(http.HandlerFunc(s.placeOrder)))))
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
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		if rec.status >= 500 {
			p.Dropped()
		} else {
			p.Finish(nil)
		}
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (s *Shop) products(w http.ResponseWriter, r *http.Request) {
	left, err := s.stock.left(r.Context())
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
		if left, err := s.stock.left(ctx); err == nil {
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

// placeOrder sells one unit to an admitted user. The unit is taken first,
// atomically, so nothing is oversold; then the payment goes through the
// failover. A payment no provider could take is not lost: the order is
// accepted as pending and its payment waits in the buffer.
func (s *Shop) placeOrder(w http.ResponseWriter, r *http.Request) {
	var req api.OrderRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, api.Error{Error: "bad_request", Message: "The body must be {\"sku\":...,\"card\":...}."})
		return
	}
	p, ok := s.product(req.SKU)
	if !ok || !p.FlashSale || req.Card == "" {
		writeError(w, http.StatusBadRequest, api.Error{Error: "bad_request",
			Message: fmt.Sprintf("sku must be one of %v and card must be set.", s.saleSKUs)})
		return
	}
	ctx := r.Context()
	if err := s.stock.take(ctx, req.SKU); err != nil {
		if errors.Is(err, errSoldOut) {
			writeError(w, http.StatusConflict, api.Error{Error: "sold_out", Message: "Sold out, sorry."})
			return
		}
		writeError(w, http.StatusServiceUnavailable, api.Error{Error: "unavailable", Message: "The shop cannot sell right now."})
		return
	}

	// From here on the unit is taken: the order is settled even if the
	// client goes away.
	now := time.Now()
	o := order{Order: api.Order{ID: s.newOrderID(), User: r.Header.Get(api.UserHeader), SKU: req.SKU, Created: now, Updated: now}, Card: req.Card}
	payCtx, cancel := context.WithTimeout(ctx, s.cfg.PaymentTimeout)
	res, err := s.pay.Execute(payCtx, func(ctx context.Context, name string) (string, error) {
		return s.provs[name].charge(ctx, o.ID, o.Card)
	})
	cancel()
	s.latency.Record(time.Since(now))
	s.errRate.Observe(err != nil && !errors.Is(err, errDeclined))

	bg, cancelBg := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancelBg()
	switch {
	case err == nil:
		o.Status, o.Provider = api.StatusPaid, res.Provider
		if err := s.orders.create(bg, o); err != nil {
			s.cfg.Logf("order %s paid by %s but not recorded: %v", o.ID, o.Provider, err)
			writeError(w, http.StatusInternalServerError, api.Error{Error: "internal", Message: "Paid, but the order could not be recorded; support will contact you.", Order: o.ID})
			return
		}
		writeJSON(w, http.StatusCreated, api.OrderReply{Order: o.ID, Status: o.Status, Provider: o.Provider})
	case errors.Is(err, errDeclined):
		o.Status = api.StatusDeclined
		err := errors.Join(s.orders.create(bg, o), s.stock.giveBack(bg, o.SKU))
		if err != nil {
			s.cfg.Logf("declined order %s: %v", o.ID, err)
		}
		writeError(w, http.StatusPaymentRequired, api.Error{Error: "declined", Message: "Your card was declined.", Order: o.ID})
	default:
		// No provider took the payment: every breaker was open, every
		// provider failed, or the time ran out. Hold it in the buffer.
		o.Status = api.StatusPending
		if err := s.hold(bg, o); err != nil {
			s.cfg.Logf("order %s could not be held: %v", o.ID, err)
			writeError(w, http.StatusServiceUnavailable, api.Error{Error: "payment_unavailable",
				Message: "Payment is unavailable and the order could not be kept; nothing was charged."})
			return
		}
		writeJSON(w, http.StatusAccepted, api.OrderReply{Order: o.ID, Status: o.Status,
			Message: "Order accepted: payment will complete as soon as the payment service recovers."})
	}
}

// hold records a pending order and puts its payment in the buffer; on
// failure it undoes both and gives the unit back.
func (s *Shop) hold(ctx context.Context, o order) error {
	if err := s.orders.create(ctx, o); err != nil {
		return errors.Join(err, s.stock.giveBack(ctx, o.SKU))
	}
	if _, err := s.buffer.Enqueue(ctx, o.ID, []byte(o.ID)); err != nil {
		return errors.Join(err, s.orders.remove(ctx, o.ID), s.stock.giveBack(ctx, o.SKU))
	}
	return nil
}

// payBuffered is the buffer's handler: it takes the payment of a pending
// order. A breaker's refusal defers the message (WithDeferIf); a provider
// failure counts as an attempt and is retried after a backoff.
func (s *Shop) payBuffered(ctx context.Context, m queue.Message) error {
	id := string(m.Body)
	o, ok, err := s.orders.get(ctx, id)
	if err != nil {
		return err
	}
	if !ok || o.Status != api.StatusPending {
		return nil // settled by an earlier delivery, or from another sale
	}
	res, err := s.pay.Execute(ctx, func(ctx context.Context, name string) (string, error) {
		return s.provs[name].charge(ctx, o.ID, o.Card)
	})
	switch {
	case err == nil:
		_, err = s.orders.transition(ctx, id, api.StatusPending, api.StatusPaid, res.Provider)
		return err
	case errors.Is(err, errDeclined):
		moved, err := s.orders.transition(ctx, id, api.StatusPending, api.StatusDeclined, "")
		if err == nil && moved {
			err = s.stock.giveBack(ctx, o.SKU)
		}
		return err
	default:
		return err
	}
}

func (s *Shop) newOrderID() string {
	return fmt.Sprintf("%s-%s-%d", s.cfg.Instance, s.orderTag, s.orderSeq.Add(1))
}

func (s *Shop) getOrder(w http.ResponseWriter, r *http.Request) {
	o, ok, err := s.orders.get(r.Context(), r.PathValue("id"))
	switch {
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, api.Error{Error: "unavailable", Message: "Orders are unavailable."})
	case !ok:
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
	if st.Stock, err = s.stock.left(ctx); err != nil {
		return st, fmt.Errorf("stock: %w", err)
	}
	if st.Orders, st.PaidBy, err = s.orders.counts(ctx); err != nil {
		return st, fmt.Errorf("orders: %w", err)
	}
	bs, err := s.buffer.Stats(ctx)
	if err != nil {
		return st, fmt.Errorf("buffer: %w", err)
	}
	st.Buffered = bs.Depth
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
	writeJSON(w, http.StatusOK, api.Ledger{Instance: s.cfg.Instance, Attempts: s.ledger.snapshot()})
}

func (s *Shop) serveProviders(w http.ResponseWriter, r *http.Request) {
	out := make([]api.ProviderFault, 0, len(s.provs))
	for _, name := range s.pay.Providers() {
		out = append(out, s.provs[name].currentFault())
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Shop) setProvider(w http.ResponseWriter, r *http.Request) {
	p, ok := s.provs[r.PathValue("name")]
	if !ok {
		writeError(w, http.StatusNotFound, api.Error{Error: "not_found", Message: "No such provider."})
		return
	}
	var f api.ProviderFault
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10)).Decode(&f); err != nil {
		writeError(w, http.StatusBadRequest, api.Error{Error: "bad_request", Message: err.Error()})
		return
	}
	if err := p.setFault(f); err != nil {
		writeError(w, http.StatusBadRequest, api.Error{Error: "bad_request", Message: err.Error()})
		return
	}
	s.cfg.Logf("provider %s: fail %.0f%%, hang %.0f%%, latency %dms", p.name, 100*f.FailRate, 100*f.HangRate, f.LatencyMS)
	writeJSON(w, http.StatusOK, p.currentFault())
}

// SetProvider changes how a simulated provider behaves.
func (s *Shop) SetProvider(f api.ProviderFault) error {
	p, ok := s.provs[f.Name]
	if !ok {
		return fmt.Errorf("no provider %q", f.Name)
	}
	return p.setFault(f)
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
