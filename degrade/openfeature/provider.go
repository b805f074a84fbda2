package openfeature

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/bulwarkgo/bulwark/degrade"
	of "github.com/open-feature/go-sdk/openfeature"
)

// Name is the provider's name in its metadata.
const Name = "bulwark-degrade"

// Option configures a Provider.
type Option func(*Provider)

// WithHealthInterval sets how often the provider checks whether the
// switchboard can read its store, to emit PROVIDER_STALE and
// PROVIDER_READY. The default is one second.
func WithHealthInterval(d time.Duration) Option {
	return func(p *Provider) {
		if d > 0 {
			p.healthEvery = d
		}
	}
}

// Provider is an OpenFeature provider answering from a
// [degrade.Switchboard]. Create it with NewProvider; it is safe for
// concurrent use.
type Provider struct {
	sb          *degrade.Switchboard
	healthEvery time.Duration
	events      chan of.Event

	mu      sync.Mutex
	running bool
	stop    chan struct{}
	done    chan struct{}
	unsub   func()
}

var (
	_ of.FeatureProvider          = (*Provider)(nil)
	_ of.ContextAwareStateHandler = (*Provider)(nil)
	_ of.EventHandler             = (*Provider)(nil)
)

// NewProvider returns a provider for sb. It panics if sb is nil.
func NewProvider(sb *degrade.Switchboard, opts ...Option) *Provider {
	if sb == nil {
		panic("openfeature: nil Switchboard")
	}
	p := &Provider{sb: sb, healthEvery: time.Second, events: make(chan of.Event, 64)}
	for _, o := range opts {
		o(p)
	}
	return p
}

// Metadata names the provider.
func (p *Provider) Metadata() of.Metadata { return of.Metadata{Name: Name} }

// Hooks returns none.
func (p *Provider) Hooks() []of.Hook { return nil }

// BooleanEvaluation reports whether the feature named flag is on for the
// evaluation context.
func (p *Provider) BooleanEvaluation(ctx context.Context, flag string, defaultValue bool, flat of.FlattenedContext) of.BoolResolutionDetail {
	st, err := p.sb.Status(flag)
	if err != nil {
		return of.BoolResolutionDetail{Value: defaultValue, ProviderResolutionDetail: of.ProviderResolutionDetail{
			ResolutionError: of.NewFlagNotFoundResolutionError("no feature named " + flag),
			Reason:          of.ErrorReason,
		}}
	}
	ctx = degrade.WithAttributes(ctx, Attributes(flat))
	on := true
	var message string
	if err := p.sb.Check(ctx, flag); err != nil {
		on = false
		var de *degrade.DegradedError
		if errors.As(err, &de) {
			message = de.Message
		}
	}
	meta := of.FlagMetadata{"level": st.Level.String(), "source": string(st.Source)}
	if st.Trigger != "" {
		meta["trigger"] = st.Trigger
	}
	variant := "on"
	if !on {
		variant = "off"
		meta["message"] = message
	}
	return of.BoolResolutionDetail{Value: on, ProviderResolutionDetail: of.ProviderResolutionDetail{
		Reason:       reason(st),
		Variant:      variant,
		FlagMetadata: meta,
	}}
}

// reason says what decided a feature's value.
func reason(st degrade.Status) of.Reason {
	switch st.Source {
	case degrade.SourceShed, degrade.SourceTrigger:
		return of.DisabledReason // degraded: shed or held off by a trigger
	case degrade.SourceManual:
		switch {
		case len(st.State.Rules) > 0:
			return of.TargetingMatchReason
		case st.State.Mode == degrade.Percent:
			return of.SplitReason
		}
	}
	return of.StaticReason
}

func typeMismatch[T any](defaultValue T) of.GenericResolutionDetail[T] {
	return of.GenericResolutionDetail[T]{Value: defaultValue, ProviderResolutionDetail: of.ProviderResolutionDetail{
		ResolutionError: of.NewTypeMismatchResolutionError("Bulwark's switches are boolean"),
		Reason:          of.ErrorReason,
	}}
}

// StringEvaluation answers the default with TYPE_MISMATCH: switches are
// boolean.
func (p *Provider) StringEvaluation(_ context.Context, _ string, defaultValue string, _ of.FlattenedContext) of.StringResolutionDetail {
	return typeMismatch(defaultValue)
}

