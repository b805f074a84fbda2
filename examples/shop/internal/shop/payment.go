package shop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
	"github.com/redis/go-redis/v9"
)

// Errors of the simulated payment providers.
var (
	errProviderDown = errors.New("payment provider: 503 service unavailable")
	errDeclined     = errors.New("payment provider: card declined")
)

// gateway is the world outside the shop: the simulated payment providers'
// own records. Each provider takes a payment once per order (the order ID
// is its idempotency key) and answers queries about the orders it has
// seen, as real gateways' order-query APIs do. With Redis the records,
// the faults and the ledger are shared by every shop instance, as the real
// providers would be; in memory they belong to the one instance.
type gateway interface {
	fault(ctx context.Context, provider string) (api.ProviderFault, error)
	setFault(ctx context.Context, f api.ProviderFault) error
	// settle records a provider's final answer for an order, "charged"
	// or "declined", and reports the answer it had already given for
	// the order if any (so a payment is taken once).
	settle(ctx context.Context, provider, order, outcome string) (earlier string, err error)
	// lookup asks every provider about an order: the first that charged
	// or declined it, and what it said.
	lookup(ctx context.Context, order string) (provider, outcome string, err error)
	record(ctx context.Context, a api.Attempt) error
	ledger(ctx context.Context) (api.Ledger, error)
	reset(ctx context.Context) error
}

// provider is one simulated payment provider, as the shop's client sees
// it: it takes a payment after its latency unless its fault says
// otherwise, and declines api.CardDeclined.
type provider struct {
	name string
	gw   gateway

	mu  sync.Mutex
	rng *rand.Rand
}

// charge takes the payment for order with card. A declined card is a final
// answer (breaker.Final): the failover must not ask the backup.
func (p *provider) charge(ctx context.Context, order, card string) (string, error) {
	f, err := p.gw.fault(ctx, p.name)
	if err != nil {
		return "", fmt.Errorf("%w: %w", errProviderDown, err)
	}
	p.mu.Lock()
	draw := p.rng.Float64()
	p.mu.Unlock()
	note := func(outcome string) {
		// The ledger is the scenario's evidence; losing an entry to a
		// Redis error shows up as a failed check, not as a lost payment.
		_ = p.gw.record(context.WithoutCancel(ctx), api.Attempt{Order: order, Provider: p.name, Outcome: outcome, At: time.Now()})
	}

	if f.LatencyMS > 0 {
		t := time.NewTimer(time.Duration(f.LatencyMS) * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			note(api.OutcomeTimeout)
			return "", ctx.Err()
		case <-t.C:
		}
	}
	switch {
	case draw < f.FailRate:
		note(api.OutcomeFailed)
		return "", errProviderDown
	case draw < f.FailRate+f.HangRate:
		<-ctx.Done()
		note(api.OutcomeTimeout)
		return "", ctx.Err()
	}
	outcome := api.OutcomeCharged
	if card == api.CardDeclined {
		outcome = api.OutcomeDeclined
	}
	earlier, err := p.gw.settle(ctx, p.name, order, outcome)
	if err != nil {
		note(api.OutcomeFailed)
		return "", fmt.Errorf("%w: %w", errProviderDown, err)
	}
	if earlier != "" {
		// Asked again for an order it has answered: the same answer,
		// and no second payment.
		note(api.OutcomeRepeat)
		outcome = earlier
	} else {
		note(outcome)
	}
	if outcome == api.OutcomeDeclined {
		return "", breaker.Final(errDeclined)
	}
	return p.name + ":" + order, nil
}

func checkFault(f api.ProviderFault) error {
	switch {
	case f.FailRate < 0 || f.HangRate < 0 || f.FailRate+f.HangRate > 1:
		return fmt.Errorf("fail_rate and hang_rate must be at least 0 and add up to at most 1, got %v and %v", f.FailRate, f.HangRate)
	case f.LatencyMS < 0 || f.LatencyMS > 60_000:
		return fmt.Errorf("latency_ms must be between 0 and 60000, got %d", f.LatencyMS)
	}
	return nil
}

// memoryGateway keeps the providers' records in this process.
type memoryGateway struct {
	instance string
	latency  time.Duration

	mu       sync.Mutex
	faults   map[string]api.ProviderFault
	outcomes map[string]string // provider + "|" + order → outcome
	attempts []api.Attempt
}

func newMemoryGateway(instance string, latency time.Duration) *memoryGateway {
	g := &memoryGateway{instance: instance, latency: latency}
	_ = g.reset(context.Background())
	return g
}

