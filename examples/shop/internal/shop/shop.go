// Package shop is the flash-sale shop of the demo: a net/http service that
// puts every Bulwark package to work.
//
//   - limiter: a per-user limit on the whole API, a global limit on joining
//     the sale's line (both in Redis across a fleet), and an adaptive
//     concurrency limit on the order path.
//   - queue: the waiting room in front of the sale (ticket mode, with
//     signed admission tokens), and a buffer that holds orders whose payment
//     cannot be attempted until a provider recovers.
//   - breaker: payment through a failover from wxpay to alipay, each behind
//     its own breaker (shared across the fleet); a declined card is final.
//   - degrade: recommendations and reviews are optional; recommendations
//     switch off by themselves while the order path is slow or failing; an
//     operator flips any of them from the console at /admin/.
//
// In memory by default; with Config.Redis every instance shares the line,
// the stock, the orders, the breakers, the switches and the buffer.
package shop

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/degrade"
	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
	"github.com/bulwarkgo/bulwark/limiter"
	"github.com/bulwarkgo/bulwark/queue"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/metric"
)

// Feature names.
const (
	FeatureRecommendations = "recommendations"
	FeatureReviews         = "reviews"
	FeatureFlashSale       = "flash-sale"
)

// Provider names, in order of preference.
const (
	Primary = "wxpay"
	Backup  = "alipay"
)

// Config configures a shop instance. The zero value of each field but
// Stock gives the default stated beside it.
type Config struct {
	// Instance names this instance in stats, logs and order IDs, and
	// names its payment buffer's consumer: instances sharing Redis must
	// have distinct names ("shop").
	Instance string
	// Redis, if set, holds everything the fleet shares. Nil keeps it all
	// in this process.
	Redis redis.UniversalClient
	// Prefix of every Redis key ("bulwark-shop:"), without braces, glob
	// characters or spaces.
	Prefix string
	// Reset starts a new sale in Redis: the stock is set to Stock, and the
	// orders and the payment providers' records of an earlier sale are
	// deleted. Without it an instance joins the sale under way and sets
	// the stock only where none is set.
	Reset bool

	// Stock is the units of each flash-sale item; required.
	Stock map[string]int64
	// Rate is the waiting room's admissions per second (40).
	Rate float64
	// MaxLine is the most users in line (15 seconds of Rate), and MaxWait
	// the longest estimated wait a user is let into the line for (20s).
	MaxLine int
	MaxWait time.Duration

	// OpenTimeout is how long a payment breaker stays open before it lets
	// a probe through (2s); AttemptTimeout bounds each provider call
	// (250ms); PaymentTimeout a whole payment (2s).
	OpenTimeout    time.Duration
	AttemptTimeout time.Duration
	PaymentTimeout time.Duration
	// ProviderLatency is the simulated providers' healthy answer time (20ms).
	ProviderLatency time.Duration

	// SignalWindow is the window over which the order path's latency and
	// error rate are measured (3s); a trigger fires after TriggerFor
	// (1s) above its threshold and recovers after TriggerRecoverFor (2s)
	// below it.
	SignalWindow      time.Duration
	TriggerFor        time.Duration
	TriggerRecoverFor time.Duration

	// OperatorToken and ViewerToken are the bearer tokens of the console
	// and of /ops (the viewer may only look); required and distinct.
	OperatorToken string
	ViewerToken   string

	// MeterProvider receives the metrics of every component (the global
	// provider if nil).
	MeterProvider metric.MeterProvider
	// wrapSale, in tests, wraps the sale's store to inject failures.
	wrapSale func(sale) sale

	// Logf reports what the shop does by itself: breakers changing state,
	// features switching (discarded if nil). Each line starts with the
	// instance's name.
	Logf func(format string, args ...any)
}

// Shop is one instance of the shop.
type Shop struct {
	cfg      Config
	catalog  []api.Product
	saleSKUs []string

	sale     sale
	gw       gateway
	provs    map[string]*provider
	pay      *breaker.Failover[string]
	fleet    *breaker.Fleet
	room     *queue.Room
	buffer   *queue.Buffer
	perUser  limiter.Limiter
	joins    limiter.Limiter
	adaptive *limiter.Adaptive
	board    *degrade.Switchboard
	latency  *degrade.Latency
	errRate  *degrade.ErrorRate
	handler  http.Handler
	orderSeq atomic.Uint64

	stopBuffer  context.CancelFunc
	bufferDone  chan struct{}
	unsub       func()
	stopJanitor func()
	closeOnce   sync.Once
}