// FloatEvaluation answers the default with TYPE_MISMATCH.
func (p *Provider) FloatEvaluation(_ context.Context, _ string, defaultValue float64, _ of.FlattenedContext) of.FloatResolutionDetail {
	return typeMismatch(defaultValue)
}

// IntEvaluation answers the default with TYPE_MISMATCH.
func (p *Provider) IntEvaluation(_ context.Context, _ string, defaultValue int64, _ of.FlattenedContext) of.IntResolutionDetail {
	return typeMismatch(defaultValue)
}

// ObjectEvaluation answers the default with TYPE_MISMATCH.
func (p *Provider) ObjectEvaluation(_ context.Context, _ string, defaultValue any, _ of.FlattenedContext) of.InterfaceResolutionDetail {
	return typeMismatch(defaultValue)
}

// Attributes maps an OpenFeature evaluation context to degrade's
// attributes: the targeting key is the user ID; "platform", "model",
// "appVersion" (or "app_version"), "region" and "locale" fill their
// fields; other string attributes go to Custom.
func Attributes(flat of.FlattenedContext) degrade.Attributes {
	var a degrade.Attributes
	for k, v := range flat {
		s, ok := v.(string)
		if !ok {
			continue
		}
		switch k {
		case of.TargetingKey:
			a.UserID = s
		case "platform":
			a.Platform = s
		case "model":
			a.Model = s
		case "appVersion", "app_version":
			a.AppVersion = s
		case "region":
			a.Region = s
		case "locale":
			a.Locale = s
		default:
			if a.Custom == nil {
				a.Custom = make(map[string]string)
			}
			a.Custom[k] = s
		}
	}
	return a
}

// EventChannel is where the provider's events go, for the SDK.
func (p *Provider) EventChannel() <-chan of.Event { return p.events }

// Init starts forwarding the switchboard's changes as events.
func (p *Provider) Init(ec of.EvaluationContext) error {
	return p.InitWithContext(context.Background(), ec)
}

// InitWithContext starts forwarding the switchboard's changes as events.
// Calling it again while running does nothing.
func (p *Provider) InitWithContext(context.Context, of.EvaluationContext) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running {
		return nil
	}
	p.running = true
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	stop := p.stop
	p.unsub = p.sb.Subscribe(func(e degrade.Event) {
		p.emit(stop, of.Event{ProviderName: Name, EventType: of.ProviderConfigChange,
			ProviderEventDetails: of.ProviderEventDetails{
				Message:     "feature " + e.Feature + " changed",
				FlagChanges: []string{e.Feature},
			}})
	})
	go p.watchHealth(stop, p.done)
	return nil
}

// emit sends e unless the provider is shutting down. The SDK reads the
// channel while the provider is registered.
func (p *Provider) emit(stop <-chan struct{}, e of.Event) {
	select {
	case p.events <- e:
	case <-stop:
	}
}

// watchHealth emits PROVIDER_STALE when the switchboard cannot read its
// store, and PROVIDER_READY when it can again.
func (p *Provider) watchHealth(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(p.healthEvery)
	defer t.Stop()
	stale := false
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		switch healthy := p.sb.StoreHealthy(); {
		case !healthy && !stale:
			stale = true
			p.emit(stop, of.Event{ProviderName: Name, EventType: of.ProviderStale,
				ProviderEventDetails: of.ProviderEventDetails{Message: "the switchboard cannot read its store: flags answer from the last known state"}})
		case healthy && stale:
			stale = false
			p.emit(stop, of.Event{ProviderName: Name, EventType: of.ProviderReady,
				ProviderEventDetails: of.ProviderEventDetails{Message: "the switchboard reads its store again"}})
		}
	}
}

// Shutdown stops the provider's goroutine and its subscription.
func (p *Provider) Shutdown() { _ = p.ShutdownWithContext(context.Background()) }

// ShutdownWithContext stops the provider's goroutine and its
// subscription, waiting for them or for ctx.
func (p *Provider) ShutdownWithContext(ctx context.Context) error {
	p.mu.Lock()
	if !p.running {
		p.mu.Unlock()
		return nil
	}
	p.running = false
	close(p.stop)
	unsub, done := p.unsub, p.done
	p.mu.Unlock()
	unsub()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