func (g *memoryGateway) fault(_ context.Context, name string) (api.ProviderFault, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f, ok := g.faults[name]; ok {
		return f, nil
	}
	return api.ProviderFault{Name: name, LatencyMS: int(g.latency / time.Millisecond)}, nil
}

func (g *memoryGateway) setFault(_ context.Context, f api.ProviderFault) error {
	if err := checkFault(f); err != nil {
		return err
	}
	g.mu.Lock()
	g.faults[f.Name] = f
	g.mu.Unlock()
	return nil
}

func (g *memoryGateway) settle(_ context.Context, provider, order, outcome string) (string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := provider + "|" + order
	if earlier, ok := g.outcomes[k]; ok {
		return earlier, nil
	}
	g.outcomes[k] = outcome
	return "", nil
}

func (g *memoryGateway) lookup(_ context.Context, order string) (string, string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range []string{Primary, Backup} {
		if o, ok := g.outcomes[p+"|"+order]; ok {
			return p, o, nil
		}
	}
	return "", "", nil
}

func (g *memoryGateway) record(_ context.Context, a api.Attempt) error {
	g.mu.Lock()
	g.attempts = append(g.attempts, a)
	g.mu.Unlock()
	return nil
}

func (g *memoryGateway) ledger(context.Context) (api.Ledger, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return api.Ledger{Instance: g.instance, Attempts: append([]api.Attempt(nil), g.attempts...)}, nil
}

func (g *memoryGateway) reset(context.Context) error {
	g.mu.Lock()
	g.faults = make(map[string]api.ProviderFault)
	g.outcomes = make(map[string]string)
	g.attempts = nil
	g.mu.Unlock()
	return nil
}

// redisGateway keeps the providers' records in Redis, shared by the
// fleet: a hash of faults, a hash of answers by provider and order, and
// the ledger as a list.
type redisGateway struct {
	client  redis.UniversalClient
	prefix  string // ends in "{gateway}:"
	latency time.Duration
}

func (g *redisGateway) fault(ctx context.Context, name string) (api.ProviderFault, error) {
	f := api.ProviderFault{Name: name, LatencyMS: int(g.latency / time.Millisecond)}
	v, err := g.client.HGet(ctx, g.prefix+"faults", name).Result()
	if errors.Is(err, redis.Nil) {
		return f, nil
	}
	if err != nil {
		return f, err
	}
	err = json.Unmarshal([]byte(v), &f)
	return f, err
}

func (g *redisGateway) setFault(ctx context.Context, f api.ProviderFault) error {
	if err := checkFault(f); err != nil {
		return err
	}
	b, _ := json.Marshal(f)
	return g.client.HSet(ctx, g.prefix+"faults", f.Name, b).Err()
}

// settleScript: KEYS the answers hash; ARGV field, outcome. Returns the
// earlier answer, or "" after recording this one.
var settleScript = redis.NewScript(`
local earlier = redis.call('HGET', KEYS[1], ARGV[1])
if earlier then return earlier end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ''
`)

func (g *redisGateway) settle(ctx context.Context, provider, order, outcome string) (string, error) {
	return settleScript.Run(ctx, g.client, []string{g.prefix + "answers"}, provider+"|"+order, outcome).Text()
}

func (g *redisGateway) lookup(ctx context.Context, order string) (string, string, error) {
	provs := []string{Primary, Backup}
	vals, err := g.client.HMGet(ctx, g.prefix+"answers", provs[0]+"|"+order, provs[1]+"|"+order).Result()
	if err != nil {
		return "", "", err
	}
	for i, v := range vals {
		if s, ok := v.(string); ok {
			return provs[i], s, nil
		}
	}
	return "", "", nil
}

func (g *redisGateway) record(ctx context.Context, a api.Attempt) error {
	b, _ := json.Marshal(a)
	return g.client.RPush(ctx, g.prefix+"ledger", b).Err()
}

func (g *redisGateway) ledger(ctx context.Context) (api.Ledger, error) {
	l := api.Ledger{Instance: "gateway " + g.prefix}
	vals, err := g.client.LRange(ctx, g.prefix+"ledger", 0, -1).Result()
	if err != nil {
		return l, err
	}
	l.Attempts = make([]api.Attempt, 0, len(vals))
	for _, v := range vals {
		var a api.Attempt
		if err := json.Unmarshal([]byte(v), &a); err != nil {
			return l, fmt.Errorf("ledger entry %q: %w", v, err)
		}
		l.Attempts = append(l.Attempts, a)
	}
	return l, nil
}

func (g *redisGateway) reset(ctx context.Context) error {
	return g.client.Del(ctx, g.prefix+"faults", g.prefix+"answers", g.prefix+"ledger").Err()
}