// The catalogue: three flash-sale items and a few regular ones.
var catalogue = []api.Product{
	{SKU: "mooncake-box", Name: "Mooncake gift box", PriceCents: 9900, FlashSale: true},
	{SKU: "rice-cooker", Name: "Rice cooker 3L", PriceCents: 19900, FlashSale: true},
	{SKU: "tea-set", Name: "Celadon tea set", PriceCents: 15900, FlashSale: true},
	{SKU: "chopsticks", Name: "Bamboo chopsticks (10 pairs)", PriceCents: 1500, StockLeft: -1},
	{SKU: "thermos", Name: "Thermos 500ml", PriceCents: 6900, StockLeft: -1},
	{SKU: "umbrella", Name: "Folding umbrella", PriceCents: 4900, StockLeft: -1},
}

// SaleSKUs lists the flash-sale items.
func SaleSKUs() []string {
	var skus []string
	for _, p := range catalogue {
		if p.FlashSale {
			skus = append(skus, p.SKU)
		}
	}
	return skus
}

func (c *Config) setDefaults() error {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.Instance == "" {
		c.Instance = "shop"
	}
	if c.Prefix == "" {
		c.Prefix = "bulwark-shop:"
	}
	if c.Rate == 0 {
		c.Rate = 40
	}
	if c.MaxLine == 0 {
		c.MaxLine = max(int(15*c.Rate), 10)
	}
	def(&c.MaxWait, 20*time.Second)
	def(&c.OpenTimeout, 2*time.Second)
	def(&c.AttemptTimeout, 250*time.Millisecond)
	def(&c.PaymentTimeout, 2*time.Second)
	def(&c.ProviderLatency, 20*time.Millisecond)
	def(&c.SignalWindow, 3*time.Second)
	def(&c.TriggerFor, time.Second)
	def(&c.TriggerRecoverFor, 2*time.Second)
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	} else {
		logf, name := c.Logf, c.Instance
		c.Logf = func(format string, args ...any) { logf("%s: "+format, append([]any{name}, args...)...) }
	}
	switch {
	case strings.ContainsAny(c.Prefix, prefixForbidden):
		return fmt.Errorf("shop: Prefix %q: must not contain any of %q", c.Prefix, prefixForbidden)
	case c.Rate < 0:
		return fmt.Errorf("shop: Rate %v: must be positive", c.Rate)
	case c.MaxLine < 0:
		return fmt.Errorf("shop: MaxLine %d: must be positive", c.MaxLine)
	case c.OperatorToken == "" || c.ViewerToken == "" || c.OperatorToken == c.ViewerToken:
		return errors.New("shop: OperatorToken and ViewerToken: both required, and distinct")
	case c.AttemptTimeout >= c.PaymentTimeout:
		return fmt.Errorf("shop: AttemptTimeout %v: must be shorter than PaymentTimeout %v", c.AttemptTimeout, c.PaymentTimeout)
	}
	for _, sku := range SaleSKUs() {
		if n, ok := c.Stock[sku]; !ok || n < 0 {
			return fmt.Errorf("shop: Stock[%q]: required, at least 0", sku)
		}
	}
	for sku := range c.Stock {
		if !slices.Contains(SaleSKUs(), sku) {
			return fmt.Errorf("shop: Stock[%q]: not a flash-sale item (%v)", sku, SaleSKUs())
		}
	}
	return nil
}

// New builds a shop instance and starts its payment buffer; Close stops it.
func New(ctx context.Context, cfg Config) (*Shop, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Shop{
		cfg:      cfg,
		catalog:  slices.Clone(catalogue),
		saleSKUs: SaleSKUs(),
	}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	mp := cfg.MeterProvider
	if err := s.buildSale(ctx); err != nil {
		return nil, err
	}
	if err := s.buildPayments(ctx, mp); err != nil {
		return nil, err
	}
	if err := s.buildRoom(ctx, mp); err != nil {
		return nil, err
	}
	if err := s.buildLimits(mp); err != nil {
		return nil, err
	}
	if err := s.buildSwitches(mp); err != nil {
		return nil, err
	}
	if err := s.buildBuffer(ctx, mp); err != nil {
		return nil, err
	}
	h, err := s.routes()
	if err != nil {
		return nil, err
	}
	s.handler = h
	ok = true
	return s, nil
}

