package shop

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
)

// Errors of the simulated payment providers.
var (
	errProviderDown = errors.New("payment provider: 503 service unavailable")
	errDeclined     = errors.New("payment provider: card declined")
)

// provider is a simulated payment provider: it takes a payment after its
// latency unless its fault says otherwise, declines api.CardDeclined, and
// honours the order ID as an idempotency key, so a payment asked twice is
// taken once. Each shop instance has its own providers; they stand in for
// the real gateways' SDKs.
type provider struct {
	name   string
	ledger *ledger

	mu      sync.Mutex
	fault   api.ProviderFault
	rng     *rand.Rand
	charged map[string]bool // order ID → taken
}

func newProvider(name string, l *ledger, seed uint64, latency time.Duration) *provider {
	return &provider{
		name:    name,
		ledger:  l,
		fault:   api.ProviderFault{Name: name, LatencyMS: int(latency / time.Millisecond)},
		rng:     rand.New(rand.NewPCG(seed, 0x5eed)),
		charged: make(map[string]bool),
	}
}

func (p *provider) setFault(f api.ProviderFault) error {
	if f.FailRate < 0 || f.HangRate < 0 || f.FailRate+f.HangRate > 1 {
		return fmt.Errorf("fail_rate and hang_rate must be at least 0 and add up to at most 1, got %v and %v", f.FailRate, f.HangRate)
	}
	if f.LatencyMS < 0 || f.LatencyMS > 60_000 {
		return fmt.Errorf("latency_ms must be between 0 and 60000, got %d", f.LatencyMS)
	}
	f.Name = p.name
	p.mu.Lock()
	p.fault = f
	p.mu.Unlock()
	return nil
}

func (p *provider) currentFault() api.ProviderFault {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fault
}

// charge takes the payment for order with card. A declined card is a final
// answer (breaker.Final): the failover must not ask the backup.
func (p *provider) charge(ctx context.Context, order, card string) (string, error) {
	p.mu.Lock()
	f := p.fault
	draw := p.rng.Float64()
	p.mu.Unlock()

	if f.LatencyMS > 0 {
		t := time.NewTimer(time.Duration(f.LatencyMS) * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			p.ledger.add(order, p.name, api.OutcomeTimeout)
			return "", ctx.Err()
		case <-t.C:
		}
	}
	switch {
	case draw < f.FailRate:
		p.ledger.add(order, p.name, api.OutcomeFailed)
		return "", errProviderDown
	case draw < f.FailRate+f.HangRate:
		<-ctx.Done()
		p.ledger.add(order, p.name, api.OutcomeTimeout)
		return "", ctx.Err()
	case card == api.CardDeclined:
		p.ledger.add(order, p.name, api.OutcomeDeclined)
		return "", breaker.Final(errDeclined)
	}
	p.mu.Lock()
	repeat := p.charged[order]
	p.charged[order] = true
	p.mu.Unlock()
	if repeat {
		p.ledger.add(order, p.name, api.OutcomeRepeat)
	} else {
		p.ledger.add(order, p.name, api.OutcomeCharged)
	}
	return p.name + ":" + order, nil
}

// ledger records every call the instance's providers received.
type ledger struct {
	mu       sync.Mutex
	attempts []api.Attempt
}

func (l *ledger) add(order, provider, outcome string) {
	l.mu.Lock()
	l.attempts = append(l.attempts, api.Attempt{Order: order, Provider: provider, Outcome: outcome, At: time.Now()})
	l.mu.Unlock()
}

func (l *ledger) snapshot() []api.Attempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]api.Attempt(nil), l.attempts...)
}