// prefixForbidden are the characters a key prefix must not hold: the hash
// tag's braces, and what a SCAN pattern would read as a glob.
const prefixForbidden = "{}*?[]\\ "

func (s *Shop) buildSale(ctx context.Context) error {
	if err := s.buildSaleStores(ctx); err != nil {
		return err
	}
	if s.cfg.wrapSale != nil {
		s.sale = s.cfg.wrapSale(s.sale)
	}
	return nil
}

func (s *Shop) buildSaleStores(ctx context.Context) error {
	c := s.cfg
	if c.Redis == nil {
		s.sale = newMemorySale(c.Stock)
		s.gw = newMemoryGateway(c.Instance, c.ProviderLatency)
		return nil
	}
	rs := &redisSale{client: c.Redis, prefix: c.Prefix + "{sale}:"}
	gw := &redisGateway{client: c.Redis, prefix: c.Prefix + "{gateway}:", latency: c.ProviderLatency}
	s.sale, s.gw = rs, gw
	if c.Reset {
		if err := rs.reset(ctx, c.Stock); err != nil {
			return fmt.Errorf("shop: resetting the sale: %w", err)
		}
		if err := gw.reset(ctx); err != nil {
			return fmt.Errorf("shop: resetting the payment providers: %w", err)
		}
		return nil
	}
	if err := rs.initIfAbsent(ctx, c.Stock); err != nil {
		return fmt.Errorf("shop: setting the stock: %w", err)
	}
	return nil
}

func (s *Shop) buildPayments(ctx context.Context, mp metric.MeterProvider) error {
	c := s.cfg
	s.provs = map[string]*provider{
		Primary: {name: Primary, gw: s.gw, rng: mrand.New(mrand.NewPCG(1, mrand.Uint64()))},
		Backup:  {name: Backup, gw: s.gw, rng: mrand.New(mrand.NewPCG(2, mrand.Uint64()))},
	}
	popts := []breaker.Option{
		// Five failures in a row, or half of the last 20 calls within
		// 10 seconds, open a provider's breaker.
		breaker.WithTripPolicy(breaker.AnyOf(
			breaker.ConsecutiveFailures(5),
			breaker.FailureRate(0.5, 20, 10*time.Second))),
		breaker.WithOpenTimeout(c.OpenTimeout),
		breaker.WithMeterProvider(mp),
		breaker.WithListener(func(ch breaker.StateChange) {
			c.Logf("breaker %s: %v -> %v", ch.Name, ch.From, ch.To)
		}),
	}
	if c.Redis != nil {
		f, err := breaker.NewFleet(ctx, c.Redis, breaker.WithFleetPrefix(c.Prefix+"breaker:"))
		if err != nil {
			return fmt.Errorf("shop: breaker fleet: %w", err)
		}
		s.fleet = f
		popts = append(popts, breaker.WithFleet(f))
	}
	opts := []breaker.FailoverOption{
		breaker.WithAttemptTimeout(c.AttemptTimeout),
		breaker.WithProviderOptions(popts...),
	}
	if err := breaker.ValidateFailoverOptions(opts...); err != nil {
		return fmt.Errorf("shop: payments: %w", err)
	}
	s.pay = breaker.NewFailover("payments",
		[]breaker.Provider[string]{{Name: Primary}, {Name: Backup}}, opts...)
	return nil
}

func (s *Shop) buildRoom(ctx context.Context, mp metric.MeterProvider) error {
	c := s.cfg
	secret := []byte(nil)
	var guard queue.ReplayGuard
	if c.Redis != nil {
		// Every instance must sign and check admission tokens with the
		// same key: the first to start makes it, the others read it.
		k := c.Prefix + "token-key"
		if err := c.Redis.SetNX(ctx, k, randomHex(32), 0).Err(); err != nil {
			return fmt.Errorf("shop: token key: %w", err)
		}
		v, err := c.Redis.Get(ctx, k).Result()
		if err != nil {
			return fmt.Errorf("shop: token key: %w", err)
		}
		secret = []byte(v)
		g, err := queue.NewRedisReplayGuard(c.Redis, c.Prefix+"used-tokens:")
		if err != nil {
			return err
		}
		guard = g
	} else {
		secret = []byte(randomHex(32))
		g, err := queue.NewMemoryReplayGuard(1 << 20)
		if err != nil {
			return err
		}
		guard = g
	}
	signer, err := queue.NewSigner(secret, queue.WithReplayGuard(guard))
	if err != nil {
		return fmt.Errorf("shop: signer: %w", err)
	}
	opts := []queue.RoomOption{
		queue.WithSigner(signer),
		queue.WithMaxLength(c.MaxLine),
		queue.WithMaxWait(c.MaxWait),
		// Clients poll every second or two; a ticket not polled for 10
		// seconds has been abandoned. An admission lasts as long as its
		// token (two minutes, the default of both).
		queue.WithTicketTTL(10 * time.Second),
		queue.WithPollInterval(time.Second, 2*time.Second),
		queue.WithMeterProvider(mp),
	}
	if c.Redis != nil {
		opts = append(opts, queue.WithRedis(c.Redis), queue.WithKeyPrefix(c.Prefix+"room:"))
	}
	s.room, err = queue.NewRoom("flash-sale", c.Rate, opts...)
	if err != nil {
		return fmt.Errorf("shop: waiting room: %w", err)
	}
	return nil
}

func (s *Shop) buildLimits(mp metric.MeterProvider) error {
	c := s.cfg
	// Each user may make 5 requests a second, in bursts of 10: plenty to
	// browse and poll, too few to hammer the line. Joining the line is
	// limited for everyone together to 8 times the room's rate, in bursts
	// of 2 seconds of the room's rate: a rush beyond that waits a second
	// before it may even join.
	user := limiter.PerSecond(5, 10)
	joins := limiter.PerSecond(max(int(8*c.Rate), 1), max(int(2*c.Rate), 1))
	var err error
	if c.Redis == nil {
		perUser, err := limiter.NewLocal(user, limiter.WithName("per-user"), limiter.WithMeterProvider(mp))
		if err != nil {
			return err
		}
		// Users who went away leave buckets behind: sweep them.
		s.perUser, s.stopJanitor = perUser, perUser.StartJanitor(10*time.Second)
		if s.joins, err = limiter.NewLocal(joins, limiter.WithName("sale-joins"), limiter.WithMeterProvider(mp)); err != nil {
			return err
		}
	} else {
		// While Redis is down each instance limits on its own, at half
		// the limit (two instances).
		if s.perUser, err = limiter.NewRedis(c.Redis, user, limiter.WithName("per-user"), limiter.WithMeterProvider(mp),
			limiter.WithPrefix(c.Prefix+"limit:"), limiter.WithOutagePolicy(limiter.FallbackLocal(0.5))); err != nil {
			return err
		}
		if s.joins, err = limiter.NewRedis(c.Redis, joins, limiter.WithName("sale-joins"), limiter.WithMeterProvider(mp),
			limiter.WithPrefix(c.Prefix+"limit:"), limiter.WithOutagePolicy(limiter.FallbackLocal(0.5))); err != nil {
			return err
		}
	}
	s.adaptive, err = limiter.NewAdaptive(limiter.WithName("orders"), limiter.WithMeterProvider(mp),
		limiter.WithInitialLimit(20), limiter.WithMinLimit(4), limiter.WithMaxLimit(200))
	return err
}

func (s *Shop) buildSwitches(mp metric.MeterProvider) error {
	c := s.cfg
	var err error
	if s.latency, err = degrade.NewLatency(c.SignalWindow, 0.99, 10); err != nil {
		return err
	}
	if s.errRate, err = degrade.NewErrorRate(c.SignalWindow, 10); err != nil {
		return err
	}
	features := []degrade.Feature{
		{Name: FeatureRecommendations, Level: degrade.Optional, Description: "Products bought together, on every product page",
			Messages: map[string]string{"": "Recommendations are resting during the sale.", "zh": "大促期间暂停推荐"}},
		{Name: FeatureReviews, Level: degrade.Optional, Description: "Customer reviews on product pages",
			Messages: map[string]string{"": "Reviews will be back shortly.", "zh": "评价稍后恢复"}},
		{Name: FeatureFlashSale, Level: degrade.Core, Description: "The flash sale: line, admission and orders"},
	}
	opts := []degrade.Option{
		degrade.WithMeterProvider(mp),
		degrade.WithEvaluationInterval(100 * time.Millisecond),
		// Recommendations cost the database what the orders need: they
		// go off while the order path is slow or failing.
		degrade.WithTrigger(degrade.Trigger{Name: "orders-slow", Signal: s.latency,
			Above: 0.2, For: c.TriggerFor, Below: 0.1, RecoverFor: c.TriggerRecoverFor,
			Off: []string{FeatureRecommendations}}),
		degrade.WithTrigger(degrade.Trigger{Name: "orders-failing", Signal: s.errRate,
			Above: 0.2, For: c.TriggerFor, Below: 0.05, RecoverFor: c.TriggerRecoverFor,
			Off: []string{FeatureRecommendations}}),
	}
	if c.Redis != nil {
		st, err := degrade.NewRedisStore(c.Redis, degrade.WithRedisPrefix(c.Prefix+"switches:"))
		if err != nil {
			return err
		}
		opts = append(opts, degrade.WithStore(st))
	}
	if s.board, err = degrade.New(features, opts...); err != nil {
		return err
	}
	s.unsub = s.board.Subscribe(func(e degrade.Event) {
		c.Logf("feature %s: %s (%s%s)", e.Feature, e.After.State.Mode, e.After.Source, triggerNote(e.After.Trigger))
	})
	return nil
}

func triggerNote(t string) string {
	if t == "" {
		return ""
	}
	return " " + t
}

func (s *Shop) buildBuffer(ctx context.Context, mp metric.MeterProvider) error {
	c := s.cfg
	var st queue.Store
	var err error
	if c.Redis == nil {
		st, err = queue.NewMemoryStore("payments")
	} else {
		st, err = queue.NewRedisStore(c.Redis, "payments", queue.WithKeyPrefix(c.Prefix+"buffer:"))
	}
	if err != nil {
		return err
	}
	s.buffer, err = queue.NewBuffer(st,
		queue.WithConsumer(c.Instance),
		queue.WithConcurrency(8),
		queue.WithMaxAttempts(50),
		queue.WithBackoff(200*time.Millisecond, 2*time.Second),
		queue.WithHandlerTimeout(c.PaymentTimeout),
		queue.WithBufferPollInterval(100*time.Millisecond),
		// Hold the orders while no provider's breaker would let a call
		// through, and do not count a refusal as a failed attempt.
		queue.WithGate(queue.GateFunc(s.canPay)),
		queue.WithDeferIf(func(err error) bool { return errors.Is(err, breaker.ErrOpen) }),
		queue.WithMeterProvider(mp),
	)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stopBuffer = cancel
	s.bufferDone = make(chan struct{})
	go func() {
		defer close(s.bufferDone)
		if err := s.buffer.Run(runCtx, s.payBuffered); err != nil && !errors.Is(err, context.Canceled) {
			c.Logf("payment buffer stopped: %v", err)
		}
	}()
	return nil
}

// canPay reports whether some provider's breaker would let a call through.
func (s *Shop) canPay() bool {
	for _, name := range s.pay.Providers() {
		if s.pay.Breaker(name).Ready() {
			return true
		}
	}
	return false
}

// OpenTimeout is how long a payment breaker stays open.
func (s *Shop) OpenTimeout() time.Duration { return s.cfg.OpenTimeout }

// Handler is the shop's HTTP handler.
func (s *Shop) Handler() http.Handler { return s.handler }

// Close stops the buffer and the background work of every component. It
// does not close Config.Redis.
func (s *Shop) Close() {
	s.closeOnce.Do(func() {
		if s.stopBuffer != nil {
			s.stopBuffer()
			<-s.bufferDone
		}
		if s.buffer != nil {
			_ = s.buffer.Close()
		}
		if s.unsub != nil {
			s.unsub()
		}
		if s.board != nil {
			_ = s.board.Close()
		}
		if s.room != nil {
			_ = s.room.Close()
		}
		if s.stopJanitor != nil {
			s.stopJanitor()
		}
		if s.fleet != nil {
			_ = s.fleet.Close()
		}
	})
}

// checkToken reports whether r carries one of tokens as a bearer token.
func checkToken(r *http.Request, tokens ...string) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	match := 0
	for _, t := range tokens {
		match |= subtle.ConstantTimeCompare([]byte(got), []byte(t))
	}
	return match == 1
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewToken returns a random bearer token.
func NewToken() string { return randomHex(16) }
